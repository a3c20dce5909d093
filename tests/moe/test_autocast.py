"""Mixed precision through the MoE core: under torch.autocast the experts (and shared experts) compute in the
autocast dtype, the routers in float32, and gradients reach the float32 master weights in float32, on the reference
backend and on the Triton backend (interpreted on CPU, in float16: the interpreter computes bfloat16 wrongly)."""

import pytest
import torch

from moezoo import kernels
from moezoo.errors import MoezooError
from moezoo.kernels.triton import installed as triton_installed
from moezoo.moe import (
    DenseMLP,
    ExpertChoiceRouter,
    GroupedMLP,
    MoE,
    PrototypeRouter,
    RoutedStackedMLP,
    TopKRouter,
    aux_loss,
)

DIM, HIDDEN, TOKENS_PER_SAMPLE = 16, 32, 8
CUDA = torch.cuda.is_available()
# (device, autocast dtype) per backend: Triton's CPU interpreter cannot compute bfloat16
SETTINGS = {"reference": ("cpu", torch.bfloat16),
            "triton": ("cuda", torch.bfloat16) if CUDA else ("cpu", torch.float16)}
TRITON = pytest.param("triton", marks=pytest.mark.skipif(not triton_installed(), reason="triton is not installed"))


def _router(kind: str):
    if kind == "token_choice":
        return TopKRouter(DIM, 4, k=2, balance_loss_weight=0.1, z_loss_weight=0.01)
    if kind == "expert_choice":
        return ExpertChoiceRouter(DIM, 4, 1.0, tokens_per_sample=TOKENS_PER_SAMPLE, balance_loss_weight=0.1)
    choice = kind.split("_")[1]  # promoe_token, promoe_expert
    return PrototypeRouter(DIM, 3, choice=choice, tokens_per_sample=TOKENS_PER_SAMPLE, gate="softmax")


def _layer(kind: str, backend: str, device: str) -> MoE:
    torch.manual_seed(0)
    router = _router(kind)
    experts = GroupedMLP(router.num_experts, DIM, HIDDEN, activation="gelu", backend=backend)
    return MoE(DIM, router, experts, shared_experts=DenseMLP(DIM, HIDDEN)).to(device).train()


def _step(layer: MoE, x: torch.Tensor, grad: torch.Tensor, condition, dtype: torch.dtype | None):
    """Forward (under autocast when dtype is given) and backward of sum(y * grad) + aux; (y, aux, counts, grads)."""
    layer.zero_grad()
    x = x.clone().requires_grad_()
    if dtype is None:
        y = layer(x, condition=condition)
        aux = aux_loss(layer)
    else:
        with torch.autocast(x.device.type, dtype=dtype):
            y = layer(x.to(dtype), condition=condition)  # tokens as a previous autocast layer hands them on
            aux = aux_loss(layer)
    counts = layer.record.last["counts"].clone()
    ((y.float() * grad).sum() + aux).backward()
    grads = {name: p.grad for name, p in layer.named_parameters()}
    return y, aux, counts, grads, x.grad


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("backend", ["reference", TRITON])
@pytest.mark.parametrize("kind", ["token_choice", "expert_choice", "promoe_token", "promoe_expert"])
def test_moe_layer_under_autocast_matches_float32_and_keeps_float32_weight_grads(kind, backend):
    device, dtype = SETTINGS[backend]
    layer = _layer(kind, backend, device)
    g = torch.Generator().manual_seed(1)
    # values a bfloat16 / float16 holds exactly, so that both runs route the same tokens (the router is float32)
    x = torch.randn(2 * TOKENS_PER_SAMPLE, DIM, generator=g).to(dtype).float().to(device)
    grad = torch.randn(2 * TOKENS_PER_SAMPLE, DIM, generator=g).to(device)
    condition = torch.tensor([False, True], device=device) if kind.startswith("promoe") else None

    y32, aux32, counts32, grads32, dx32 = _step(layer, x, grad, condition, None)
    y, aux, counts, grads, dx = _step(layer, x, grad, condition, dtype)

    assert y.dtype == dtype, "the experts computed in the autocast dtype"
    assert torch.equal(counts, counts32), "the float32 router made the same choices"
    assert aux.dtype == torch.float32 and aux.item() == pytest.approx(aux32.item(), rel=1e-5)
    max_abs = (y.float() - y32).abs().max().item()
    assert max_abs <= 3e-2 * y32.abs().max().item(), (max_abs, y32.abs().max().item())
    assert _relative_error(y, y32) < 2e-2
    assert dx.dtype == torch.float32 and _relative_error(dx, dx32) < 3e-2
    for name, grad32 in grads32.items():
        assert grads[name].dtype == torch.float32, f"{name}: the master weight's gradient stays float32"
        assert _relative_error(grads[name], grad32) < 3e-2, name


