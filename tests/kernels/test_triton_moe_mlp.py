"""kernels/triton/moe_mlp.py: the Triton expert MLP against the reference backend, forward and every gradient (x,
w1, w2, b1, b2, routing weight), over a covering set of E = 1, 8, 64, k = 1, 2, 8, every activation, GLU or not,
bias or not, fp32 and fp16 (bf16 on a GPU), with unused experts, tokens without any assignment and ragged sizes."""

import pytest
import torch

pytest.importorskip("triton")

from moezoo import kernels  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}  # x 4, relative to the largest value
NAMES = ("x", "weight", "w1", "w2", "b1", "b2")


def _top_k_routing(tokens, experts, k, seed, unused=()):
    """k distinct experts per token (never ``unused``), assignments shuffled: not token-major, not expert-sorted."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(tokens, experts, generator=g)
    scores[:, list(unused)] = -1.0
    expert_index = scores.topk(k, dim=-1).indices.reshape(-1)
    token_index = torch.arange(tokens).repeat_interleave(k)
    weight = torch.rand(tokens * k, generator=g)
    perm = torch.randperm(tokens * k, generator=g)
    return token_index[perm], expert_index[perm], weight[perm]


def _params(tokens, d, h, experts, glu, bias, seed):
    g = torch.Generator().manual_seed(seed)
    width = 2 * h if glu else h
    return {
        "x": torch.randn(tokens, d, generator=g),
        "w1": torch.randn(experts, d, width, generator=g) / d**0.5,
        "w2": torch.randn(experts, h, d, generator=g) / h**0.5,
        "b1": torch.randn(experts, width, generator=g) if bias else None,
        "b2": torch.randn(experts, d, generator=g) if bias else None,
    }


def _run(params, routing, activation, glu, backend, device, dtype):
    token_index, expert_index, weight = routing
    leaves = {n: p.detach().to(device, dtype).clone().requires_grad_() for n, p in params.items() if p is not None}
    leaves["weight"] = weight.detach().to(device).clone().requires_grad_()  # routing weights stay fp32
    y = kernels.moe_mlp(leaves["x"], token_index.to(device), expert_index.to(device), leaves["weight"],
                        leaves["w1"], leaves["w2"], leaves.get("b1"), leaves.get("b2"), activation, glu,
                        backend=backend)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(99)).to(device, dtype)
    y.backward(grad)
    return y, {n: t.grad for n, t in leaves.items()}


def _assert_close(actual, expected, dtype, name):
    scale = expected.abs().max().clamp_min(1e-3)
    err = (actual.detach().cpu().float() - expected.detach()).abs().max()
    assert err <= TOL[dtype] * 4 * scale, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


def _compare(tokens, d, h, experts, routing, activation, glu, bias, dtype, seed=0):
    params = _params(tokens, d, h, experts, glu, bias, seed)
    y, grads = _run(params, routing, activation, glu, "triton", DEVICE, dtype)
    y_ref, grads_ref = _run(params, routing, activation, glu, "reference", "cpu", torch.float32)
    assert y.shape == (tokens, d) and y.dtype == dtype
    _assert_close(y, y_ref, dtype, "y")
    for name in grads_ref:
        assert grads[name].dtype == (torch.float32 if name == "weight" else dtype), name
        _assert_close(grads[name], grads_ref[name], dtype, f"grad {name}")
        assert grads_ref[name].abs().sum() > 0, f"grad {name} is not trivially zero"
    used = set(routing[1].tolist())
    for name in ("w1", "w2", "b1", "b2"):
        for e in set(range(experts)) - used:
            if name in grads:
                assert torch.equal(grads[name][e], torch.zeros_like(grads[name][e])), f"{name}: unused expert {e}"
    return grads


CASES = {  # (tokens, d, h, experts, k, activation, glu, bias, dtype)
    "E1-k1-gelu-f32": (33, 24, 40, 1, 1, "gelu", False, True, torch.float32),
    "E8-k2-swiglu-f16": (45, 40, 24, 8, 2, "silu", True, True, torch.float16),
    "E8-k8-gelu_tanh-nobias-f32": (20, 24, 20, 8, 8, "gelu_tanh", False, False, torch.float32),
    "E64-k2-relu-f16": (64, 48, 32, 64, 2, "relu", False, True, torch.float16),
    "E64-k8-silu-nobias-f32": (17, 16, 48, 64, 8, "silu", False, False, torch.float32),
    "E8-k1-identity-glu-f16": (29, 20, 36, 8, 1, "identity", True, True, torch.float16),
    "E8-k2-identity-f32": (26, 36, 17, 8, 2, "identity", False, True, torch.float32),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_triton_moe_mlp_matches_the_reference_forward_and_every_gradient(case):
    tokens, d, h, experts, k, activation, glu, bias, dtype = case
    unused = (0, experts - 1, experts // 2) if experts >= 8 else ()
    routing = _top_k_routing(tokens, experts, k, seed=tokens + experts + k, unused=unused)
    _compare(tokens, d, h, experts, routing, activation, glu, bias, dtype, seed=experts * k)


def test_triton_moe_mlp_handles_any_number_of_assignments_per_token_including_none():
    g = torch.Generator().manual_seed(7)
    tokens, experts = 40, 8
    token_index = torch.randint(0, tokens - 4, (70,), generator=g)  # the last 4 tokens, and others, get nothing
    expert_index = torch.randint(1, experts, (70,), generator=g)  # expert 0 gets nothing
    weight = torch.randn(70, generator=g)  # negative weights too
    assert (torch.bincount(token_index, minlength=tokens) == 0).sum() >= 4
    assert torch.bincount(token_index).max() >= 4, "some token has several assignments, some to the same expert"
    grads = _compare(tokens, 24, 20, experts, (token_index, expert_index, weight), "gelu", False, True,
                     torch.float32)
    assert torch.equal(grads["x"][-4:], torch.zeros_like(grads["x"][-4:]))


def test_triton_moe_mlp_with_no_assignment_returns_zeros_and_zero_gradients():
    x = torch.randn(4, 16, device=DEVICE, requires_grad=True)
    w1 = torch.randn(3, 16, 32, device=DEVICE, requires_grad=True)
    w2 = torch.randn(3, 32, 16, device=DEVICE, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long, device=DEVICE)
    y = kernels.moe_mlp(x, empty, empty, torch.zeros(0, device=DEVICE), w1, w2, backend="triton")
    assert torch.equal(y, torch.zeros(4, 16, device=DEVICE))
    y.sum().backward()
    assert torch.equal(w1.grad, torch.zeros_like(w1)) and torch.equal(x.grad, torch.zeros_like(x))


def test_triton_moe_mlp_rejects_mixed_dtypes_and_shapes_that_do_not_chain():
    x, w1, w2 = torch.randn(4, 16, device=DEVICE), torch.randn(2, 16, 32, device=DEVICE), torch.randn(2, 32, 16)
    index = torch.tensor([0, 1], device=DEVICE)
    with pytest.raises(ValueError, match="w2 is torch.float16 but x is torch.float32"):
        kernels.moe_mlp(x, index, index, torch.ones(2, device=DEVICE), w1, w2.half().to(DEVICE), backend="triton")
    with pytest.raises(ValueError, match="shapes do not chain"):
        kernels.moe_mlp(x, index, index, torch.ones(2, device=DEVICE), w1, w2.to(DEVICE), glu=True, backend="triton")
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        kernels.moe_mlp(x, index, index, torch.ones(2, device=DEVICE), w1, w2.to(DEVICE), activation="tanh",
                        backend="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 only on a GPU: the interpreter computes it wrongly")
@pytest.mark.parametrize("activation,glu", [("gelu", False), ("silu", True)], ids=["gelu", "swiglu"])
def test_triton_moe_mlp_in_bfloat16_on_gpu(activation, glu):
    routing = _top_k_routing(300, 8, 2, seed=0, unused=(3,))
    _compare(300, 64, 96, 8, routing, activation, glu, True, torch.bfloat16)


def test_triton_moe_mlp_backward_accepts_an_expanded_gradient():
    token_index, expert_index, weight = _top_k_routing(10, 4, 2, seed=3)
    params = _params(10, 16, 24, 4, False, True, seed=4)
    grads = []
    for backend in ("triton", "reference"):
        leaves = {n: p.clone().to(DEVICE).requires_grad_() for n, p in params.items()}
        y = kernels.moe_mlp(leaves["x"], token_index.to(DEVICE), expert_index.to(DEVICE), weight.to(DEVICE),
                            leaves["w1"], leaves["w2"], leaves["b1"], leaves["b2"], "gelu", backend=backend)
        y.sum().backward()  # a gradient with strides (0, 0)
        grads.append([leaves[n].grad.cpu() for n in ("x", "w1", "w2", "b1", "b2")])
    for ours, expected in zip(*grads):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
