"""FLOP counts of the grouped GEMM for ``torch.utils.flop_counter``: torch 2.11 has no formula for
``aten._grouped_mm``, so ``FlopCounterMode`` counted none of the experts' compute the reference backend runs through
it (an MoE looked as cheap as its router). Registered once at import, where torch has none of its own.

Each output element of a grouped GEMM is one dot product over the shared dimension of its own group:
- x [M, K] by w [G, K, N] (rows grouped by ``offs``) -> [M, N]: 2 M K N;
- x^T [K, M] by g [M, N] (the weight gradient, M grouped) -> [G, K, N]: 2 K M N (each row counts in one group);
- batched [G, M, K] by [G, K, N] -> [G, M, N]: 2 G M K N.
The Triton backend's fused kernels are not aten ops and stay uncounted.
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula


def grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """2 x (output elements) x (length of their dot products), for every layout of ``aten._grouped_mm``."""
    if len(a_shape) == 2 and len(b_shape) == 2:  # grouped along the shared dimension: each row in one group
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return 2 * math.prod(out_shape) * a_shape[-1]


_grouped_mm = getattr(torch.ops.aten, "_grouped_mm", None)
if _grouped_mm is not None and _grouped_mm not in flop_registry:
    register_flop_formula(_grouped_mm)(grouped_mm_flops)
