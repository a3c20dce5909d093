"""Triton grouped GEMM over expert-sorted rows: out[rows of e] = x[rows of e] @ w[e], and its weight gradient.

The functions backend ``triton`` gives ``moezoo::grouped_mm`` (``moezoo.kernels.ops`` composes the backward: dx =
dout @ w[e]^T is ``forward`` on the transposed weights, a strided view; dw[e] = x[rows of e]^T @ dout[rows of e] is
``weight_grad``, ``group_xty``); an expert with no rows gets a zero gradient.
"""

from __future__ import annotations

import torch

from .group_xty import group_xty
from .scatter_gemm import scatter_gemm


def forward(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x [N, K] sorted by expert, w [E, K, M], offsets [E] int32 cumulative ends -> [N, M]."""
    return scatter_gemm(x, w, offsets)


def weight_grad(x: torch.Tensor, grad: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """dW[e] = x[rows of e]^T @ grad[rows of e] -> [E, K, M]."""
    return group_xty(x, grad, offsets)[0]
