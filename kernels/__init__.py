"""moezoo.kernels: the MoE compute primitives, one API over interchangeable backends.

- ``sort_by_expert(expert_index, E) -> (order, offsets)``: group assignments by expert once.
- ``grouped_mm(x, w, offsets)``: differentiable grouped GEMM over expert-sorted rows.
- ``moe_mlp(x, token_index, expert_index, weight, w1, w2, ...)``: the whole routed expert MLP.

Backends: ``reference`` (torch; uses torch's grouped_mm where its dtype/alignment rules allow, a loop otherwise),
``triton`` (fused gather/scatter kernels, ``moezoo.kernels.triton``; CUDA, or CPU under TRITON_INTERPRET=1) and
``auto`` (triton on CUDA, reference elsewhere). Choose with the ``backend=`` argument or ``$MOEZOO_KERNEL_BACKEND``.
Both ops are torch.library ops (``moezoo::grouped_mm``, ``moezoo::moe_mlp``; ``ops.py``), so torch.compile traces
them with fullgraph=True.

Precision: each call computes in one dtype. Under ``torch.autocast`` the floating-point inputs (tokens, routing
weights, expert weights and biases) are cast to the region's dtype first, as for torch's own matmul, and the
gradients of float32 master weights come back in float32; outside autocast, tokens and expert weights of different
dtypes are an error (``DtypeMismatchError``, a ``MoezooError``).
"""

from __future__ import annotations

import torch

from moezoo.errors import MoezooError

from . import flops as _flops  # noqa: F401  (registers the grouped GEMM's FLOP formula)
from . import moe_mlp as _reference_moe_mlp
from . import ops
from . import reference as _reference
from .activations import ACTIVATIONS, apply_activation, canonical_activation
from .dispatch import GroupedMMKernels, MoEMLPKernels, available_backends, register_backend, resolve
from .reference import sort_by_expert
from .triton import register as _register_triton

register_backend(
    "reference",
    grouped_mm=GroupedMMKernels(_reference.grouped_mm_forward, _reference.grouped_weight_grad),
    moe_mlp=MoEMLPKernels(_reference_moe_mlp.forward, _reference_moe_mlp.backward, _reference_moe_mlp.saved_like),
)
_register_triton()  # imports no triton: the kernels load at their first call


class DtypeMismatchError(MoezooError, ValueError):
    """Tokens and expert weights of different dtypes outside autocast (a ValueError, as the kernels' other input
    errors are)."""


def _check_dtypes(op: str, x: torch.Tensor, **weights: torch.Tensor | None) -> None:
    for name, t in weights.items():
        if t is not None and t.dtype != x.dtype:
            raise DtypeMismatchError(f"moezoo.kernels.{op}: {name} is {t.dtype} but x is {x.dtype}; give the "
                                     "experts the tokens' dtype (model.to(dtype)) or run under torch.autocast")


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Differentiable grouped GEMM: out[rows of expert e] = x[rows of e] @ w[e].

    x [N, K] sorted by expert, w [E, K, M], offsets [E] cumulative row ends (any integer dtype) -> [N, M].
    """
    x, w = ops.autocast_inputs(x.device.type, x, w)  # before choosing the backend: it runs the autocast dtype
    _check_dtypes("grouped_mm", x, w=w)
    name = resolve("grouped_mm", backend, x)
    return ops.grouped_mm(x, w, offsets.to(torch.int32).contiguous(), name)


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
    """Routed expert MLP: y[t] = sum over assignments a of token t: weight[a] * FFN_{expert[a]}(x[t]).

    FFN_e(x) = act(x W1_e + b1_e) W2_e + b2_e, or for glu=True act(x A_e) * (x B_e) W2_e + b2_e with W1_e = [A_e, B_e].
    Shapes: x [T, d], token_index/expert_index/weight [A], w1 [E, d, h] (or [E, d, 2h]), w2 [E, h, d_out],
    b1 [E, h or 2h], b2 [E, d_out] -> y [T, d_out]. Differentiable in x, weight, w1, w2, b1, b2; an expert with no
    assignment costs nothing and gets zero gradient.
    """
    activation = canonical_activation(activation)  # the backends know the canonical names only
    num_experts, d, width = w1.shape
    if glu and width % 2:
        raise ValueError(f"glu=True needs w1 with an even number of columns (a and b halves); got {width}")
    if x.shape[-1] != d or tuple(w2.shape[:2]) != (num_experts, width // 2 if glu else width):
        raise ValueError(f"shapes do not chain: x {tuple(x.shape)}, w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}")
    x, weight, w1, w2, b1, b2 = ops.autocast_inputs(x.device.type, x, weight, w1, w2, b1, b2)
    _check_dtypes("moe_mlp", x, w1=w1, w2=w2, b1=b1, b2=b2)
    name = resolve("moe_mlp", backend, x)
    return ops.moe_mlp(x, token_index, expert_index, weight, w1, w2, b1, b2, activation, glu, name)


__all__ = [
    "ACTIVATIONS",
    "DtypeMismatchError",
    "GroupedMMKernels",
    "MoEMLPKernels",
    "apply_activation",
    "available_backends",
    "grouped_mm",
    "moe_mlp",
    "register_backend",
    "sort_by_expert",
]
