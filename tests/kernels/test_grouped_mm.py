"""moezoo.kernels reference backend: grouped_mm, sort_by_expert and moe_mlp against naive loops and gradcheck."""

import pytest
import torch

import moezoo.kernels.reference as ref
from moezoo import kernels


def _offsets(counts):
    return torch.cumsum(torch.tensor(counts), 0).to(torch.int32)


def _naive_grouped_mm(x, w, counts):
    out, start = [], 0
    for e, n in enumerate(counts):
        out.append(x[start:start + n] @ w[e])
        start += n
    return torch.cat(out) if out else x.new_zeros(0, w.shape[-1])


def _counts(rows, experts, seed):
    g = torch.Generator().manual_seed(seed)
    if rows == 0:
        return [0] * experts
    cuts = torch.sort(torch.randint(0, rows + 1, (experts - 1,), generator=g)).values.tolist()
    counts = [b - a for a, b in zip([0] + cuts, cuts + [rows])]
    if experts > 2:
        counts[1] += counts[0]  # force an empty expert
        counts[0] = 0
    return counts


@pytest.mark.parametrize("rows", [0, 1, 100, 600])
@pytest.mark.parametrize("k,m", [(6, 10), (16, 32), (7, 16)])
@pytest.mark.parametrize("experts", [1, 3, 8])
def test_grouped_mm_matches_naive_loop_with_empty_experts(rows, k, m, experts):
    counts = _counts(rows, experts, seed=rows + k + experts)
    x = torch.randn(rows, k, requires_grad=True)
    w = torch.randn(experts, k, m, requires_grad=True)
    out = kernels.grouped_mm(x, w, _offsets(counts))
    expected = _naive_grouped_mm(x, w, counts)
    assert torch.allclose(out, expected, atol=1e-4)
    if rows:
        grad = torch.randn_like(out)
        gx, gw = torch.autograd.grad(out, (x, w), grad)
        ex, ew = torch.autograd.grad(expected, (x, w), grad)
        assert torch.allclose(gx, ex, atol=1e-4) and torch.allclose(gw, ew, atol=1e-4)


def test_fast_path_and_loop_agree(monkeypatch):
    counts = [5, 0, 11, 16]
    x, w = torch.randn(32, 16), torch.randn(4, 16, 32)
    assert ref._fast_path_ok(x, w)
    fast = ref.grouped_mm_forward(x, w, _offsets(counts))
    fast_grad = ref.grouped_weight_grad(x, torch.ones(32, 32), _offsets(counts))
    monkeypatch.setattr(ref, "_torch_grouped_mm", None)
    assert not ref._fast_path_ok(x, w)
    assert torch.allclose(fast, ref.grouped_mm_forward(x, w, _offsets(counts)), atol=1e-5)
    assert torch.allclose(fast_grad, ref.grouped_weight_grad(x, torch.ones(32, 32), _offsets(counts)), atol=1e-4)
    assert (fast_grad[1] == 0).all(), "an expert with no rows gets a zero weight gradient"


def test_grouped_mm_backward_accepts_an_expanded_gradient():
    x = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(2, 16, 16, requires_grad=True)
    kernels.grouped_mm(x, w, _offsets([3, 5])).sum().backward()  # .sum() sends a zero-stride gradient
    assert torch.allclose(x.grad[:3], w[0].sum(-1).expand(3, 16).detach())


def test_grouped_mm_gradcheck_float64():
    x = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    offsets = _offsets([2, 0, 4, 3])
    assert torch.autograd.gradcheck(lambda a, b: kernels.grouped_mm(a, b, offsets), (x, w))


@pytest.mark.parametrize("activation,glu", [("gelu", False), ("silu", True)])
def test_moe_mlp_gradcheck_float64_with_an_expert_receiving_no_token(activation, glu):
    t, d, h, e = 6, 4, 3, 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(t, d, dtype=torch.float64, generator=g, requires_grad=True)
    token_index = torch.tensor([0, 1, 2, 3, 4, 5, 0, 2])
    expert_index = torch.tensor([0, 2, 0, 2, 2, 0, 2, 2])  # expert 1 gets nothing
    weight = torch.rand(8, dtype=torch.float64, generator=g, requires_grad=True)
    width = 2 * h if glu else h
    w1 = torch.randn(e, d, width, dtype=torch.float64, generator=g, requires_grad=True)
    w2 = torch.randn(e, h, d, dtype=torch.float64, generator=g, requires_grad=True)
    b1 = torch.randn(e, width, dtype=torch.float64, generator=g, requires_grad=True)
    b2 = torch.randn(e, d, dtype=torch.float64, generator=g, requires_grad=True)

    def fn(x, weight, w1, w2, b1, b2):
        return kernels.moe_mlp(x, token_index, expert_index, weight, w1, w2, b1, b2, activation, glu)

    assert torch.autograd.gradcheck(fn, (x, weight, w1, w2, b1, b2))


def test_moe_mlp_matches_a_per_token_loop_and_leaves_unused_experts_without_gradient():
    t, d, h, e, k = 100, 12, 20, 5, 2
    x = torch.randn(t, d)
    expert_index = torch.randint(0, e - 1, (t * k,))  # expert 4 unused
    token_index = torch.arange(t).repeat_interleave(k)
    weight = torch.rand(t * k)
    w1 = torch.randn(e, d, h, requires_grad=True)
    w2 = torch.randn(e, h, d, requires_grad=True)
    y = kernels.moe_mlp(x, token_index, expert_index, weight, w1, w2, activation="relu")
    expected = torch.zeros(t, d)
    for a in range(t * k):
        tok, ex = token_index[a], expert_index[a]
        expected[tok] += weight[a] * (torch.relu(x[tok] @ w1[ex]) @ w2[ex])
    assert torch.allclose(y, expected, atol=1e-4)
    y.square().sum().backward()
    assert (w1.grad[4] == 0).all() and (w2.grad[4] == 0).all()
    assert w1.grad[:4].abs().sum() > 0


def test_sort_by_expert_is_stable_with_int32_cumulative_offsets():
    expert_index = torch.tensor([2, 0, 2, 1, 0, 2])
    order, offsets = kernels.sort_by_expert(expert_index, 4)
    assert order.tolist() == [1, 4, 3, 0, 2, 5]
    assert offsets.dtype == torch.int32 and offsets.tolist() == [2, 3, 6, 6]


def test_backend_choice_by_argument_and_environment(monkeypatch):
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda-magic'.*reference"):
        kernels.grouped_mm(torch.randn(2, 4), torch.randn(1, 4, 4), _offsets([2]), backend="cuda-magic")
    monkeypatch.setenv("MOEZOO_KERNEL_BACKEND", "nope")
    with pytest.raises(ValueError, match="MOEZOO_KERNEL_BACKEND"):
        kernels.grouped_mm(torch.randn(2, 4), torch.randn(1, 4, 4), _offsets([2]))
    monkeypatch.setenv("MOEZOO_KERNEL_BACKEND", "reference")
    assert kernels.grouped_mm(torch.randn(2, 4), torch.randn(1, 4, 4), _offsets([2])).shape == (2, 4)
