"""ProMoE's router against its equations: conditional routing, cosine top-1 with raw-cosine gates, contrastive loss."""

import pytest
import torch
import torch.nn.functional as F

from moezoo.moe import GroupedMLP, MoE, aux_loss_terms
from moezoo.moe.prototype import PrototypeRouter, routing_contrastive_loss


def test_dropped_label_tokens_go_to_the_unconditional_expert_with_weight_one():
    torch.manual_seed(0)
    router = PrototypeRouter(8, num_routed=3)
    x = torch.randn(2 * 4, 8)
    routing = router(x, condition=torch.tensor([False, True]))  # per sample: sample 1's 4 tokens were dropped
    weights = routing.combine_weights()
    assert routing.num_experts == 4
    assert torch.equal(weights[4:], torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 4))
    assert (weights[:4, 3] == 0).all() and ((weights[:4, :3] != 0).sum(-1) == 1).all()


def test_conditional_tokens_take_the_most_similar_prototype_with_the_raw_cosine_as_gate():
    torch.manual_seed(0)
    router = PrototypeRouter(8, num_routed=5, unconditional_expert=False)
    x = torch.randn(10, 8)
    cos = F.cosine_similarity(x[:, None], router.prototypes[None], dim=-1)
    routing = router(x)
    assert torch.equal(routing.expert_index, cos.argmax(-1))
    torch.testing.assert_close(routing.weight, cos.max(-1).values)
    soft = PrototypeRouter(8, num_routed=5, unconditional_expert=False, gate="softmax")
    soft.load_state_dict(router.state_dict())
    torch.testing.assert_close(soft(x).weight, torch.softmax(cos, -1).max(-1).values)


def test_routing_contrastive_loss_is_cross_entropy_of_prototypes_against_expert_means():
    torch.manual_seed(0)
    prototypes, tokens = torch.randn(4, 6), torch.randn(9, 6)
    expert = torch.tensor([0, 0, 2, 2, 2, 3, 0, 3, 2])  # expert 1 gets nothing: left out
    means = torch.stack([tokens[expert == e].mean(0) for e in (0, 2, 3)])
    logits = torch.stack([F.cosine_similarity(prototypes[e][None], means, dim=-1) for e in (0, 2, 3)]) / 0.07
    expected = F.cross_entropy(logits, torch.arange(3))
    torch.testing.assert_close(routing_contrastive_loss(prototypes, tokens, expert), expected)


def test_contrastive_loss_is_recorded_by_the_moe_layer_in_training_only():
    torch.manual_seed(0)
    layer = MoE(8, PrototypeRouter(8, num_routed=3), GroupedMLP(4, 8, 16))
    x = torch.randn(12, 8)
    layer.train()(x, condition=torch.tensor([False, False, True]))
    terms = aux_loss_terms(layer)
    assert set(terms) == {"routing_contrastive"} and terms["routing_contrastive"] > 0
    terms["routing_contrastive"].backward()
    assert layer.router.prototypes.grad.abs().sum() > 0
    layer.eval()(x)
    assert aux_loss_terms(layer) == {}


def test_condition_with_a_count_that_divides_no_tokens_is_a_clear_error():
    with pytest.raises(ValueError, match="condition has 5 entries for 12 tokens"):
        PrototypeRouter(8, num_routed=3)(torch.randn(12, 8), condition=torch.zeros(5, dtype=torch.bool))


def test_expert_choice_form_gives_each_expert_its_top_c_conditional_tokens_of_every_sample():
    torch.manual_seed(0)
    router = PrototypeRouter(8, num_routed=4, choice="expert", capacity_factor=1.0, tokens_per_sample=8,
                             gate="sigmoid")
    x = torch.randn(3 * 8, 8)
    condition = torch.tensor([False, True, False])  # sample 1 was label-dropped
    routing = router(x, condition=condition)
    cos = F.cosine_similarity(x[:, None], router.prototypes[None], dim=-1)
    capacity = 2  # int(8 * 1.0 / 4)
    for sample in (0, 2):
        rows = slice(8 * sample, 8 * sample + 8)
        for e in range(4):
            chosen = routing.token_index[(routing.expert_index == e) & (routing.token_index // 8 == sample)]
            expected = cos[rows, e].topk(capacity).indices + 8 * sample
            assert torch.equal(chosen.sort().values, expected.sort().values)
    picked = routing.expert_index < 4
    torch.testing.assert_close(routing.weight[picked],
                               torch.sigmoid(cos[routing.token_index[picked], routing.expert_index[picked]]))
    dropped = routing.token_index[routing.expert_index == 4]  # the unconditional expert: all of sample 1, weight 1
    assert torch.equal(dropped.sort().values, torch.arange(8, 16))
    assert (routing.weight[~picked] == 1).all()


def test_expert_choice_form_pulls_prototypes_to_the_tokens_they_chose():
    torch.manual_seed(0)
    layer = MoE(8, PrototypeRouter(8, num_routed=3, choice="expert", tokens_per_sample=6), GroupedMLP(4, 8, 16))
    layer.train()(torch.randn(12, 8), condition=torch.tensor([False, True]))
    loss = aux_loss_terms(layer)["routing_contrastive"]
    assert loss > 0
    loss.backward()
    assert layer.router.prototypes.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not whole samples of tokens_per_sample=5"):
        PrototypeRouter(8, num_routed=3, choice="expert", tokens_per_sample=5)(torch.randn(12, 8))


@pytest.mark.parametrize("tokens, factor, capacity",
                         [(8, 1.0, 2), (10, 1.0, 2), (6, 1.0, 1), (3, 1.0, 1), (10, 2.0, 5)])
def test_expert_choice_capacity_is_the_official_floor_of_s_c_over_e_at_least_one(tokens, factor, capacity):
    """k = max(1, min(int(S / E * top_k), S)) (ProMoE's models_ProMoE_EC.py): 10 tokens, 4 experts -> 2, not 3."""
    router = PrototypeRouter(8, num_routed=4, choice="expert", capacity_factor=factor, tokens_per_sample=tokens)
    routing = router(torch.randn(2 * tokens, 8))
    assert torch.equal(torch.bincount(routing.expert_index, minlength=4), torch.full((4,), 2 * capacity))


def test_expert_choice_contrastive_loss_contrasts_each_samples_own_expert_means():
    """Per sample b and prototype e: CE over that sample's means m_{b,j} (official compute_routing_contrastive_loss
    on [B, E, D] means), averaged over the B x E rows; not the means pooled over the batch."""
    torch.manual_seed(0)
    router = PrototypeRouter(8, num_routed=3, choice="expert", tokens_per_sample=6).train()
    x = torch.randn(12, 8)
    routing = router(x)
    prototypes = F.normalize(router.prototypes, dim=-1)
    rows = []
    for b in range(2):
        means = []
        for e in range(3):
            mine = routing.token_index[(routing.expert_index == e) & (routing.token_index // 6 == b)]
            means.append(x[mine].mean(0))
        logits = prototypes @ F.normalize(torch.stack(means), dim=-1).t() / 0.07
        rows.append(F.cross_entropy(logits, torch.arange(3), reduction="none"))
    expected = torch.cat(rows).mean()
    torch.testing.assert_close(routing.aux_losses["routing_contrastive"], expected)
    pooled = routing_contrastive_loss(router.prototypes, x[routing.token_index], routing.expert_index)
    assert not torch.allclose(pooled, expected), "the batch-pooled form differs"
