"""The mobility models against their definitions: what each router reads, causality, the rank metrics, the Markov
baseline's ranking rule."""

import pytest
import torch

from moezoo.moe import MoEArgs
from moezoo.tasks.mobility import MarkovModel, NextLocationModel
from moezoo.tasks.mobility.model import rank_metrics
from moezoo.tasks.mobility.sequences import NUM_DISTANCE_BINS, NUM_GAP_BINS


def batch(b=3, length=6, locations=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"locations": torch.randint(1, locations + 1, (b, length), generator=g),
            "categories": torch.randint(0, 4, (b, length), generator=g),
            "hours": torch.randint(0, 168, (b, length), generator=g),
            "gap_bins": torch.randint(0, NUM_GAP_BINS, (b, length), generator=g),
            "distance_bins": torch.randint(0, NUM_DISTANCE_BINS, (b, length), generator=g),
            "coords": torch.randn(b, length, 2, generator=g), "patterns": torch.rand(b, length, 24, generator=g),
            "targets": torch.randint(1, locations + 1, (b, length), generator=g),
            "mask": torch.ones(b, length, dtype=torch.bool), "city": torch.tensor([0, 1, 2])[:b],
            "user": torch.arange(b), "gyration_bin": torch.tensor([0, 1, 3])[:b],
            "entropy_bin": torch.tensor([2, 0, 1])[:b]}


def model(features="none", **kw):
    torch.manual_seed(0)
    return NextLocationModel(num_locations=20, num_categories=3, num_cities=3, max_len=8, dim=16, depth=2,
                             num_heads=2, dropout=0.0, router_features=features,
                             moe=MoEArgs(num_experts=4, k=2, **kw), feature_width=4)


@pytest.mark.parametrize("features, width", [("none", 0), ("mobility", 20), ("spatial", 8)])
def test_each_router_reads_the_hidden_state_and_its_features(features, width):
    net = model(features, noise="learned" if features == "mobility" else "none")
    routers = [m.ffn.router for m in net.encoder.blocks]
    assert all(r.gate.in_features == 16 + width for r in routers)
    context = net.router_features(batch())
    assert (context is None) == (width == 0)
    if features == "mobility":  # per-user features repeat along the sequence; per-visit ones change
        assert context.shape == (3, 6, 20)
        assert torch.equal(context[0, 0, :4], net.router_features.city.weight[0])
        assert torch.equal(context[1, 3, 4:8], net.router_features.gyration.weight[1])
        assert torch.equal(context[2, 5, 12:16], net.router_features.gap.weight[batch()["gap_bins"][2, 5]])
        assert routers[0].noise_gate is not None


def test_the_model_is_causal_and_never_predicts_padding():
    net = model("mobility").eval()
    a = batch()
    b = {k: v.clone() for k, v in a.items()}
    b["locations"][:, 4:] = 1
    b["gap_bins"][:, 4:] = 0
    la, lb = net(a), net(b)
    torch.testing.assert_close(la[:, :4], lb[:, :4])  # later visits do not change earlier predictions
    assert not torch.allclose(la[:, 4:], lb[:, 4:])
    assert torch.isinf(la[..., 0]).all()


def test_rank_metrics_follow_their_definitions():
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.8, 0.1, 0.2, 0.3]])
    m = rank_metrics(logits, torch.tensor([2, 1]))  # ranks 1 and 3 (0-based)
    assert m["acc1"].tolist() == [0.0, 0.0]
    assert m["acc5"].tolist() == [1.0, 1.0]
    torch.testing.assert_close(m["mrr"], torch.tensor([1 / 2, 1 / 4]))


def test_markov_ranks_own_habit_then_everybodys_then_popularity():
    markov = MarkovModel(num_locations=6)
    markov.on_train_epoch_start()
    history = {"locations": torch.tensor([[1, 2, 1, 2], [1, 3, 1, 3]]),
               "targets": torch.tensor([[2, 1, 2, 5], [3, 1, 3, 1]]), "mask": torch.ones(2, 4, dtype=torch.bool),
               "user": torch.tensor([0, 1])}
    markov.training_step(history, 0)
    markov.on_train_epoch_end()
    scores = markov.scores([0, 1, 2, 0], [1, 1, 1, 4])
    assert scores[0].argmax() == 2  # user 0 goes 1 -> 2
    assert scores[1].argmax() == 3  # user 1 goes 1 -> 3
    assert scores[2].argmax() in (2, 3) and scores[2, 2] == scores[2, 3]  # a new user: everybody's (tie)
    assert scores[3].argmax() == 1  # from a place nobody left: the most popular (1 was a target 3 times)
    state = markov.state_dict()
    again = MarkovModel(num_locations=6)
    again.load_state_dict(state)
    torch.testing.assert_close(again.scores([0], [1]), markov.scores([0], [1]))