def test_routers_score_in_float32_under_autocast_and_gradients_reach_the_gate():
    torch.manual_seed(0)
    x = torch.randn(16, DIM)
    for router in (TopKRouter(DIM, 4, k=2, z_loss_weight=0.1), PrototypeRouter(DIM, 3, gate="softmax")):
        router.train()
        reference = router(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            routing = router(x)
        assert routing.logits.dtype == routing.probs.dtype == torch.float32
        assert torch.equal(routing.probs, reference.probs), "autocast does not round the router's matmul"
        assert torch.equal(routing.expert_index, reference.expert_index)
        loss = sum(routing.aux_losses.values()) + routing.weight.sum()
        loss.backward()
        for p in router.parameters():
            assert p.grad is not None and p.grad.dtype == torch.float32


def test_routed_stacked_bank_grouped_mm_runs_under_autocast_with_float32_grads():
    torch.manual_seed(0)
    bank = RoutedStackedMLP(3, 8, [16, 8], factored=True)
    router = TopKRouter(8, 3, k=1)
    x = torch.randn(12, 8).bfloat16().float()
    routing = router(x)
    reference = bank(x, routing)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bank(x.bfloat16(), routing)
    y.float().sum().backward()
    assert _relative_error(y, reference) < 2e-2
    assert all(p.grad.dtype == torch.float32 for p in bank.parameters())


def test_grouped_mm_under_autocast_casts_like_matmul():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 8, generator=g)
    w = torch.randn(2, 8, 16, generator=g, requires_grad=True)
    offsets = torch.tensor([4, 10])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernels.grouped_mm(x, w, offsets)
        expected = torch.cat([x[:4] @ w[0], x[4:] @ w[1]])  # torch's own matmul under autocast
    assert out.dtype == expected.dtype == torch.bfloat16
    assert torch.allclose(out.float(), expected.float(), rtol=1e-2, atol=1e-2)
    out.float().sum().backward()
    assert w.grad.dtype == torch.float32


def test_mixed_dtypes_outside_autocast_are_a_one_line_error():
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    w = torch.randn(2, 8, 16)
    with pytest.raises(MoezooError, match=r"grouped_mm: w is torch.float32 but x is torch.bfloat16; .*autocast"):
        kernels.grouped_mm(x, w, torch.tensor([2, 4]))
    bank = GroupedMLP(2, 8, 16)
    routing = TopKRouter(8, 2, k=1).to(torch.bfloat16)(x)
    with pytest.raises(MoezooError, match=r"moe_mlp: w1 is torch.float32 but x is torch.bfloat16"):
        bank(x, routing)


@pytest.mark.parametrize("kind", ["token_choice", "expert_choice"])  # (ProMoE's loss has a data-dependent branch)
def test_compiled_layer_under_autocast_has_no_graph_break_and_matches_eager(kind):
    torch._dynamo.reset()
    layer = _layer(kind, "reference", "cpu")
    x = torch.randn(2 * TOKENS_PER_SAMPLE, DIM, generator=torch.Generator().manual_seed(1)).bfloat16()
    condition = torch.tensor([False, True]) if kind.startswith("promoe") else None
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (layer, compiled):
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(x, condition=condition)
            aux = aux_loss(layer)
        (y.float().square().sum() + aux).backward()
        results.append((y, aux, {n: p.grad.clone() for n, p in layer.named_parameters()}))
    (y_eager, aux_eager, grads_eager), (y_compiled, aux_compiled, grads_compiled) = results
    assert y_compiled.dtype == torch.bfloat16
    assert torch.allclose(y_compiled.float(), y_eager.float(), atol=1e-2, rtol=1e-2)
    assert aux_compiled.item() == pytest.approx(aux_eager.item(), rel=1e-5)
    for name, grad in grads_eager.items():
        assert grads_compiled[name].dtype == torch.float32
        assert torch.allclose(grads_compiled[name], grad, atol=1e-2, rtol=1e-2), name
    torch._dynamo.reset()
