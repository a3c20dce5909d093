"""The routers' aux losses and global-batch counts under activation checkpointing (reentrant and not) and bf16
autocast: counted once, with the gradients of the run without checkpointing, and the formulas of the papers."""

import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from moezoo.moe import (
    GatedMixture,
    MoEArgs,
    SoftRouter,
    TopKRouter,
    aux_loss,
    aux_loss_terms,
    global_batch_load_balancing_loss,
    router_entropy_loss,
    switch_load_balancing_loss,
)

# the changed paths: top-k with a capacity (balance from the choice before the drop) and null experts, top-p with
# its dynamic loss and null experts; every aux loss on
ROUTERS = {
    "top_k_capacity_null": dict(router="top_k", k=2, capacity_factor=0.75, num_null_experts=2),
    "top_p_null": dict(router="top_p", p=0.5, num_null_experts=2, dynamic_loss_weight=0.1),
}
LOSSES = dict(balance_loss_weight=0.1, global_balance_loss_weight=0.1, z_loss_weight=0.01)


def _layer(kind: str):
    torch.manual_seed(0)
    return MoEArgs(num_experts=4, **ROUTERS[kind], **LOSSES).build(6, 12).train()


def _step(layer, x, mode: str, runs: int = 1, scale: float = 1.0):
    """``runs`` forwards of ``layer`` (residual), plain or checkpointed, then the backward of scale * (task + aux);
    returns (aux value, counts, gradients)."""
    layer.zero_grad()
    layer.router.after_optimizer_step()
    x = x.clone().requires_grad_()
    h = x
    for _ in range(runs):
        if mode == "plain":
            h = h + layer(h)
        else:
            h = h + checkpoint(layer, h, use_reentrant=mode == "reentrant")
    aux = aux_loss(layer)
    (scale * (h.square().sum() + aux)).backward()
    counts = dict(step=layer.router.step_counts.clone(), global_=layer.router.global_counts.clone(),
                  load=layer.record.load_total.clone())
    grads = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
    grads["input"] = x.grad.clone()
    layer.record.load_total = None
    return aux.detach(), counts, grads


def _assert_same_step(got, expected):
    aux, counts, grads = got
    aux_plain, counts_plain, grads_plain = expected
    assert aux.item() == pytest.approx(aux_plain.item(), rel=1e-6), "the aux losses counted once"
    for name, value in counts_plain.items():
        assert torch.equal(counts[name], value), f"{name} counts counted once"
    assert grads.keys() == grads_plain.keys()
    for name, value in grads_plain.items():
        assert torch.allclose(grads[name], value, atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize("mode", ["non_reentrant", "reentrant"])
@pytest.mark.parametrize("kind", list(ROUTERS))
def test_a_checkpointed_layer_counts_once_and_trains_as_without_checkpointing(kind, mode):
    layer = _layer(kind)
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(1))
    plain = _step(layer, x, "plain")
    assert set(aux_loss_terms(layer)) == set(), "collected and cleared"
    assert plain[1]["global_"].sum() > 0 and plain[2]["router.gate.weight"].abs().sum() > 0
    _assert_same_step(_step(layer, x, mode), plain)
    assert layer.record.losses == [], "the recomputation recorded nothing"


def test_reentrant_checkpointing_gives_the_aux_losses_the_training_losss_own_scale():
    """Lightning divides the loss by the accumulation count (and fp16 scales it) before backward: the aux losses'
    gradient through the recomputation takes that coefficient, as the task loss's does."""
    layer = _layer("top_k_capacity_null")
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(2))
    _assert_same_step(_step(layer, x, "reentrant", scale=0.25), _step(layer, x, "plain", scale=0.25))


def test_a_layer_run_twice_under_checkpointing_keeps_each_forwards_global_fraction():
    # the second forward counts into the global batch before the backward recomputes the first
    layer = _layer("top_p_null")
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(3))
    plain = _step(layer, x, "plain", runs=2)
    assert plain[1]["global_"].sum() == plain[1]["step"].sum() > 0
    _assert_same_step(_step(layer, x, "non_reentrant", runs=2), plain)
    layer.router.global_balance_loss_weight = 0.0  # reentrant: see RecomputedAuxGradient
    _assert_same_step(_step(layer, x, "reentrant", runs=2), _step(layer, x, "plain", runs=2))


