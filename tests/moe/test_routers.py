"""Routers against direct transcriptions of their papers' equations on small tensors."""

import math

import pytest
import torch

from moezoo.moe import ExpertChoiceRouter, MoEArgs, TopKRouter, TopPRouter


def _x(t=12, d=6, seed=0):
    return torch.randn(t, d, generator=torch.Generator().manual_seed(seed))


def _assignments(routing):
    pairs = zip(routing.token_index, routing.expert_index, routing.weight.detach())
    return {(int(t), int(e)): float(w) for t, e, w in pairs}


def test_top_k_takes_the_k_most_probable_experts_with_renormalised_weights():
    router = TopKRouter(6, 5, k=2)
    x = _x()
    routing = router(x)
    probs = torch.softmax(x @ router.gate.weight.t(), dim=-1)
    expected = {}
    for t in range(x.shape[0]):
        ranked = sorted(range(5), key=lambda e: -probs[t, e].item())[:2]
        mass = sum(probs[t, e].item() for e in ranked)
        expected.update({(t, e): probs[t, e].item() / mass for e in ranked})
    got = _assignments(routing)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5)
    assert torch.allclose(routing.probs, probs, atol=1e-6)
    assert routing.num_assignments == 2 * x.shape[0]


def test_top_1_keeps_the_raw_probability_so_the_router_gets_a_gradient():
    router = TopKRouter(6, 4, k=1)
    routing = router(_x())
    assert torch.allclose(routing.weight, routing.probs.max(-1).values)
    routing.weight.sum().backward()
    assert router.gate.weight.grad.abs().sum() > 0


def test_top_k_capacity_keeps_each_experts_highest_scoring_assignments_and_flags_the_dropped():
    router = TopKRouter(6, 4, k=1, capacity_factor=0.5)
    x = _x(t=16)
    routing = router(x)
    capacity = math.ceil(0.5 * 16 * 1 / 4)
    assert capacity == 2
    counts = routing.tokens_per_expert()
    assert (counts <= capacity).all()
    probs = routing.probs
    top = probs.argmax(-1)
    for e in range(4):
        wanted = (top == e).nonzero().flatten()
        kept = sorted(wanted.tolist(), key=lambda t: -probs[t, e].item())[:capacity]
        assert sorted(routing.token_index[routing.expert_index == e].tolist()) == sorted(kept)
    kept_tokens = set(routing.token_index.tolist())
    assert routing.dropped.tolist() == [t not in kept_tokens for t in range(16)]


def test_top_k_is_dropless_by_default():
    routing = TopKRouter(6, 3, k=2)(_x(t=50))
    assert routing.num_assignments == 100 and routing.dropped is None


@pytest.mark.parametrize("tokens,experts,factor", [(12, 4, 1.0), (10, 3, 2.0), (7, 8, 1.0), (5, 2, 4.0)])
def test_expert_choice_gives_each_expert_exactly_capacity_tokens(tokens, experts, factor):
    router = ExpertChoiceRouter(6, experts, capacity_factor=factor)
    x = _x(t=tokens)
    routing = router(x)
    capacity = min(tokens, math.ceil(tokens * factor / experts))
    assert routing.tokens_per_expert().tolist() == [capacity] * experts
    probs = torch.softmax(x @ router.gate.weight.t(), dim=-1)
    for e in range(experts):
        mine = routing.expert_index == e
        expected = probs[:, e].topk(capacity).indices
        assert sorted(routing.token_index[mine].tolist()) == sorted(expected.tolist())
        assert torch.allclose(routing.weight[mine], probs[routing.token_index[mine], e], atol=1e-6)


