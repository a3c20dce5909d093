"""The row-scattered grouped GEMM: for rows r sorted by expert, out[scatter[r]] = epilogue(x[gather[r]] @ W_e + b_e).

One kernel serves every GEMM of the MoE MLP, forward and backward:

- forward GEMM 1: ``gather`` = the token of each assignment (the gather is fused: no [A, d] copy of the tokens),
  epilogue ``activation`` (stores the pre-activation for the backward and act(h), or act(a) * b for a GLU);
- forward GEMM 2: rows in order, ``scatter`` = each assignment's token-major slot (the scatter is fused);
- backward dH = (dy[token] @ W2_e^T) * weight, epilogue ``activation_grad`` (the activation's derivative applied to
  the saved pre-activation in the epilogue, so dH never goes through memory un-differentiated);
- backward dX rows = dH @ W1_e^T, scattered to token-major slots; ``grouped_mm``'s backward with no indices.

Transposed weights are strided views: no copy. Each program owns one tile of rows of a single expert (the tile table
is built in the kernel from the offsets), so an expert with no rows costs nothing and no row is padded in memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .activations import ACTIVATION_CODES, activate, activate_grad
from .configs import dot_precision, gemm_configs, rows_bucket

EPILOGUES = {"none": 0, "activation": 1, "activation_grad": 2}


@triton.autotune(configs=gemm_configs(), key=["N", "K", "ROWS_BUCKET", "EPILOGUE", "GLU"])
@triton.jit
def _scatter_gemm_kernel(
    x_ptr, stride_xm, stride_xk,
    w_ptr, stride_we, stride_wk, stride_wn,
    b_ptr, stride_be, stride_bn,
    y_ptr, stride_ym, stride_yn,
    h_ptr, stride_hm, stride_hn,
    scale_ptr, gather_ptr, scatter_ptr, offsets_ptr,
    N, K, E, ROWS_BUCKET,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_GATHER: tl.constexpr, HAS_SCATTER: tl.constexpr,
    EPILOGUE: tl.constexpr, ACT: tl.constexpr, GLU: tl.constexpr, SAVE_PRE: tl.constexpr,
    E_BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)

    # Tile table: expert e owns ceil(count_e / BLOCK_M) consecutive row tiles; program pid_m finds its expert by
    # counting the experts whose tiles all come before it. Programs past the last tile (the grid is an upper bound,
    # cdiv(rows, BLOCK_M) + E, so that it needs no host sync) do nothing.
    e = tl.arange(0, E_BLOCK)
    ends = tl.load(offsets_ptr + e, mask=e < E, other=0)
    starts = tl.load(offsets_ptr + e - 1, mask=(e > 0) & (e < E), other=0)
    tiles = (ends - starts + BLOCK_M - 1) // BLOCK_M
    tiles_through = tl.cumsum(tiles, 0)
    expert = tl.sum((tiles_through <= pid_m).to(tl.int32), 0)
    if expert < E:
        mine = e == expert
        first_tile = tl.sum(tl.where(mine, tiles_through - tiles, 0), 0)
        row_end = tl.sum(tl.where(mine, ends, 0), 0)
        rows = tl.sum(tl.where(mine, starts, 0), 0) + (pid_m - first_tile) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        if HAS_GATHER:
            src = tl.load(gather_ptr + rows, mask=row_mask, other=0).to(tl.int64)
        else:
            src = rows.to(tl.int64)
        if HAS_SCATTER:
            dst = tl.load(scatter_ptr + rows, mask=row_mask, other=0).to(tl.int64)
        else:
            dst = rows.to(tl.int64)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        col_mask = cols < N
        ks = tl.arange(0, BLOCK_K)
        expert64 = expert.to(tl.int64)

        x_ptrs = x_ptr + src[:, None] * stride_xm + ks[None, :] * stride_xk
        w_ptrs = w_ptr + expert64 * stride_we + ks[:, None] * stride_wk + cols[None, :] * stride_wn
        gate_ptrs = w_ptrs + N * stride_wn  # GLU: the gate half of W1's columns
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_mask = ks < K - k0
            x = tl.load(x_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
            acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
            if EPILOGUE == 1 and GLU:
                wg = tl.load(gate_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
                gate = tl.dot(x, wg, gate, input_precision=DOT_PRECISION)
                gate_ptrs += BLOCK_K * stride_wk
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk

        if HAS_BIAS:
            b_ptrs = b_ptr + expert64 * stride_be + cols * stride_bn
            acc += tl.load(b_ptrs, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            if EPILOGUE == 1 and GLU:
                gate += tl.load(b_ptrs + N * stride_bn, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_SCALE:
            acc *= tl.load(scale_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)[:, None]

        mask = row_mask[:, None] & col_mask[None, :]
        y_ptrs = y_ptr + dst[:, None] * stride_ym + cols[None, :] * stride_yn
        if EPILOGUE == 1:
            # forward: h = x W1 + b1 (kept for the backward when SAVE_PRE), out = act(h), or act(a) * g for a GLU
            out = activate(acc, ACT)
            if GLU:
                out = out * gate
            if SAVE_PRE:
                h_ptrs = h_ptr + rows.to(tl.int64)[:, None] * stride_hm + cols[None, :] * stride_hn
                tl.store(h_ptrs, acc.to(h_ptr.dtype.element_ty), mask=mask)
                if GLU:
                    tl.store(h_ptrs + N * stride_hn, gate.to(h_ptr.dtype.element_ty), mask=mask)
        elif EPILOGUE == 2:
            # backward: acc = dL/d out (per row, already scaled); h = the saved pre-activation
            h_ptrs = h_ptr + rows.to(tl.int64)[:, None] * stride_hm + cols[None, :] * stride_hn
            if GLU:
                a = tl.load(h_ptrs, mask=mask, other=0.0).to(tl.float32)
                g = tl.load(h_ptrs + N * stride_hn, mask=mask, other=0.0).to(tl.float32)
                tl.store(y_ptrs + N * stride_yn, (acc * activate(a, ACT)).to(y_ptr.dtype.element_ty), mask=mask)
                out = acc * g * activate_grad(a, ACT)
            elif ACT == 0:
                out = acc
            else:
                out = acc * activate_grad(tl.load(h_ptrs, mask=mask, other=0.0).to(tl.float32), ACT)
        else:
            out = acc
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask)


def _strides(t: torch.Tensor | None, n: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * n


def scatter_gemm(
    x: torch.Tensor,
    w: torch.Tensor,
    offsets: torch.Tensor,
    *,
    gather: torch.Tensor | None = None,
    scatter: torch.Tensor | None = None,
    out_rows: int | None = None,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    epilogue: str = "none",
    activation: str = "identity",
    glu: bool = False,
    pre: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row r of the expert-sorted rows (r < A, expert e by ``offsets`` [E] int32 cumulative ends):

    - ``epilogue="none"``: ``out[scatter[r]] = scale[r] * (x[gather[r]] @ w[e] + bias[e])``;
    - ``"activation"``: ``h = x[gather[r]] @ w[e] + bias[e]``; ``out[r] = act(h)``, or ``act(a) * g`` for ``glu``
      with ``h = [a, g]`` (``w`` [E, K, 2N]); ``pre[r] = h`` when ``pre`` is given;
    - ``"activation_grad"``: ``g = scale[r] * (x[gather[r]] @ w[e])`` is the gradient of act's output; ``out[r] =
      g * act'(pre[r])``, or for ``glu`` ``out[r] = [g * b * act'(a), g * act(a)]`` with ``pre[r] = [a, b]``.

    A = ``gather.numel()`` if given, else ``x.shape[0]``; missing indices mean "row r". ``out`` (allocated when None,
    rows ``out_rows`` or A) may be any strided view. Shapes: x [*, K], w [E, K, N or 2N] -> out [out_rows, N or 2N].
    """
    if epilogue not in EPILOGUES:
        raise ValueError(f"unknown epilogue {epilogue!r}; valid: {', '.join(EPILOGUES)}")
    if x.dtype != w.dtype:
        raise ValueError(f"x and w dtypes differ: {x.dtype} vs {w.dtype}")
    num_experts, k_dim, w_cols = w.shape
    rows = gather.numel() if gather is not None else x.shape[0]
    if x.shape[-1] != k_dim:
        raise ValueError(f"x has {x.shape[-1]} columns but w has {k_dim} rows per expert")
    gemm_glu = glu and epilogue == "activation"
    n = w_cols // 2 if gemm_glu else w_cols
    out_cols = 2 * n if glu and epilogue == "activation_grad" else n
    if epilogue == "activation_grad" and pre is None:
        raise ValueError("epilogue 'activation_grad' needs the saved pre-activation `pre`")
    if epilogue == "activation" and scale is not None:
        raise ValueError("`scale` scales the GEMM's result; with epilogue 'activation' scale the next GEMM instead")
    shape = (out_rows if out_rows is not None else rows, out_cols)
    if out is None:
        out = x.new_empty(shape)
    elif tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; this GEMM writes {shape}")
    if rows == 0 or n == 0:
        return out
    if k_dim == 0:
        raise ValueError("K = 0: nothing to multiply")

    def grid(meta):
        return triton.cdiv(rows, meta["BLOCK_M"]) + num_experts, triton.cdiv(n, meta["BLOCK_N"])

    _scatter_gemm_kernel[grid](
        x, *x.stride(),
        w, *w.stride(),
        bias, *_strides(bias, 2),
        out, *out.stride(),
        pre, *_strides(pre, 2),
        scale, gather, scatter, offsets,
        n, k_dim, num_experts, rows_bucket(rows),
        HAS_BIAS=bias is not None, HAS_SCALE=scale is not None,
        HAS_GATHER=gather is not None, HAS_SCATTER=scatter is not None,
        EPILOGUE=EPILOGUES[epilogue], ACT=ACTIVATION_CODES[activation], GLU=glu, SAVE_PRE=pre is not None,
        E_BLOCK=triton.next_power_of_2(num_experts), DOT_PRECISION=dot_precision(x.dtype),
    )  # fmt: skip
    return out
