"""Token-major reductions of per-assignment rows: the k-way sum back to tokens, and the routing-weight gradient.

An assignment's rows are written by the GEMMs to its *slot*, its rank in token-major order, so the rows of token t
are the contiguous range [ends[t-1], ends[t]). ``segment_sum`` adds each range up in fp32 in a fixed order: no
atomics, so results are bitwise reproducible and fp16/bf16 rows are not rounded after every addition.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import segment_configs


@triton.autotune(configs=segment_configs(), key=["D"])
@triton.jit
def _segment_sum_kernel(
    src_ptr, stride_sm, stride_sd,
    y_ptr, stride_ym, stride_yd,
    weight_ptr, ends_ptr,
    T, D,
    HAS_WEIGHT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    token_mask = tokens < T
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    ends = tl.load(ends_ptr + tokens, mask=token_mask, other=0)
    starts = tl.load(ends_ptr + tokens - 1, mask=token_mask & (tokens > 0), other=0)
    counts = ends - starts
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for i in range(0, tl.max(counts, 0)):
        slot = starts + i
        valid = i < counts
        row = tl.load(
            src_ptr + slot.to(tl.int64)[:, None] * stride_sm + cols[None, :] * stride_sd,
            mask=valid[:, None] & col_mask[None, :], other=0.0,
        ).to(tl.float32)
        if HAS_WEIGHT:
            row *= tl.load(weight_ptr + slot, mask=valid, other=0.0).to(tl.float32)[:, None]
        acc += row
    y_ptrs = y_ptr + tokens.to(tl.int64)[:, None] * stride_ym + cols[None, :] * stride_yd
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=token_mask[:, None] & col_mask[None, :])


@triton.autotune(configs=segment_configs(), key=["D"])
@triton.jit
def _gathered_row_dot_kernel(
    a_ptr, stride_am, stride_ad,
    b_ptr, stride_bm, stride_bd,
    out_ptr, b_rows_ptr, out_index_ptr,
    A, D,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_mask = rows < A
    b_rows = tl.load(b_rows_ptr + rows, mask=row_mask, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols < D)[None, :]
        a = tl.load(a_ptr + rows.to(tl.int64)[:, None] * stride_am + cols[None, :] * stride_ad, mask=mask, other=0.0)
        b = tl.load(b_ptr + b_rows[:, None] * stride_bm + cols[None, :] * stride_bd, mask=mask, other=0.0)
        acc += tl.sum(a.to(tl.float32) * b.to(tl.float32), 1)
    dst = tl.load(out_index_ptr + rows, mask=row_mask, other=0)
    tl.store(out_ptr + dst, acc.to(out_ptr.dtype.element_ty), mask=row_mask)


def segment_sum(
    src: torch.Tensor,
    token_ends: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """y[t] = sum over slots j in [token_ends[t-1], token_ends[t]) of weight[j] * src[j] (weight 1 when None).

    Shapes: src [A, D] in token-major slot order, token_ends [T] int32 cumulative, weight [A] -> y [T, D] in src's
    dtype (``out`` may be a strided view). A token with no slot gets a zero row.
    """
    num_tokens, dim = token_ends.numel(), src.shape[-1]
    if out is None:
        out = src.new_empty(num_tokens, dim)
    elif tuple(out.shape) != (num_tokens, dim):
        raise ValueError(f"out has shape {tuple(out.shape)}; the sum is {(num_tokens, dim)}")
    if num_tokens == 0 or dim == 0:
        return out

    def grid(meta):
        return triton.cdiv(num_tokens, meta["BLOCK_T"]), triton.cdiv(dim, meta["BLOCK_D"])

    _segment_sum_kernel[grid](
        src, *src.stride(), out, *out.stride(), weight, token_ends, num_tokens, dim, HAS_WEIGHT=weight is not None
    )
    return out


def gathered_row_dot(
    a: torch.Tensor,
    b: torch.Tensor,
    b_rows: torch.Tensor,
    out_index: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """out[out_index[j]] = a[j] . b[b_rows[j]] for every row j of a [A, D]; b [*, D]; -> out [A] (fp32 sums).

    The routing-weight gradient: a = the unweighted expert outputs by slot, b = dL/dy, b_rows = each slot's token.
    """
    rows, dim = a.shape
    if out is None:
        out = a.new_empty(rows, dtype=dtype or a.dtype)
    elif tuple(out.shape) != (rows,):
        raise ValueError(f"out has shape {tuple(out.shape)}; expected ({rows},)")
    if rows == 0:
        return out
    if dim == 0:
        return out.zero_()

    def grid(meta):
        return (triton.cdiv(rows, meta["BLOCK_T"]),)

    _gathered_row_dot_kernel[grid](a, *a.stride(), b, *b.stride(), out, b_rows, out_index, rows, dim)
    return out