def test_expert_choice_per_sample_takes_each_experts_top_tokens_within_every_sample():
    samples, per_sample, experts = 3, 8, 4
    router = ExpertChoiceRouter(6, experts, capacity_factor=1.0, tokens_per_sample=per_sample)
    x = _x(t=samples * per_sample)
    routing = router(x)
    capacity = per_sample // experts
    probs = torch.softmax(x @ router.gate.weight.t(), dim=-1)
    for b in range(samples):
        rows = slice(b * per_sample, (b + 1) * per_sample)
        for e in range(experts):
            mine = (routing.expert_index == e) & (routing.token_index // per_sample == b)
            expected = probs[rows, e].topk(capacity).indices + b * per_sample
            assert sorted(routing.token_index[mine].tolist()) == sorted(expected.tolist())
            torch.testing.assert_close(routing.weight[mine], probs[routing.token_index[mine], e])
    with pytest.raises(ValueError, match="not whole samples"):
        router(_x(t=20))


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8, 1.0])
def test_top_p_picks_the_smallest_expert_set_whose_mass_reaches_p(p):
    router = TopPRouter(6, 6, p=p)
    with torch.no_grad():
        router.gate.weight.mul_(4)  # sharper distributions: sets of varied size
    x = _x(t=30)
    routing = router(x)
    probs = routing.probs
    sizes = set()
    for t in range(30):
        chosen = routing.expert_index[routing.token_index == t].tolist()
        ranked = probs[t].argsort(descending=True).tolist()
        assert sorted(chosen) == sorted(ranked[: len(chosen)]), "the set is the most probable experts"
        mass = probs[t, chosen].sum().item()
        assert mass >= p - 1e-6, "it reaches p"
        assert mass - probs[t, chosen].min().item() < p, "and no smaller set does"
        sizes.add(len(chosen))
    assert len(sizes) > 1 or p in (0.2, 1.0)
    weights = _assignments(routing)
    assert all(weights[(t, e)] == pytest.approx(probs[t, e].item()) for t, e in weights)


def test_null_experts_produce_no_assignment():
    router = TopKRouter(6, 3, k=2, num_null_experts=2)
    with torch.no_grad():
        router.gate.weight[3:].fill_(0)
        router.gate.weight[3:, 0] = 100.0  # tokens with a large first feature pick the null experts
    x = _x(t=20)
    x[:10, 0] = 1.0
    x[10:, 0] = -1.0
    routing = router(x)
    assert (routing.expert_index < 3).all()
    assert routing.probs.shape == (20, 3)
    assert not set(routing.token_index.tolist()) & set(range(10)), "first half went to null experts only"
    assert routing.tokens_per_expert().sum() == 20, "second half keeps both real choices"


def _identity_gate(router):
    """The router's logits are its input: tokens are written as hand-made logits."""
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(router.num_slots, router.gate.in_features))
    return router


def _logits(rows):
    return torch.tensor(rows, dtype=torch.float).log()  # rows of unnormalised probabilities


# hand-made tokens over 2 true experts (slots 0, 1) and 2 null experts (slots 2, 3); top-2 picks
NULL_TOKENS = [[3.0, 1.0, 2.0, 0.5],  # expert 0 and null slot 2
               [2.0, 1.0, 0.5, 0.25],  # experts 0 and 1
               [0.5, 1.0, 3.0, 2.0]]  # null slots 2 and 3: no assignment


def test_null_experts_renormalise_over_the_chosen_true_experts_only():
    router = _identity_gate(TopKRouter(4, 2, k=2, num_null_experts=2))
    got = _assignments(router(_logits(NULL_TOKENS)))
    assert got.keys() == {(0, 0), (1, 0), (1, 1)}
    assert got[(0, 0)] == pytest.approx(1.0), "one true expert chosen: it takes the whole weight (AdaMoE)"
    assert got[(1, 0)] == pytest.approx(2 / 3) and got[(1, 1)] == pytest.approx(1 / 3)

    shared = _identity_gate(TopKRouter(4, 2, k=2, num_null_experts=2, normalize_over_null=True))
    got = _assignments(shared(_logits(NULL_TOKENS)))
    assert got[(0, 0)] == pytest.approx(3 / 5), "with normalize_over_null the null slot keeps its share"
    assert got[(1, 0)] == pytest.approx(2 / 3)


def test_top_p_with_null_experts_renormalises_over_the_chosen_true_experts_only():
    router = _identity_gate(TopPRouter(4, 2, p=0.7, num_null_experts=2, normalize=True))
    got = _assignments(router(_logits([[3.0, 1.0, 2.0, 0.5]])))  # mass 3/6.5, then + 2/6.5 reaches 0.7
    assert got == {(0, 0): pytest.approx(1.0)}


def test_null_experts_count_as_one_group_in_the_balance_losses():
    router = _identity_gate(TopKRouter(4, 2, k=2, num_null_experts=2, balance_loss_weight=1.0,
                                       global_balance_loss_weight=1.0)).train()
    routing = router(_logits(NULL_TOKENS))
    # choices (slots): {0, 2}, {0, 1}, {2, 3}: counts [2, 1, 2, 1] of 6; the null slots share (2 + 1) / 2 each
    f = [2 / 6, 1 / 6, 1.5 / 6, 1.5 / 6]
    P = [sum(row[j] / sum(row) for row in NULL_TOKENS) / 3 for j in range(4)]
    expected = 4 * sum(fi * Pi for fi, Pi in zip(f, P))
    assert routing.aux_losses["balance"].item() == pytest.approx(expected, rel=1e-5)
    assert routing.aux_losses["global_balance"].item() == pytest.approx(expected, rel=1e-5)
    per_slot = 4 * sum(fi * Pi for fi, Pi in zip([2 / 6, 1 / 6, 2 / 6, 1 / 6], P))
    assert abs(expected - per_slot) > 1e-3, "the example tells the two rules apart"


