"""kernels/reference.py and kernels/moe_mlp.py: grouped_mm and moe_mlp against naive loops, gradcheck in float64,
torch's grouped_mm (fast path) against the per-expert loop, sort_by_expert, and the choice of backend."""

import pytest
import torch
import torch.nn.functional as F

import moezoo.kernels.dispatch as dispatch
import moezoo.kernels.reference as ref
from moezoo import kernels

needs_torch_grouped_mm = pytest.mark.skipif(ref._torch_grouped_mm is None, reason="this torch has no grouped_mm")


def _offsets(counts):
    return torch.cumsum(torch.tensor(counts, dtype=torch.long), 0).to(torch.int32)


def _counts(rows, experts, seed):
    """Rows per expert summing to ``rows``; with 3+ experts the first and last (and for 8, one in the middle) get none,
    so that the offsets repeat at the start, in the middle and at the end."""
    empty = {0, experts - 1} | ({experts // 2} if experts >= 8 else set()) if experts >= 3 else set()
    used = [e for e in range(experts) if e not in empty]
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(used), (rows,), generator=g)
    per_used = torch.bincount(picks, minlength=len(used)).tolist()
    counts = [0] * experts
    for e, n in zip(used, per_used):
        counts[e] = n
    return counts


def _naive_grouped_mm(x, w, counts):
    """One matmul per expert on its slice of rows, in plain autograd."""
    pieces, start = [], 0
    for e, n in enumerate(counts):
        pieces.append(x[start : start + n] @ w[e])
        start += n
    return torch.cat(pieces)


def _naive_ffn(x, w1, w2, b1, b2, activation, glu):
    act = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}[activation]
    h = x @ w1 + (b1 if b1 is not None else 0)
    if glu:
        a, b = h.chunk(2, dim=-1)
        h = act(a) * b
    else:
        h = act(h)
    return h @ w2 + (b2 if b2 is not None else 0)


# -- grouped_mm -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [0, 1, 100, 600])
@pytest.mark.parametrize("k,m", [(6, 10), (16, 32), (10, 16), (32, 6)])
@pytest.mark.parametrize("experts", [1, 3, 8])
def test_grouped_mm_matches_naive_loop_with_empty_experts(rows, k, m, experts):
    counts = _counts(rows, experts, seed=1000 * rows + 10 * k + experts)
    assert sum(counts) == rows
    g = torch.Generator().manual_seed(rows + k + m + experts)
    x = torch.randn(rows, k, generator=g, requires_grad=True)
    w = torch.randn(experts, k, m, generator=g, requires_grad=True)
    offsets = _offsets(counts)

    out = kernels.grouped_mm(x, w, offsets)
    expected = _naive_grouped_mm(x, w, counts)
    assert out.shape == (rows, m) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    grad = torch.randn(rows, m, generator=g)
    gx, gw = torch.autograd.grad(out, (x, w), grad, allow_unused=True)
    ex, ew = torch.autograd.grad(expected, (x, w), grad, allow_unused=True)
    torch.testing.assert_close(gx, ex, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gw, torch.zeros_like(w) if ew is None else ew, rtol=1e-5, atol=1e-4)
    for e, n in enumerate(counts):
        if n == 0:
            assert torch.equal(gw[e], torch.zeros(k, m)), f"expert {e} got no rows but a nonzero weight gradient"


def test_grouped_mm_backward_accepts_expanded_gradients():
    x = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(2, 16, 16, requires_grad=True)
    kernels.grouped_mm(x, w, _offsets([3, 5])).sum().backward()  # .sum() sends a gradient with strides (0, 0)
    torch.testing.assert_close(x.grad[:3], w[0].sum(-1).expand(3, 16).detach())
    torch.testing.assert_close(x.grad[3:], w[1].sum(-1).expand(5, 16).detach())
    torch.testing.assert_close(w.grad[1], x[3:].sum(0).unsqueeze(-1).expand(16, 16).detach())

    x.grad = w.grad = None
    v = torch.randn(16)
    # .sum(0) sends strides (0, 1): unit last stride, so it would pass the alignment check unless made contiguous
    kernels.grouped_mm(x, w, _offsets([3, 5])).sum(0).backward(v)
    torch.testing.assert_close(x.grad[:3], (w[0] @ v).expand(3, 16).detach())
    torch.testing.assert_close(w.grad[0], torch.outer(x[:3].sum(0), v).detach())


