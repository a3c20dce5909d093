"""kernels/triton/{scatter_gemm,group_xty,segment}.py: each Triton kernel against torch on odd sizes and empty experts,
its outputs inside NaN guard buffers (the CPU interpreter does not check bounds), in fp32 and fp16."""

import os

import pytest
import torch

pytest.importorskip("triton")

from moezoo.kernels.activations import apply_activation  # noqa: E402
from moezoo.kernels.triton import configs  # noqa: E402
from moezoo.kernels.triton.group_xty import _group_xty_kernel, group_xty  # noqa: E402
from moezoo.kernels.triton.scatter_gemm import _scatter_gemm_kernel, scatter_gemm  # noqa: E402
from moezoo.kernels.triton.segment import (  # noqa: E402
    _gathered_row_dot_kernel,
    _segment_sum_kernel,
    gathered_row_dot,
    segment_sum,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}  # x 4, relative to the largest value
KERNELS = [_scatter_gemm_kernel, _group_xty_kernel, _segment_sum_kernel, _gathered_row_dot_kernel]
COUNTS = [0, 7, 0, 21, 1, 0, 4, 0]  # 33 rows, empty experts at the start, middle and end, ragged tiles of 16


def _offsets(counts):
    return torch.cumsum(torch.tensor(counts), 0).to(torch.int32).to(DEVICE)


def _randn(*shape, seed, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def _per_expert(counts):
    start = 0
    for e, n in enumerate(counts):
        yield e, slice(start, start + n)
        start += n


def _assert_close(actual, expected, dtype, msg=""):
    """Relative to the largest expected magnitude: fp16 rounding is relative to the values summed, not each output."""
    scale = expected.abs().max().clamp_min(1e-3)
    err = (actual.float() - expected.float()).abs().max()
    assert err <= TOL[dtype] * 4 * scale, f"{msg}: max error {err:.3g} vs scale {scale:.3g}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the kernels compile")
def test_kernels_run_in_the_triton_interpreter_without_a_gpu_with_one_config():
    from triton.runtime.interpreter import InterpretedFunction

    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert configs.INTERPRET
    for kernel in KERNELS:
        assert isinstance(kernel.fn, InterpretedFunction), kernel
        assert len(kernel.configs) == 1, "the interpreter gets a single config: no benchmarking there"