def test_top_k_balance_loss_counts_the_top_k_choice_before_capacity_drops():
    router = _identity_gate(TopKRouter(2, 2, k=1, capacity_factor=0.5, balance_loss_weight=1.0,
                                       global_balance_loss_weight=1.0)).train()
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    routing = router(logits)
    assert router.capacity(4) == 1
    assert routing.dropped.tolist() == [True, True, False, False], "expert 0 keeps only its best token"
    assert sorted(zip(routing.token_index.tolist(), routing.expert_index.tolist())) == [(2, 0), (3, 1)]
    P = torch.softmax(logits, -1).mean(0)
    f = torch.tensor([3 / 4, 1 / 4])  # the top-1 choice: three tokens chose expert 0, before the drop
    expected = 2 * (f * P).sum().item()
    assert routing.aux_losses["balance"].item() == pytest.approx(expected, rel=1e-6)
    assert routing.aux_losses["global_balance"].item() == pytest.approx(expected, rel=1e-6)
    after_drop = 2 * (torch.tensor([1 / 2, 1 / 2]) * P).sum().item()
    assert abs(expected - after_drop) > 1e-2
    assert router.step_counts.tolist() == [3, 1] and router.global_counts.tolist() == [3, 1]


def test_top_p_dynamic_loss_is_the_weighted_mean_token_entropy_and_reaches_the_router():
    router = _identity_gate(TopPRouter(3, 3, p=0.5)).train()
    assert router.dynamic_loss_weight == 1e-4, "the paper's weight by default"
    routing = router(_logits([[2.0, 1.0, 1.0], [1.0, 1.0, 1.0]]))  # probs [1/2, 1/4, 1/4] and uniform
    entropy = [0.5 * math.log(2) + 0.5 * math.log(4), math.log(3)]
    loss = routing.aux_losses["dynamic_entropy"]
    assert loss.item() == pytest.approx(1e-4 * sum(entropy) / 2, rel=1e-5)
    loss.backward()
    assert router.gate.weight.grad.abs().sum() > 0
    assert "dynamic_entropy" not in router.eval()(_logits([[2.0, 1.0, 1.0]])).aux_losses


def test_top_p_dynamic_loss_weight_is_set_through_moe_args():
    assert MoEArgs(router="top_p").build_router(4).dynamic_loss_weight == 1e-4
    router = MoEArgs(router="top_p", dynamic_loss_weight=0.5).build_router(4)
    assert router.dynamic_loss_weight == 0.5
    assert "dynamic_entropy" not in MoEArgs(router="top_p", dynamic_loss_weight=0.0).build_router(4).train()(
        torch.randn(5, 4)).aux_losses
    with pytest.raises(ValueError, match="dynamic_loss_weight=0.5 is the top-p router's"):
        MoEArgs(router="top_k", dynamic_loss_weight=0.5).build_router(4)


def test_grouped_routing_restricts_each_token_to_its_groups_experts():
    groups = [[0, 1], [2, 3, 4]]
    for router in (TopKRouter(6, 5, k=2, expert_groups=groups), ExpertChoiceRouter(6, 5, expert_groups=groups),
                   TopPRouter(6, 5, p=0.9, expert_groups=groups)):
        group = torch.tensor([0, 1] * 8)
        routing = router(_x(t=16), group=group)
        allowed = [set(groups[g]) for g in group.tolist()]
        assert all(int(e) in allowed[int(t)] for t, e in zip(routing.token_index, routing.expert_index))
        assert torch.allclose(routing.probs.sum(-1), torch.ones(16))
        assert (routing.probs[group == 0][:, 2:] == 0).all()


def test_grouped_routing_needs_group_ids_and_valid_experts():
    with pytest.raises(ValueError, match="pass group="):
        TopKRouter(6, 4, k=1, expert_groups=[[0], [1]])(_x())
    with pytest.raises(ValueError, match="expert_groups\\[1\\] names expert 9"):
        TopKRouter(6, 4, k=1, expert_groups=[[0], [9]])


def test_sigmoid_scores_are_independent_per_expert():
    router = TopKRouter(6, 4, k=2, score="sigmoid")
    x = _x()
    routing = router(x)
    assert torch.allclose(routing.probs, torch.sigmoid(x @ router.gate.weight.t()), atol=1e-6)


