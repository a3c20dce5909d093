"""Expert choice within modality groups (MoMa, Lin et al. 2024) and unrouted (group -1) tokens, on small tensors.

MoMa: experts split into groups, a token routed only within its group, and inside a group expert choice at that
group's capacity, C_G = ceil(T_G * c / |E_G|), T_G the group's tokens (here per sample).
"""

import math

import pytest
import torch

from moezoo.moe import ExpertChoiceRouter, TopKRouter, TopPRouter


def _x(t, d=6, seed=0):
    return torch.randn(t, d, generator=torch.Generator().manual_seed(seed))


def _direct_choice(scores, group, groups, capacity_factor, per_sample):
    """A direct transcription: for each sample, group and expert of the group, the top C_G tokens of the group."""
    picked = set()
    for start in range(0, scores.shape[0], per_sample):
        tokens = range(start, start + per_sample)
        for g, experts in enumerate(groups):
            members = [t for t in tokens if group[t] == g]
            capacity = min(len(members), math.ceil(len(members) * capacity_factor / len(experts)))
            for e in experts:
                ranked = sorted(members, key=lambda t: -scores[t, e].item())[:capacity]
                picked.update((t, e) for t in ranked)
    return picked


@pytest.mark.parametrize("capacity_factor", [1.0, 2.0])
@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
def test_each_expert_takes_exactly_its_groups_capacity_of_its_own_groups_tokens(score, capacity_factor):
    groups = [[0, 1], [2, 3]]  # e.g. image experts, text experts
    # unbalanced modalities: sample 0 has 9 image tokens and 3 text tokens, sample 1 has 2 and 10
    group = torch.tensor([0] * 9 + [1] * 3 + [1] * 10 + [0] * 2)
    router = ExpertChoiceRouter(6, 4, capacity_factor, score=score, expert_groups=groups, tokens_per_sample=12)
    x = _x(24)
    routing = router(x, group=group)
    scores = router.scores(router.gate(x).masked_fill(~router.group_mask[group], float("-inf")))
    got = {(int(t), int(e)) for t, e in zip(routing.token_index, routing.expert_index)}
    assert got == _direct_choice(scores.detach(), group.tolist(), groups, capacity_factor, 12)
    for t, e in got:
        assert e in groups[int(group[t])]  # never another modality's token
    # per sample and expert: exactly the group's capacity (9 image tokens / 2 experts -> 5 at c=1)
    counts = torch.zeros(2, 4, dtype=torch.long)
    for t, e in got:
        counts[t // 12, e] += 1
    expected = [[min(n, math.ceil(n * capacity_factor / 2)) for n in (9, 9, 3, 3)],
                [min(n, math.ceil(n * capacity_factor / 2)) for n in (2, 2, 10, 10)]]
    assert counts.tolist() == expected
    weights = {(int(t), int(e)): float(w) for t, e, w in zip(routing.token_index, routing.expert_index,
                                                             routing.weight.detach())}
    assert all(weights[t, e] == pytest.approx(scores[t, e].item()) for t, e in got)


def test_one_group_of_every_expert_chooses_as_expert_choice_without_groups():
    plain = ExpertChoiceRouter(6, 4, 1.0, tokens_per_sample=8)
    grouped = ExpertChoiceRouter(6, 4, 1.0, tokens_per_sample=8, expert_groups=[[0, 1, 2, 3]])
    grouped.load_state_dict(plain.state_dict())
    x = _x(16)
    a, b = plain(x), grouped(x)
    assert a.tokens_per_expert().tolist() == [4, 4, 4, 4]  # ceil(8 / 4) in each of 2 samples
    pairs = lambda r: sorted(zip(r.token_index.tolist(), r.expert_index.tolist(), r.weight.tolist()))  # noqa: E731
    assert pairs(a) == pairs(b)


def test_the_old_behaviour_would_starve_an_expert_of_the_minority_group():
    """The bug the grouped choice fixes: one capacity over all tokens, then dropping picks outside a group, gives
    the text experts fewer tokens than their share when text is the minority."""
    group = torch.tensor([0] * 10 + [1] * 2)
    router = ExpertChoiceRouter(6, 4, 1.0, expert_groups=[[0, 1], [2, 3]])
    routing = router(_x(12), group=group)
    # the text experts take ceil(2 / 2) = 1 text token each, the image experts ceil(10 / 2) = 5 image tokens each
    assert routing.tokens_per_expert().tolist() == [5, 5, 1, 1]


@pytest.mark.parametrize("make", [
    lambda: TopKRouter(6, 4, k=2, expert_groups=[[0, 1], [2, 3]], balance_loss_weight=0.01),
    lambda: ExpertChoiceRouter(6, 4, 1.0, expert_groups=[[0, 1], [2, 3]], tokens_per_sample=6),
    lambda: TopPRouter(6, 4, p=0.5, expert_groups=[[0, 1], [2, 3]]),
])
def test_group_minus_one_routes_a_token_nowhere_and_keeps_gradients_finite(make):
    router = make()
    group = torch.tensor([0, 0, 1, 1, -1, -1, 0, 1, 1, -1, 0, 0])
    x = _x(12).requires_grad_()
    routing = router(x, group=group)
    assert not (group[routing.token_index] == -1).any()
    assert (routing.probs[group == -1] == 0).all()
    loss = routing.weight.sum() + sum(routing.aux_losses.values(), torch.zeros(()))
    loss.backward()
    assert torch.isfinite(router.gate.weight.grad).all() and torch.isfinite(x.grad).all()
    assert (x.grad[group == -1] == 0).all()


def test_unrouted_tokens_do_not_count_in_the_balance_loss():
    torch.manual_seed(0)
    router = TopKRouter(6, 4, k=1, expert_groups=[[0, 1, 2, 3]], balance_loss_weight=1.0)
    x = _x(8)
    padded = torch.cat([x, _x(4, seed=1)])
    group = torch.tensor([0] * 8 + [-1] * 4)
    alone = router(x, group=torch.zeros(8, dtype=torch.long)).aux_losses["balance"]
    with_pads = router(padded, group=group).aux_losses["balance"]
    torch.testing.assert_close(with_pads, alone)
