"""The per-expert weight gradient: dW[e] = sum over rows r of expert e of x[gather_x[r]]^T (scale[r] dy[gather_dy[r]]).

Both operands are read through their row indices, so neither the gathered tokens nor the gathered output gradient
is copied into expert order. The bias gradient db[e] = sum of the (scaled) dy rows comes from the same loads. Each
program owns one (expert, K tile, N tile) block of dW and loops over the expert's rows: no atomics, and an expert
with no rows gets an exact zero.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import dot_precision, rows_bucket, xty_configs


@triton.autotune(configs=xty_configs(), key=["N", "K", "ROWS_BUCKET"])
@triton.jit
def _group_xty_kernel(
    x_ptr, stride_xm, stride_xk,
    dy_ptr, stride_dym, stride_dyn,
    dw_ptr, stride_dwe, stride_dwk, stride_dwn,
    db_ptr, stride_dbe, stride_dbn,
    scale_ptr, gather_x_ptr, gather_dy_ptr, offsets_ptr,
    N, K, ROWS_BUCKET,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, GATHER_X: tl.constexpr, GATHER_DY: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    k_tiles = tl.cdiv(K, BLOCK_K)
    expert = tl.program_id(0) // k_tiles
    k_tile = tl.program_id(0) % k_tiles
    pid_n = tl.program_id(1)
    start = tl.load(offsets_ptr + expert - 1, mask=expert > 0, other=0)
    end = tl.load(offsets_ptr + expert)

    ks = k_tile * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = ks < K
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(start, end, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_mask = rows < end
        if GATHER_X:
            x_rows = tl.load(gather_x_ptr + rows, mask=row_mask, other=0).to(tl.int64)
        else:
            x_rows = rows.to(tl.int64)
        if GATHER_DY:
            dy_rows = tl.load(gather_dy_ptr + rows, mask=row_mask, other=0).to(tl.int64)
        else:
            dy_rows = rows.to(tl.int64)
        xt = tl.load(
            x_ptr + ks[:, None] * stride_xk + x_rows[None, :] * stride_xm, mask=k_mask[:, None] & row_mask[None, :],
            other=0.0,
        )
        dy = tl.load(
            dy_ptr + dy_rows[:, None] * stride_dym + cols[None, :] * stride_dyn,
            mask=row_mask[:, None] & col_mask[None, :], other=0.0,
        )
        if HAS_SCALE:
            scale = tl.load(scale_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
            dy = (dy.to(tl.float32) * scale[:, None]).to(xt.dtype)
        acc = tl.dot(xt, dy, acc, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            bias_acc += tl.sum(dy.to(tl.float32), 0)

    expert64 = expert.to(tl.int64)
    dw_ptrs = dw_ptr + expert64 * stride_dwe + ks[:, None] * stride_dwk + cols[None, :] * stride_dwn
    tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=k_mask[:, None] & col_mask[None, :])
    if HAS_BIAS:
        # every K tile computed the same sum; the first one stores it
        tl.store(db_ptr + expert64 * stride_dbe + cols * stride_dbn, bias_acc.to(db_ptr.dtype.element_ty),
                 mask=col_mask & (k_tile == 0))


def group_xty(
    x: torch.Tensor,
    dy: torch.Tensor,
    offsets: torch.Tensor,
    *,
    gather_x: torch.Tensor | None = None,
    gather_dy: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    bias_grad: bool = False,
    out: torch.Tensor | None = None,
    bias_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """dW [E, K, N] and (with ``bias_grad``) db [E, N] over the expert-sorted rows r (expert by ``offsets`` [E]):
    dW[e] = sum_r x[gather_x[r]]^T (scale[r] dy[gather_dy[r]]), db[e] = sum_r scale[r] dy[gather_dy[r]].

    Missing indices mean "row r"; ``out`` / ``bias_out`` (allocated in x's dtype when None) may be strided views.
    """
    if x.dtype != dy.dtype:
        raise ValueError(f"x and dy dtypes differ: {x.dtype} vs {dy.dtype}")
    num_experts, k_dim, n = offsets.numel(), x.shape[-1], dy.shape[-1]
    if out is None:
        out = x.new_empty(num_experts, k_dim, n)
    if bias_grad and bias_out is None:
        bias_out = x.new_empty(num_experts, n)
    if tuple(out.shape) != (num_experts, k_dim, n) or (bias_grad and tuple(bias_out.shape) != (num_experts, n)):
        raise ValueError(f"out/bias_out must be {(num_experts, k_dim, n)} / {(num_experts, n)}")
    if num_experts == 0 or k_dim == 0 or n == 0:
        return out, bias_out if bias_grad else None

    def grid(meta):
        return num_experts * triton.cdiv(k_dim, meta["BLOCK_K"]), triton.cdiv(n, meta["BLOCK_N"])

    rows = gather_x.numel() if gather_x is not None else x.shape[0]
    _group_xty_kernel[grid](
        x, *x.stride(),
        dy, *dy.stride(),
        out, *out.stride(),
        bias_out if bias_grad else None, *(bias_out.stride() if bias_grad else (0, 0)),
        scale, gather_x, gather_dy, offsets,
        n, k_dim, rows_bucket(rows),
        HAS_BIAS=bias_grad, HAS_SCALE=scale is not None, GATHER_X=gather_x is not None,
        GATHER_DY=gather_dy is not None, DOT_PRECISION=dot_precision(x.dtype),
    )  # fmt: skip
    return out, bias_out if bias_grad else None