def test_linear_sigmoid_and_softmax_scores_choose_alike_and_weight_by_their_own_score():
    x = _x(t=30)
    routers = {score: TopKRouter(6, 4, k=1, score=score) for score in ("softmax", "sigmoid", "linear")}
    for router in routers.values():
        router.load_state_dict(routers["softmax"].state_dict())
    logits = x @ routers["softmax"].gate.weight.t()
    picks = {score: router(x) for score, router in routers.items()}
    for routing in picks.values():
        assert torch.equal(routing.expert_index, logits.argmax(-1)), "monotone scores rank experts alike"
    chosen = logits.gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)
    assert torch.allclose(picks["linear"].weight, chosen, atol=1e-6), "a linear router weights by the raw logit"
    assert torch.allclose(picks["sigmoid"].weight, torch.sigmoid(chosen), atol=1e-6)
    assert torch.allclose(picks["linear"].probs, torch.softmax(logits, -1), atol=1e-6), \
        "a linear router reports the softmax for statistics"


def test_cmoe_balance_loss_on_raw_sigmoid_scores_is_the_official_formula():
    """CMoE (xy980523/UATR-CMoE, ResNet_MoE_loadbalance): L = w * E * f . mean_b sigmoid(r_b W^T), f the fraction
    of samples whose argmax expert is i; the scores are not renormalised."""
    router = TopKRouter(6, 8, k=1, score="sigmoid", balance_loss_weight=0.01, balance_probs="raw").train()
    x = _x(t=40)
    routing = router(x)
    scores = torch.sigmoid(x @ router.gate.weight.t()).detach()
    f = torch.nn.functional.one_hot(scores.argmax(-1), 8).float().mean(0)
    assert routing.aux_losses["balance"].item() == pytest.approx(0.01 * 8 * float(f @ scores.mean(0)), rel=1e-5)
    normalized = TopKRouter(6, 8, k=1, score="sigmoid", balance_loss_weight=0.01).train()
    normalized.load_state_dict(router.state_dict())
    p = scores / scores.sum(-1, keepdim=True)
    assert normalized(x).aux_losses["balance"].item() == pytest.approx(0.01 * 8 * float(f @ p.mean(0)), rel=1e-5)


def test_an_unweighted_router_gives_every_assignment_weight_one_and_its_gate_only_the_aux_gradient():
    router = TopKRouter(6, 4, k=1, score="sigmoid", weighted=False, balance_loss_weight=0.01).train()
    x = _x(t=20)
    routing = router(x)
    assert torch.equal(routing.weight, torch.ones(20))
    assert not routing.weight.requires_grad, "the expert outputs carry no gradient to the gate"
    routing.aux_losses["balance"].backward()
    assert router.gate.weight.grad.abs().sum() > 0, "the balance loss still trains the gate"


def test_bias_balancing_changes_selection_but_not_gate_weights():
    router = TopKRouter(6, 4, k=1, bias_update_rate=0.1)
    x = _x(t=40)
    before = router(x)
    with torch.no_grad():
        router.expert_bias[2] = 10.0
    after = router(x)
    assert (after.expert_index == 2).all()
    assert torch.allclose(after.weight, after.probs[:, 2]), "weights are the unbiased scores"
    assert not torch.equal(before.expert_index, after.expert_index)


def test_bias_update_lowers_the_bias_of_overloaded_experts_after_an_optimizer_step():
    router = TopKRouter(6, 3, k=1, bias_update_rate=0.05).train()
    with torch.no_grad():
        router.gate.weight.zero_()
        router.gate.weight[0, 0] = 5.0
    x = _x(t=30).abs()  # every token prefers expert 0
    router(x)
    router.after_optimizer_step()
    assert router.expert_bias[0] == pytest.approx(-0.05)
    assert router.expert_bias[1] == pytest.approx(0.05) and router.expert_bias[2] == pytest.approx(0.05)
    assert router.step_counts.sum() == 0, "counts restart for the next step"


def test_unknown_score_and_bad_k_and_bad_p_are_rejected():
    with pytest.raises(ValueError, match="softmax"):
        TopKRouter(4, 2, score="tanh")
    with pytest.raises(ValueError, match="balance_probs"):
        TopKRouter(4, 2, balance_probs="mean")
    with pytest.raises(ValueError, match="k=5"):
        TopKRouter(4, 2, k=5)
    with pytest.raises(ValueError, match="p=1.5"):
        TopPRouter(4, 2, p=1.5)