def test_every_config_keeps_tiles_of_at_least_16_so_it_compiles_on_a_gpu(monkeypatch):
    for interpret in (True, False):
        monkeypatch.setattr(configs, "INTERPRET", interpret)
        for make in (configs.gemm_configs, configs.xty_configs, configs.segment_configs):
            found = make()
            assert len(found) == 1 if interpret else len(found) > 1
            for config in found:
                assert all(v >= 16 for k, v in config.kwargs.items() if k.startswith("BLOCK")), config


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_scatter_gemm_reads_rows_through_gather_and_writes_them_through_scatter(dtype, guard):
    rows, k, n, tokens = sum(COUNTS), 40, 20, 13
    x = guard(tokens, k, dtype=dtype, fill=_randn(tokens, k, seed=0, dtype=dtype))
    w = _randn(len(COUNTS), k, n, seed=1, dtype=dtype, scale=k**-0.5)
    bias = _randn(len(COUNTS), n, seed=2, dtype=dtype)
    scale = torch.rand(rows, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    gather = torch.randint(0, tokens, (rows,), generator=torch.Generator().manual_seed(4)).to(torch.int32).to(DEVICE)
    scatter = torch.randperm(rows + 5, generator=torch.Generator().manual_seed(5))[:rows].to(torch.int32).to(DEVICE)
    out = guard(rows + 5, n, dtype=dtype)
    out[rows:] = 0  # slots no row scatters to keep their value
    out[scatter.long()] = 0
    untouched = torch.ones(rows + 5, dtype=torch.bool, device=DEVICE)
    untouched[scatter.long()] = False
    out[untouched] = 7.0

    scatter_gemm(x, w, _offsets(COUNTS), gather=gather, scatter=scatter, out_rows=rows + 5, bias=bias, scale=scale,
                 out=out)
    expected = torch.empty(rows, n, device=DEVICE)
    for e, sl in _per_expert(COUNTS):
        expected[sl] = scale[sl, None] * (x[gather[sl].long()].float() @ w[e].float() + bias[e].float())
    _assert_close(out[scatter.long()], expected, dtype, "scattered rows")
    assert (out[untouched] == 7.0).all(), "rows no assignment scatters to are left alone"
    guard.assert_intact()


@pytest.mark.parametrize(
    "activation,glu,dtype", [("gelu", False, torch.float32), ("silu", True, torch.float16),
                             ("gelu_tanh", True, torch.float32), ("relu", False, torch.float16)],
)
def test_scatter_gemm_activation_epilogue_returns_act_and_keeps_the_pre_activation(activation, glu, dtype, guard):
    rows, k, n = sum(COUNTS), 24, 36
    width = 2 * n if glu else n
    x = guard(rows, k, dtype=dtype, fill=_randn(rows, k, seed=6, dtype=dtype))
    w = _randn(len(COUNTS), k, width, seed=7, dtype=dtype, scale=k**-0.5)
    bias = _randn(len(COUNTS), width, seed=8, dtype=dtype)
    pre, out = guard(rows, width, dtype=dtype), guard(rows, n, dtype=dtype)

    scatter_gemm(x, w, _offsets(COUNTS), bias=bias, epilogue="activation", activation=activation, glu=glu, pre=pre,
                 out=out)
    h = torch.empty(rows, width, device=DEVICE)
    for e, sl in _per_expert(COUNTS):
        h[sl] = x[sl].float() @ w[e].float() + bias[e].float()
    _assert_close(pre, h, dtype, "pre-activation")
    _assert_close(out, apply_activation(h, activation, glu), dtype, "activation")
    guard.assert_intact()


@pytest.mark.parametrize(
    "activation,glu,dtype", [("gelu", False, torch.float16), ("gelu_tanh", False, torch.float32),
                             ("silu", True, torch.float32), ("relu", True, torch.float16)],
)
def test_scatter_gemm_activation_grad_epilogue_is_the_activations_backward(activation, glu, dtype, guard):
    rows, n, k, tokens = sum(COUNTS), 20, 40, 11  # w: the transposed W2 [E, d, h], as in the MLP's backward
    width = 2 * n if glu else n
    dy = guard(tokens, k, dtype=dtype, fill=_randn(tokens, k, seed=9, dtype=dtype))
    w2 = _randn(len(COUNTS), n, k, seed=10, dtype=dtype, scale=k**-0.5)
    pre = guard(rows, width, dtype=dtype, fill=_randn(rows, width, seed=11, dtype=dtype, scale=2.0))
    scale = torch.rand(rows, generator=torch.Generator().manual_seed(12)).to(DEVICE)
    gather = torch.randint(0, tokens, (rows,), generator=torch.Generator().manual_seed(13)).to(torch.int32).to(DEVICE)
    out = guard(rows, width, dtype=dtype)

    scatter_gemm(dy, w2.transpose(1, 2), _offsets(COUNTS), gather=gather, scale=scale, epilogue="activation_grad",
                 activation=activation, glu=glu, pre=pre, out=out)
    grad_act = torch.empty(rows, n, device=DEVICE)
    for e, sl in _per_expert(COUNTS):
        grad_act[sl] = scale[sl, None] * (dy[gather[sl].long()].float() @ w2[e].float().t())
    h = pre.float().clone().requires_grad_()
    (expected,) = torch.autograd.grad(apply_activation(h, activation, glu), h, grad_act)
    _assert_close(out, expected, dtype, "activation gradient")
    guard.assert_intact()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_group_xty_sums_each_experts_gathered_rows_and_gives_empty_experts_exact_zeros(dtype, guard):
    rows, k, n, tokens = sum(COUNTS), 40, 24, 9
    x = guard(tokens, k, dtype=dtype, fill=_randn(tokens, k, seed=14, dtype=dtype))
    dy = guard(tokens + 2, n, dtype=dtype, fill=_randn(tokens + 2, n, seed=15, dtype=dtype))
    gen = torch.Generator().manual_seed(16)
    gather_x = torch.randint(0, tokens, (rows,), generator=gen).to(torch.int32).to(DEVICE)
    gather_dy = torch.randint(0, tokens + 2, (rows,), generator=gen).to(torch.int32).to(DEVICE)
    scale = torch.rand(rows, generator=gen).to(DEVICE)
    dw, db = guard(len(COUNTS), k, n, dtype=dtype), guard(len(COUNTS), n, dtype=dtype)

    group_xty(x, dy, _offsets(COUNTS), gather_x=gather_x, gather_dy=gather_dy, scale=scale, bias_grad=True, out=dw,
              bias_out=db)
    for e, sl in _per_expert(COUNTS):
        g = scale[sl, None] * dy[gather_dy[sl].long()].float()
        _assert_close(dw[e], x[gather_x[sl].long()].float().t() @ g, dtype, f"dw[{e}]")
        _assert_close(db[e], g.sum(0), dtype, f"db[{e}]")
        if sl.start == sl.stop:
            assert torch.equal(dw[e], torch.zeros_like(dw[e])) and torch.equal(db[e], torch.zeros_like(db[e]))
    guard.assert_intact()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_segment_sum_adds_each_tokens_slots_and_gives_tokens_without_slots_zero(dtype, guard):
    counts = [2, 0, 1, 8, 0, 3, 1, 2, 0, 5, 1, 1, 2, 2, 1, 3, 2, 0]  # 18 tokens: more than one tile of 16
    ends = torch.cumsum(torch.tensor(counts), 0).to(torch.int32).to(DEVICE)
    src = guard(sum(counts), 37, dtype=dtype, fill=_randn(sum(counts), 37, seed=17, dtype=dtype))
    weight = torch.randn(sum(counts), generator=torch.Generator().manual_seed(18)).to(DEVICE)
    weighted, plain = guard(len(counts), 37, dtype=dtype), guard(len(counts), 37, dtype=dtype)

    segment_sum(src, ends, weight, out=weighted)
    segment_sum(src, ends, out=plain)
    start = 0
    for t, c in enumerate(counts):
        sl = slice(start, start + c)
        _assert_close(weighted[t], (weight[sl, None] * src[sl].float()).sum(0), dtype, f"token {t}")
        _assert_close(plain[t], src[sl].float().sum(0), dtype, f"token {t}")
        start += c
    assert torch.equal(plain[1], torch.zeros(37, dtype=dtype, device=DEVICE))
    guard.assert_intact()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gathered_row_dot_writes_each_rows_dot_product_to_its_index(dtype, guard):
    rows, d, tokens = 21, 70, 6  # d > one column tile: the loop over columns runs
    a = guard(rows, d, dtype=dtype, fill=_randn(rows, d, seed=19, dtype=dtype))
    b = guard(tokens, d, dtype=dtype, fill=_randn(tokens, d, seed=20, dtype=dtype))
    gen = torch.Generator().manual_seed(21)
    b_rows = torch.randint(0, tokens, (rows,), generator=gen).to(torch.int32).to(DEVICE)
    out_index = torch.randperm(rows, generator=gen).to(torch.int32).to(DEVICE)
    out = guard(rows, dtype=torch.float32)

    gathered_row_dot(a, b, b_rows, out_index, out=out)
    expected = torch.empty(rows, device=DEVICE)
    expected[out_index.long()] = (a.float() * b[b_rows.long()].float()).sum(-1)
    _assert_close(out, expected, dtype, "row dots")
    guard.assert_intact()


def test_kernels_with_no_rows_write_nothing_and_weight_gradients_are_zero(guard):
    x, w = torch.randn(0, 16, device=DEVICE), torch.randn(3, 16, 16, device=DEVICE)
    offsets = torch.zeros(3, dtype=torch.int32, device=DEVICE)
    assert scatter_gemm(x, w, offsets).shape == (0, 16)
    dw = guard(3, 16, 16)
    group_xty(x, torch.randn(0, 16, device=DEVICE), offsets, out=dw)
    assert torch.equal(dw, torch.zeros_like(dw))
    y = guard(4, 16)
    segment_sum(torch.randn(0, 16, device=DEVICE), torch.zeros(4, dtype=torch.int32, device=DEVICE), out=y)
    assert torch.equal(y, torch.zeros_like(y))
    guard.assert_intact()