def test_uncollected_losses_of_a_reentrant_forward_add_no_gradient():
    layer = _layer("top_k_capacity_null")
    x = torch.randn(12, 6, requires_grad=True)
    checkpoint(layer, x, use_reentrant=True).square().sum().backward()  # aux_loss(model) never called
    reference = _layer("top_k_capacity_null")
    reference(x).square().sum().backward()
    assert torch.allclose(layer.router.gate.weight.grad, reference.router.gate.weight.grad, atol=1e-6)


@pytest.mark.parametrize("mode", ["non_reentrant", "reentrant"])
def test_a_checkpointed_gated_mixture_trains_its_gate_as_without_checkpointing(mode):
    torch.manual_seed(0)
    gate = GatedMixture(SoftRouter(5, 3, balance_loss_weight=0.5, z_loss_weight=0.1)).train()
    inputs = torch.randn(7, 5, requires_grad=True)
    outputs = torch.randn(3, 7, 4)
    grads = []
    for run in ("plain", mode):
        gate.zero_grad()
        out = gate(inputs, outputs) if run == "plain" else checkpoint(
            gate, inputs, outputs, use_reentrant=mode == "reentrant")
        (out.square().sum() + aux_loss(gate)).backward()
        grads.append(gate.router.gate.weight.grad.clone())
    assert torch.allclose(grads[1], grads[0], atol=1e-6)


# -- bf16 autocast through the changed paths ------------------------------------------------------------------------

def _exact_bf16(shape, seed):
    """Values bfloat16 holds exactly, so that the float32 and the autocast runs route alike."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16).float()


@pytest.mark.parametrize("mode", ["plain", "reentrant"])
@pytest.mark.parametrize("kind", list(ROUTERS))
def test_changed_paths_under_bf16_autocast_match_float32_and_keep_float32_router_gradients(kind, mode):
    layer = _layer(kind)
    x = _exact_bf16((12, 6), 4)
    aux32, counts32, grads32 = _step(layer, x, "plain")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        aux, counts, grads = _step(layer, x, mode)
    assert aux.dtype == torch.float32 and aux.item() == pytest.approx(aux32.item(), rel=1e-5)
    for name, value in counts32.items():
        assert torch.equal(counts[name], value), f"the float32 router chose alike ({name})"
    gate32, gate = grads32["router.gate.weight"], grads["router.gate.weight"]
    assert gate.dtype == torch.float32
    assert ((gate - gate32).norm() / gate32.norm()).item() < 3e-2


def test_top_p_dynamic_loss_and_null_balance_under_autocast_are_the_formulas_on_the_float32_scores():
    router = MoEArgs(num_experts=3, router="top_p", p=0.6, num_null_experts=1, balance_loss_weight=1.0,
                     dynamic_loss_weight=1.0, global_balance_loss_weight=1.0).build_router(5).train()
    x = _exact_bf16((9, 5), 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = router(x)
    probs = torch.softmax(x @ router.gate.weight.t(), -1)  # float32, over the 3 true + 1 null slots
    entropy = -(probs * probs.log()).sum(-1).mean()
    assert routing.aux_losses["dynamic_entropy"].item() == pytest.approx(entropy.item(), rel=1e-5)
    assert router_entropy_loss(probs).item() == pytest.approx(entropy.item(), rel=1e-6)
    # the slots each token chose (nulls included): its most probable ones until their mass reaches p
    chosen = []
    for row in probs:
        mass = 0.0
        for slot in row.argsort(descending=True).tolist():
            if mass >= 0.6:
                break
            chosen.append(slot)
            mass += row[slot].item()
    counts = torch.bincount(torch.tensor(chosen), minlength=4).float()
    f = counts / counts.sum()
    f[3:] = f[3:].mean()  # one null slot: its own group
    expected = 4 * (f * probs.mean(0)).sum()
    assert routing.aux_losses["balance"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert routing.aux_losses["global_balance"].item() == pytest.approx(
        global_batch_load_balancing_loss(probs, counts, 1).item(), rel=1e-5)
    assert routing.probs.dtype == routing.logits.dtype == torch.float32


def test_capacity_balance_under_autocast_counts_the_choice_before_the_drop():
    router = TopKRouter(4, 4, k=1, capacity_factor=0.5, balance_loss_weight=1.0).train()
    x = _exact_bf16((8, 4), 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = router(x)
    probs = torch.softmax(x @ router.gate.weight.t(), -1)
    choice = probs.argmax(-1)
    assert routing.num_assignments < 8 or torch.bincount(choice, minlength=4).max() <= router.capacity(8)
    expected = switch_load_balancing_loss(probs, choice)
    assert routing.aux_losses["balance"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert math.isclose(float(router.step_counts.sum()), 8.0), "every token's choice counted, dropped or not"
