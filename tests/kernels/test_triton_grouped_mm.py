"""kernels/triton/grouped_mm.py: the Triton grouped GEMM against the reference backend, forward and backward, on
sizes that are not multiples of the tiles, with empty experts, for E = 1, 3, 8, 64, in fp32 and fp16."""

import pytest
import torch

pytest.importorskip("triton")

from moezoo import kernels  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}  # x 4, relative to the largest value


def _counts(rows, experts, seed):
    """Rows per expert; with 3+ experts the first and the last get none, with 8+ one in the middle too."""
    empty = ({0, experts - 1} | ({experts // 2} if experts >= 8 else set())) if experts >= 3 else set()
    used = [e for e in range(experts) if e not in empty]
    picks = torch.randint(0, len(used), (rows,), generator=torch.Generator().manual_seed(seed))
    counts = [0] * experts
    for e, n in zip(used, torch.bincount(picks, minlength=len(used)).tolist()):
        counts[e] = n
    return counts


def _assert_close(actual, expected, dtype, name):
    scale = expected.abs().max().clamp_min(1e-3)
    err = (actual.float() - expected).abs().max()
    assert err <= TOL[dtype] * 4 * scale, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


def _compare(rows, k, m, experts, dtype, seed=0, transposed=False):
    counts = _counts(rows, experts, seed)
    offsets = torch.cumsum(torch.tensor(counts), 0).to(torch.int32).to(DEVICE)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g)
    shape = (experts, m, k) if transposed else (experts, k, m)
    w = torch.randn(*shape, generator=g) / k**0.5
    w = w.transpose(1, 2) if transposed else w
    grad = torch.randn(rows, m, generator=g)

    def leaf(t, **to):
        return t.detach().to(**to).clone().requires_grad_()

    # a transposed view of [E, M, K] weights goes in as it is (strides, no copy)
    ours = [leaf(x, device=DEVICE, dtype=dtype), leaf(w, device=DEVICE, dtype=dtype)]
    if transposed:
        ours[1] = leaf(w.transpose(1, 2), device=DEVICE, dtype=dtype).transpose(1, 2).detach().requires_grad_()
        assert not ours[1].is_contiguous()
    ref = [leaf(x), leaf(w)]
    out = kernels.grouped_mm(*ours, offsets, backend="triton")
    expected = kernels.grouped_mm(*ref, offsets.cpu(), backend="reference")
    assert out.shape == (rows, m) and out.dtype == dtype
    _assert_close(out.cpu(), expected.detach(), dtype, "out")
    out.backward(grad.to(DEVICE, dtype))
    expected.backward(grad)
    _assert_close(ours[0].grad.cpu(), ref[0].grad, dtype, "grad x")
    _assert_close(ours[1].grad.cpu(), ref[1].grad, dtype, "grad w")
    for e, n in enumerate(counts):
        if n == 0:
            assert torch.equal(ours[1].grad[e], torch.zeros_like(ours[1].grad[e])), f"empty expert {e}: zero grad"


@pytest.mark.parametrize(
    "rows,k,m,experts,dtype",
    [(1, 16, 16, 1, torch.float32), (37, 48, 20, 1, torch.float16), (45, 40, 24, 8, torch.float32),
     (45, 40, 24, 8, torch.float16), (60, 20, 36, 64, torch.float32), (33, 17, 9, 3, torch.float16)],
)
def test_triton_grouped_mm_matches_the_reference_forward_and_backward(rows, k, m, experts, dtype):
    _compare(rows, k, m, experts, dtype, seed=rows + k + m + experts)


def test_triton_grouped_mm_takes_transposed_weights_without_a_copy():
    _compare(29, 24, 40, 5, torch.float32, transposed=True)


def test_triton_grouped_mm_with_no_rows_gives_zero_weight_gradients():
    x = torch.zeros(0, 16, device=DEVICE, requires_grad=True)
    w = torch.randn(3, 16, 8, device=DEVICE, requires_grad=True)
    out = kernels.grouped_mm(x, w, torch.zeros(3, dtype=torch.int32, device=DEVICE), backend="triton")
    assert out.shape == (0, 8)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_triton_grouped_mm_backward_accepts_expanded_gradients():
    x = torch.randn(8, 16, device=DEVICE, requires_grad=True)
    w = torch.randn(2, 16, 16, device=DEVICE, requires_grad=True)
    offsets = torch.tensor([3, 8], dtype=torch.int32, device=DEVICE)
    kernels.grouped_mm(x, w, offsets, backend="triton").sum().backward()  # a gradient with strides (0, 0)
    torch.testing.assert_close(x.grad[:3], w[0].sum(-1).expand(3, 16).detach())
    torch.testing.assert_close(w.grad[1], x[3:].sum(0).unsqueeze(-1).expand(16, 16).detach())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 only on a GPU: the interpreter computes it wrongly")
def test_triton_grouped_mm_in_bfloat16_on_gpu():
    _compare(300, 64, 96, 8, torch.bfloat16)
    _compare(45, 40, 24, 64, torch.bfloat16)
