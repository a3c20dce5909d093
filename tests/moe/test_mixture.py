"""GatedMixture with SoftRouter: the MMoE-style dense gate, its static/grouped masks, and what it records."""

import torch

from moezoo.moe import (
    GatedMixture,
    RoutingRecord,
    SoftRouter,
    load_by_label,
    routing_labels,
    routing_stats,
    take_expert_load,
)


def test_soft_router_is_the_softmax_of_the_gate_over_all_experts():
    torch.manual_seed(0)
    router = SoftRouter(5, 4)
    x = torch.randn(6, 5)
    routing = router(x)
    torch.testing.assert_close(routing.combine_weights(), torch.softmax(x @ router.gate.weight.t(), -1))
    assert routing.soft and routing.num_assignments == 6 * 4


def test_static_mask_gives_disallowed_experts_zero_weight_and_no_gradient():
    torch.manual_seed(0)
    router = SoftRouter(5, 6, expert_groups=[[0, 2, 5]])
    x = torch.randn(4, 5)
    routing = router(x)
    assert routing.group is None, "a static mask is not a grouping to report"
    weights = routing.combine_weights()
    logits = x @ router.gate.weight.t()
    expected = torch.zeros(4, 6)
    expected[:, [0, 2, 5]] = torch.softmax(logits[:, [0, 2, 5]], -1)
    torch.testing.assert_close(weights, expected)
    outputs = torch.randn(6, 4, 3, requires_grad=True)
    GatedMixture(router)(x, outputs).sum().backward()
    assert outputs.grad[[1, 3, 4]].abs().sum() == 0 and outputs.grad[[0, 2, 5]].abs().sum() > 0
    assert router.gate.weight.grad is None or router.gate.weight.grad[[1, 3, 4]].abs().sum() == 0


def test_gated_mixture_is_the_weighted_sum_of_expert_outputs():
    torch.manual_seed(0)
    mixture = GatedMixture(SoftRouter(3, 4))
    x, outputs = torch.randn(5, 3), torch.randn(4, 5, 2)
    g = torch.softmax(x @ mixture.router.gate.weight.t(), -1)
    expected = sum(g[:, e : e + 1] * outputs[e] for e in range(4))
    torch.testing.assert_close(mixture(x, outputs), expected)


def test_soft_load_is_gate_mass_and_grouped_load_is_split_by_group():
    torch.manual_seed(0)
    router = SoftRouter(3, 4, expert_groups=[[0, 1], [2, 3]])
    mixture = GatedMixture(router).train()
    x, group = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 1, 0])
    mixture(x, torch.randn(4, 6, 2), group=group)
    weights = router(x, group=group).combine_weights()
    stats = routing_stats(mixture)[""]
    torch.testing.assert_close(stats["load"], weights.sum(0) / 6)
    torch.testing.assert_close(stats["group_load"][0], weights[group == 0].sum(0) / 3)
    assert stats["group_load"][0, 2:].sum() == 0 and stats["group_load"][1, :2].sum() == 0
    torch.testing.assert_close(take_expert_load(mixture)[""], weights.sum(0))


def test_gates_pooled_into_their_experts_record_count_by_their_constant_label():
    torch.manual_seed(0)
    pool = RoutingRecord()
    owner = torch.nn.Module()
    owner.experts = torch.nn.Identity()
    owner.experts.record = pool
    owner.gates = torch.nn.ModuleList(GatedMixture(SoftRouter(4, 3), pool=pool, pool_labels={"task": t})
                                      for t in range(2))
    x, outputs = torch.randn(5, 4), torch.randn(3, 5, 2)
    owner.gates[0](x, outputs)  # outside routing_labels: nothing is counted
    assert pool.by_label == {}
    with routing_labels(owner, {}):
        for gate in owner.gates:
            gate(x, outputs)
    tables = load_by_label(owner)
    weights = [torch.softmax(x @ gate.router.gate.weight.t(), -1).sum(0) for gate in owner.gates]
    torch.testing.assert_close(tables["experts"]["task"]["counts"], torch.stack(weights).detach())
    assert pool.losses == [] and pool.last == {} and pool.load_total is None
