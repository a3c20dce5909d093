"""The MoE layer: equivalence with a dense FFN, gradients, and aux losses neither lost nor double counted."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from moezoo.moe import (
    DenseMLP,
    ExpertChoiceRouter,
    GroupedMLP,
    ModuleExperts,
    MoE,
    MoEArgs,
    TopKRouter,
    aux_loss,
    aux_loss_terms,
    routing_stats,
    switch_load_balancing_loss,
)


@pytest.mark.parametrize("glu,activation", [(False, "gelu"), (True, "silu")])
def test_one_expert_top_1_equals_the_dense_ffn_forward_and_gradients(glu, activation):
    torch.manual_seed(0)
    dense = DenseMLP(8, 12, activation=activation, glu=glu)
    moe = MoE(8, TopKRouter(8, 1, k=1), GroupedMLP(1, 8, 12, activation=activation, glu=glu))
    with torch.no_grad():
        moe.experts.w1[0] = dense.fc1.weight.t()
        moe.experts.b1[0] = dense.fc1.bias
        moe.experts.w2[0] = dense.fc2.weight.t()
        moe.experts.b2[0] = dense.fc2.bias
    x = torch.randn(3, 5, 8)
    x_dense, x_moe = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_dense, y_moe = dense(x_dense), moe(x_moe)
    assert torch.allclose(y_dense, y_moe, atol=1e-5)
    y_dense.square().sum().backward()
    y_moe.square().sum().backward()
    assert torch.allclose(x_dense.grad, x_moe.grad, atol=1e-5)
    assert torch.allclose(dense.fc1.weight.grad.t(), moe.experts.w1.grad[0], atol=1e-4)
    assert torch.allclose(dense.fc2.weight.grad.t(), moe.experts.w2.grad[0], atol=1e-4)
    assert torch.allclose(dense.fc1.bias.grad, moe.experts.b1.grad[0], atol=1e-4)


def test_moe_output_is_the_gate_weighted_sum_of_its_experts():
    torch.manual_seed(0)
    moe = MoE(6, TopKRouter(6, 4, k=2), GroupedMLP(4, 6, 10))
    x = torch.randn(7, 6)
    y = moe(x)
    routing = moe.router(x)
    dense = routing.combine_weights()
    e = moe.experts
    outs = torch.stack([torch.nn.functional.gelu(x @ e.w1[i] + e.b1[i]) @ e.w2[i] + e.b2[i] for i in range(4)], 1)
    assert torch.allclose(y, (dense.unsqueeze(-1) * outs).sum(1), atol=1e-5)


@pytest.mark.parametrize("router", [TopKRouter(6, 4, k=2), ExpertChoiceRouter(6, 4)])
def test_gradients_reach_router_and_experts(router):
    moe = MoE(6, router, GroupedMLP(4, 6, 10), shared_experts=DenseMLP(6, 10)).train()
    moe(torch.randn(2, 9, 6)).sum().backward()
    assert moe.router.gate.weight.grad.abs().sum() > 0
    assert moe.experts.w1.grad.abs().sum() > 0 and moe.experts.w2.grad.abs().sum() > 0
    assert moe.shared_experts.fc1.weight.grad.abs().sum() > 0


def test_shared_experts_add_to_every_token():
    torch.manual_seed(0)
    routed = MoE(6, TopKRouter(6, 3, k=1), GroupedMLP(3, 6, 8))
    shared = MoE(6, routed.router, routed.experts, shared_experts=DenseMLP(6, 8))
    x = torch.randn(5, 6)
    assert torch.allclose(shared(x), routed(x) + shared.shared_experts(x), atol=1e-6)


def test_router_input_decides_routing_while_experts_compute_on_x():
    moe = MoE(6, TopKRouter(3, 4, k=1), GroupedMLP(4, 6, 8))
    x, seen = torch.randn(2, 5, 6), torch.randn(2, 5, 3)
    y = moe(x, router_input=seen)
    routing = moe.router(seen.reshape(-1, 3))
    expected = moe.experts(x.reshape(-1, 6), routing).reshape(2, 5, 6)
    assert torch.allclose(y, expected)


def test_module_experts_match_grouped_mlp_with_the_same_weights():
    torch.manual_seed(0)
    grouped = GroupedMLP(3, 6, 8)
    modules = []
    for e in range(3):
        mlp = DenseMLP(6, 8)
        with torch.no_grad():
            mlp.fc1.weight.copy_(grouped.w1[e].t())
            mlp.fc1.bias.copy_(grouped.b1[e])
            mlp.fc2.weight.copy_(grouped.w2[e].t())
            mlp.fc2.bias.copy_(grouped.b2[e])
        modules.append(mlp)
    router = TopKRouter(6, 3, k=2)
    x = torch.randn(11, 6)
    routing = router(x)
    assert torch.allclose(ModuleExperts(modules)(x, routing), grouped(x, routing), atol=1e-5)


def _moe(**kw):
    return MoEArgs(num_experts=4, k=2, balance_loss_weight=0.1, **kw).build(6, 12).train()


def test_aux_loss_counts_each_real_forward_once_and_is_cleared():
    moe = _moe()
    x = torch.randn(10, 6)
    routing = moe.router(x)  # a bare router call records nothing: only the layer keeps losses
    expected = 0.1 * switch_load_balancing_loss(routing.probs, routing.expert_index)
    assert aux_loss(moe) == 0.0
    moe(x)
    assert aux_loss(moe).item() == pytest.approx(expected.item(), rel=1e-5)
    assert aux_loss(moe) == 0.0


def test_a_layer_run_twice_in_a_step_contributes_both_losses():
    moe = _moe()
    x = torch.randn(10, 6)
    moe(x)
    once = aux_loss(moe)
    moe(x)
    moe(x)  # e.g. classifier-free guidance: conditional and unconditional passes
    assert aux_loss(moe).item() == pytest.approx(2 * once.item(), rel=1e-5)


def test_activation_checkpointing_recomputation_adds_nothing_and_keeps_the_gradient():
    moe = _moe()
    x = torch.randn(10, 6, requires_grad=True)
    plain = moe(x)
    plain_aux = aux_loss(moe)
    (plain.sum() + plain_aux).backward()
    grad_plain = moe.router.gate.weight.grad.clone()
    moe.zero_grad()

    out = checkpoint(moe, x, use_reentrant=False)
    terms = aux_loss_terms(moe)
    assert len(moe.record.losses) == 0
    (out.sum() + sum(terms.values())).backward()  # the backward recomputes the layer
    assert moe.record.losses == [], "the recomputation recorded nothing"
    assert sum(terms.values()).item() == pytest.approx(plain_aux.item(), rel=1e-6)
    assert torch.allclose(moe.router.gate.weight.grad, grad_plain, atol=1e-6)


def test_activation_checkpointing_counts_global_batch_balancing_once():
    moe = MoEArgs(num_experts=4, k=2, balance_loss_weight=0.0, global_balance_loss_weight=0.1).build(6, 12).train()
    x = torch.randn(10, 6, requires_grad=True)
    plain = moe(x)
    (plain.sum() + aux_loss(moe)).backward()
    counts = moe.router.global_counts.clone(), moe.router.step_counts.clone()
    assert counts[0].sum() == 20
    moe.router.after_optimizer_step()

    out = checkpoint(moe, x, use_reentrant=False)
    (out.sum() + aux_loss(moe)).backward()  # the backward recomputes the layer's forward
    assert torch.equal(moe.router.global_counts, counts[0]), "the recomputation did not count again"
    assert torch.equal(moe.router.step_counts, counts[1])


def test_eval_forward_records_no_loss_but_keeps_statistics():
    moe = _moe().eval()
    moe(torch.randn(10, 6))
    assert aux_loss(moe) == 0.0
    stats = routing_stats(moe)[""]
    assert stats["load"].sum() == pytest.approx(1.0)
    assert stats["imbalance"] >= 1.0
    assert 0 <= stats["entropy"] <= torch.log(torch.tensor(4.0)) + 1e-6


def test_routing_stats_report_dropped_tokens_and_imbalance():
    moe = MoE(6, TopKRouter(6, 2, k=1, capacity_factor=0.5), GroupedMLP(2, 6, 8))
    with torch.no_grad():
        moe.router.gate.weight.zero_()
        moe.router.gate.weight[0, 0] = 10.0
    x = torch.randn(8, 6).abs()  # all want expert 0, capacity 2
    moe(x)
    stats = routing_stats(moe)[""]
    assert stats["dropped"] == 6
    assert stats["load"].tolist() == [1.0, 0.0]
    assert stats["imbalance"] == pytest.approx(2.0)


def test_grouped_routing_through_the_layer_keeps_token_shape():
    moe = MoEArgs(num_experts=4, k=1, expert_groups=[[0, 1], [2, 3]]).build(6, 8)
    group = torch.tensor([[0, 0, 1], [1, 1, 0]])
    moe(torch.randn(2, 3, 6), group=group)
    assert moe.record.last["counts"].sum() == 6


def test_moe_args_validate_router_name():
    with pytest.raises(ValueError, match="unknown router 'switch'"):
        MoEArgs(router="switch").build(6, 8)
