"""moezoo.kernels: the MoE compute primitives, one API over interchangeable backends.

- ``sort_by_expert(expert_index, E) -> (order, offsets)``: group assignments by expert once.
- ``grouped_mm(x, w, offsets)``: differentiable grouped GEMM over expert-sorted rows.
- ``moe_mlp(x, token_index, expert_index, weight, w1, w2, ...)``: the whole routed expert MLP.

Backends: ``reference`` (torch; uses torch's grouped_mm where its dtype/alignment rules allow, a loop otherwise),
``triton`` (fused gather/scatter kernels, ``moezoo.kernels.triton``; CUDA, or CPU under TRITON_INTERPRET=1) and
``auto`` (triton on CUDA, reference elsewhere). Choose with the ``backend=`` argument or ``$MOEZOO_KERNEL_BACKEND``.
"""

from __future__ import annotations

import torch

from .activations import ACTIVATIONS, apply_activation
from .dispatch import available_backends, register_backend, resolve
from .moe_mlp import moe_mlp_reference
from .reference import grouped_mm as grouped_mm_reference
from .reference import sort_by_expert
from .triton import register as _register_triton

register_backend("reference", grouped_mm=grouped_mm_reference, moe_mlp=moe_mlp_reference)
_register_triton()  # imports no triton: the kernels load at their first call


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """x [N, K] sorted by expert, w [E, K, M], offsets [E] int32 cumulative ends -> [N, M]."""
    return resolve("grouped_mm", backend)(x, w, offsets)


def moe_mlp(
    x: torch.Tensor,
    token_index: torch.Tensor,
    expert_index: torch.Tensor,
    weight: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    b1: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    activation: str = "gelu",
    glu: bool = False,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Routed expert MLP; see ``moe_mlp_reference`` for the equation and shapes."""
    fn = resolve("moe_mlp", backend)
    return fn(x, token_index, expert_index, weight, w1, w2, b1, b2, activation, glu)


__all__ = [
    "ACTIVATIONS",
    "apply_activation",
    "available_backends",
    "grouped_mm",
    "moe_mlp",
    "register_backend",
    "sort_by_expert",
]