@pytest.mark.parametrize("counts", [[2, 0, 4, 3], [0, 5, 0, 4, 0]], ids=["middle-empty", "ends-empty"])
def test_grouped_mm_gradcheck_float64_with_empty_experts(counts):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(sum(counts), 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(len(counts), 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    offsets = _offsets(counts)
    assert torch.autograd.gradcheck(lambda a, b: kernels.grouped_mm(a, b, offsets), (x, w))


# -- torch's grouped_mm (fast path) against the per-expert loop -------------------------------------------------------


@needs_torch_grouped_mm
def test_fast_path_is_taken_only_where_torch_grouped_mm_rules_allow():
    x, w = torch.randn(32, 16), torch.randn(4, 16, 32)
    assert ref._fast_path_ok(x, w)
    assert ref._fast_path_ok(x.half(), w.half()) and ref._fast_path_ok(x.bfloat16(), w.bfloat16())
    assert not ref._fast_path_ok(x.double(), w.double()), "float64 is not a grouped_mm dtype"
    assert not ref._fast_path_ok(x, w.half()), "mixed dtypes"
    assert not ref._fast_path_ok(torch.randn(32, 6), torch.randn(4, 6, 32)), "K=6 rows are not 16-byte aligned"
    assert not ref._fast_path_ok(x, torch.randn(4, 16, 10)), "M=10 rows are not 16-byte aligned"
    transposed = torch.randn(4, 32, 16).transpose(1, 2)  # column-major matrices: taken without a copy
    assert ref._fast_path_ok(x, transposed)
    torch.testing.assert_close(ref.grouped_mm_forward(x, transposed, _offsets([8, 8, 8, 8])),
                               ref.grouped_mm_forward(x, transposed.contiguous(), _offsets([8, 8, 8, 8])))
    assert not ref._fast_path_ok(x, torch.randn(4, 32, 6).transpose(1, 2)), "column stride of 24 bytes"
    assert ref._fast_path_ok(torch.randn(33, 16)[1:], w), "a view starting one 64-byte row in stays aligned"
    assert not ref._fast_path_ok(torch.randn(32 * 16 + 1)[1:].view(32, 16), w), "data pointer off by 4 bytes"


@needs_torch_grouped_mm
def test_fast_path_calls_torch_grouped_mm_only_when_aligned(monkeypatch):
    calls = []
    real = ref._torch_grouped_mm

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(ref, "_torch_grouped_mm", spy)
    x = torch.randn(12, 16, requires_grad=True)
    w = torch.randn(3, 16, 8, requires_grad=True)
    kernels.grouped_mm(x, w, _offsets([5, 0, 7])).square().sum().backward()
    assert len(calls) == 3, "forward, input gradient and weight gradient all use torch's grouped_mm"
    calls.clear()
    x6 = torch.randn(12, 6, requires_grad=True)
    kernels.grouped_mm(x6, torch.randn(3, 6, 10), _offsets([5, 0, 7])).sum().backward()
    kernels.grouped_mm(x.double(), w.double(), _offsets([5, 0, 7]))
    assert calls == [], "unaligned or float64 inputs go through the loop"


@needs_torch_grouped_mm
def test_fast_path_and_loop_agree_forward_and_backward(monkeypatch):
    counts = [5, 0, 11, 16, 0]
    offsets = _offsets(counts)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 16, generator=g)
    w = torch.randn(5, 16, 32, generator=g)
    grad = torch.randn(32, 32, generator=g)

    def run():
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = kernels.grouped_mm(xr, wr, offsets, backend="reference")
        out.backward(grad)
        forward = ref.grouped_mm_forward(x, w, offsets)
        weight_grad = ref.grouped_weight_grad(x, grad, offsets)
        return out.detach(), xr.grad, wr.grad, forward, weight_grad

    assert ref._fast_path_ok(x, w) and ref._fast_path_ok(x.t().contiguous(), grad)
    fast = run()
    monkeypatch.setattr(ref, "_torch_grouped_mm", None)
    assert not ref._fast_path_ok(x, w)
    loop = run()
    for name, a, b in zip(["out", "grad x", "grad w", "forward", "weight grad"], fast, loop):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    for e in (1, 4):
        assert torch.equal(fast[2][e], torch.zeros(16, 32)) and torch.equal(loop[2][e], torch.zeros(16, 32))


def test_loop_on_an_unaligned_view_matches_the_aligned_result():
    counts = [3, 0, 9]
    x, w = torch.randn(12, 16), torch.randn(3, 16, 8)
    padded = torch.zeros(12, 17)
    padded[:, :16] = x  # same values, row stride 17 floats: not 16-byte aligned, so the loop runs
    assert not ref._fast_path_ok(padded[:, :16], w)
    torch.testing.assert_close(
        ref.grouped_mm_forward(padded[:, :16], w, _offsets(counts)), ref.grouped_mm_forward(x, w, _offsets(counts)),
        rtol=1e-5, atol=1e-5,
    )


# -- moe_mlp ----------------------------------------------------------------------------------------------------------


def _assignments(tokens, experts, k, unused, seed):
    """k distinct experts per token, never ``unused``; assignments shuffled so they arrive in no particular order."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(tokens, experts, generator=g)
    scores[:, unused] = -1.0
    expert_index = scores.topk(k, dim=-1).indices.reshape(-1)
    token_index = torch.arange(tokens).repeat_interleave(k)
    weight = torch.rand(tokens * k, generator=g)
    perm = torch.randperm(tokens * k, generator=g)
    return token_index[perm], expert_index[perm], weight[perm]


@pytest.mark.parametrize(
    "activation,glu,bias", [("gelu", False, True), ("silu", True, True), ("relu", False, False)],
    ids=["gelu", "swiglu", "relu-nobias"],
)
def test_moe_mlp_equals_a_naive_per_token_loop_and_an_unused_expert_gets_zero_gradient(activation, glu, bias):
    t, d, h, e, k, unused = 100, 12, 20, 5, 2, 2
    token_index, expert_index, weight = _assignments(t, e, k, unused, seed=0)
    assert not (expert_index == unused).any()
    g = torch.Generator().manual_seed(1)
    width = 2 * h if glu else h
    params = {
        "x": torch.randn(t, d, generator=g),
        "weight": weight,
        "w1": torch.randn(e, d, width, generator=g) / d**0.5,
        "w2": torch.randn(e, h, d, generator=g) / h**0.5,
        "b1": torch.randn(e, width, generator=g) if bias else None,
        "b2": torch.randn(e, d, generator=g) if bias else None,
    }
    ours = {n: p.clone().requires_grad_() for n, p in params.items() if p is not None}
    naive = {n: p.clone().requires_grad_() for n, p in params.items() if p is not None}

    y = kernels.moe_mlp(ours["x"], token_index, expert_index, ours["weight"], ours["w1"], ours["w2"],
                        ours.get("b1"), ours.get("b2"), activation, glu)
    rows = []
    for tok in range(t):
        row = torch.zeros(d)
        for a in (token_index == tok).nonzero().flatten().tolist():
            ex = expert_index[a]
            b1 = naive["b1"][ex] if bias else None
            b2 = naive["b2"][ex] if bias else None
            row = row + naive["weight"][a] * _naive_ffn(naive["x"][tok], naive["w1"][ex], naive["w2"][ex], b1, b2,
                                                        activation, glu)
        rows.append(row)
    expected = torch.stack(rows)
    assert y.shape == (t, d)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)

    grad = torch.randn(t, d, generator=g)
    y.backward(grad)
    expected.backward(grad)
    for name in ours:
        torch.testing.assert_close(ours[name].grad, naive[name].grad, rtol=1e-4, atol=1e-5, msg=name)
    for name in ("w1", "w2", "b1", "b2"):
        if name in ours:
            assert torch.equal(ours[name].grad[unused], torch.zeros_like(ours[name].grad[unused])), name
            assert ours[name].grad[unused - 1].abs().sum() > 0, f"{name}: a used expert does get a gradient"


@pytest.mark.parametrize("activation,glu", [("gelu", False), ("silu", True)], ids=["gelu", "swiglu"])
def test_moe_mlp_gradcheck_float64_with_an_expert_receiving_no_token(activation, glu):
    t, d, h, e = 6, 4, 3, 3
    g = torch.Generator().manual_seed(0)
    token_index = torch.tensor([0, 1, 2, 3, 4, 5, 0, 2])
    expert_index = torch.tensor([0, 2, 0, 2, 2, 0, 2, 2])  # expert 1 gets nothing
    width = 2 * h if glu else h

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=g).requires_grad_()

    x, weight = leaf(t, d), torch.rand(8, dtype=torch.float64, generator=g).requires_grad_()
    w1, w2, b1, b2 = leaf(e, d, width), leaf(e, h, d), leaf(e, width), leaf(e, d)

    def fn(x, weight, w1, w2, b1, b2):
        return kernels.moe_mlp(x, token_index, expert_index, weight, w1, w2, b1, b2, activation, glu)

    assert torch.autograd.gradcheck(fn, (x, weight, w1, w2, b1, b2))


@pytest.mark.parametrize("h,d", [(3, 5), (5, 3)], ids=["narrow-hidden", "wide-hidden"])
def test_moe_mlp_without_bias_gradchecks_whichever_side_the_routing_weight_scales(h, d):
    g = torch.Generator().manual_seed(0)
    token_index = torch.tensor([0, 1, 2, 3, 0, 2])
    expert_index = torch.tensor([1, 0, 1, 1, 0, 0])
    x = torch.randn(4, d, dtype=torch.float64, generator=g).requires_grad_()
    weight = torch.rand(6, dtype=torch.float64, generator=g).requires_grad_()
    w1 = torch.randn(2, d, h, dtype=torch.float64, generator=g).requires_grad_()
    w2 = torch.randn(2, h, d, dtype=torch.float64, generator=g).requires_grad_()

    def fn(x, weight, w1, w2):
        return kernels.moe_mlp(x, token_index, expert_index, weight, w1, w2, activation="gelu")

    assert torch.autograd.gradcheck(fn, (x, weight, w1, w2))
    expected = torch.zeros(4, d, dtype=torch.float64)
    for a in range(6):
        t, e = token_index[a], expert_index[a]
        expected[t] += weight[a] * (F.gelu(x[t] @ w1[e]) @ w2[e])
    torch.testing.assert_close(fn(x, weight, w1, w2), expected)


def test_moe_mlp_with_no_assignment_returns_zeros_and_zero_gradients():
    x = torch.randn(4, 8, requires_grad=True)
    w1, w2 = torch.randn(3, 8, 16, requires_grad=True), torch.randn(3, 16, 8, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    y = kernels.moe_mlp(x, empty, empty, torch.zeros(0), w1, w2)
    assert torch.equal(y, torch.zeros(4, 8))
    y.sum().backward()
    assert torch.equal(w1.grad, torch.zeros_like(w1)) and torch.equal(x.grad, torch.zeros_like(x))


# -- sort_by_expert ---------------------------------------------------------------------------------------------------


def test_sort_by_expert_is_stable_with_int32_cumulative_offsets():
    order, offsets = kernels.sort_by_expert(torch.tensor([2, 0, 2, 1, 0, 2]), 4)
    assert order.tolist() == [1, 4, 3, 0, 2, 5]
    assert offsets.dtype == torch.int32 and offsets.tolist() == [2, 3, 6, 6]


def test_sort_by_expert_groups_by_expert_keeping_arrival_order_on_a_large_input():
    expert_index = torch.randint(0, 6, (1000,), generator=torch.Generator().manual_seed(0))  # experts 6, 7 unused
    order, offsets = kernels.sort_by_expert(expert_index, 8)
    assert sorted(order.tolist()) == list(range(1000)), "a permutation"
    assert offsets.dtype == torch.int32 and offsets.shape == (8,)
    assert offsets.tolist() == torch.cumsum(torch.bincount(expert_index, minlength=8), 0).tolist()
    starts = [0] + offsets.tolist()[:-1]
    for e, (start, end) in enumerate(zip(starts, offsets.tolist())):
        mine = order[start:end]
        assert (expert_index[mine] == e).all()
        assert torch.equal(mine, (expert_index == e).nonzero().flatten()), f"expert {e}: arrival order kept"


# -- backend choice ---------------------------------------------------------------------------------------------------


def _small_inputs():
    return torch.randn(2, 4), torch.randn(1, 4, 4), _offsets([2])


def test_unknown_backend_raises_value_error_listing_valid_names(monkeypatch):
    monkeypatch.delenv("MOEZOO_KERNEL_BACKEND", raising=False)
    with pytest.raises(ValueError, match=r"unknown kernel backend 'cuda-magic'.*valid: \['reference'") as info:
        kernels.grouped_mm(*_small_inputs(), backend="cuda-magic")
    assert all(name in str(info.value) for name in kernels.available_backends())
    x, w1, w2 = torch.randn(2, 4), torch.randn(1, 4, 4), torch.randn(1, 4, 4)
    with pytest.raises(ValueError, match="unknown kernel backend 'nope'"):
        kernels.moe_mlp(x, torch.tensor([0, 1]), torch.tensor([0, 0]), torch.ones(2), w1, w2, backend="nope")
    monkeypatch.setenv("MOEZOO_KERNEL_BACKEND", "nope")
    with pytest.raises(ValueError, match=r"'nope'.*MOEZOO_KERNEL_BACKEND.*reference"):
        kernels.grouped_mm(*_small_inputs())


def test_backend_is_taken_from_the_argument_then_the_environment_then_reference(monkeypatch):
    monkeypatch.setattr(dispatch, "_BACKENDS", dict(dispatch._BACKENDS))  # registrations below are undone
    calls = []

    def spy_grouped_mm(x, w, offsets):
        calls.append("spy")
        return ref.grouped_mm_forward(x, w, offsets)

    # no moe_mlp: that op falls back to the reference backend
    kernels.register_backend("spy", grouped_mm=kernels.GroupedMMKernels(spy_grouped_mm, ref.grouped_weight_grad))
    assert {"reference", "spy"} <= set(kernels.available_backends())

    monkeypatch.delenv("MOEZOO_KERNEL_BACKEND", raising=False)
    kernels.grouped_mm(*_small_inputs())
    assert calls == []
    monkeypatch.setenv("MOEZOO_KERNEL_BACKEND", "spy")
    out = kernels.grouped_mm(*_small_inputs())
    assert calls == ["spy"] and out.shape == (2, 4)
    kernels.grouped_mm(*_small_inputs(), backend="reference")
    assert calls == ["spy"], "the argument wins over the environment"
    assert dispatch.resolve("moe_mlp", None, torch.zeros(1)) == "reference"


def test_register_backend_rejects_functions_that_are_not_an_ops_kernels():
    with pytest.raises(TypeError, match=r"grouped_mm=function is not one of grouped_mm=GroupedMMKernels"):
        kernels.register_backend("bad", grouped_mm=ref.grouped_mm_forward)
    assert "bad" not in kernels.available_backends()
