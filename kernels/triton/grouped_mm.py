"""Triton grouped GEMM over expert-sorted rows, as one autograd op: out[rows of e] = x[rows of e] @ w[e].

Backward: dx = dout @ w[e]^T (the same kernel on the transposed weights, a strided view), dw[e] = x[rows of e]^T @
dout[rows of e] (``group_xty``); an expert with no rows gets a zero gradient.
"""

from __future__ import annotations

import torch

from .group_xty import group_xty
from .scatter_gemm import scatter_gemm


class GroupedMM(torch.autograd.Function):
    """x [N, K] sorted by expert, w [E, K, M], offsets [E] int32 cumulative ends -> [N, M]."""

    @staticmethod
    def forward(ctx, x, w, offsets):
        ctx.save_for_backward(x, w, offsets)
        return scatter_gemm(x, w, offsets)

    @staticmethod
    def backward(ctx, grad):
        x, w, offsets = ctx.saved_tensors
        grad_x = scatter_gemm(grad, w.transpose(1, 2), offsets) if ctx.needs_input_grad[0] else None
        grad_w = group_xty(x, grad, offsets)[0] if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Differentiable grouped GEMM with the reference signature (offsets of any integer dtype)."""
    return GroupedMM.apply(x, w, offsets.to(torch.int32).contiguous())
