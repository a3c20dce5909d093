"""The expert activations as Triton device functions, with their derivatives, for the GEMM epilogues.

The same functions as ``moezoo.kernels.activations`` (GELU is the exact erf form unless ``gelu_tanh``), computed in
fp32 on the accumulator. ``ACTIVATION_CODES`` maps the names to the constexpr the kernels branch on.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..activations import ACTIVATIONS

ACTIVATION_CODES = {"identity": 0, "relu": 1, "silu": 2, "gelu": 3, "gelu_tanh": 4}
assert set(ACTIVATION_CODES) == set(ACTIVATIONS), "every reference activation needs a Triton version"

_SQRT_HALF = tl.constexpr(0.7071067811865476)  # 1 / sqrt(2); jit code reads only constexpr globals
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)  # 1 / sqrt(2 pi)
_SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
_GELU_TANH_C = tl.constexpr(0.044715)


@triton.jit
def _tanh(u):
    # tanh(u) = 2 sigmoid(2u) - 1: tl has sigmoid on every backend and in the interpreter, not tanh
    return 2.0 * tl.sigmoid(2.0 * u) - 1.0


@triton.jit
def activate(x, ACT: tl.constexpr):
    """act(x) for fp32 ``x``."""
    if ACT == 1:
        return tl.maximum(x, 0.0)
    elif ACT == 2:
        return x * tl.sigmoid(x)
    elif ACT == 3:
        return 0.5 * x * (1.0 + tl.math.erf(x * _SQRT_HALF))
    elif ACT == 4:
        return 0.5 * x * (1.0 + _tanh(_SQRT_2_OVER_PI * (x + _GELU_TANH_C * x * x * x)))
    else:
        return x


@triton.jit
def activate_grad(x, ACT: tl.constexpr):
    """d act(x) / dx for fp32 ``x``."""
    if ACT == 1:
        return tl.where(x > 0.0, 1.0, 0.0)
    elif ACT == 2:
        s = tl.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    elif ACT == 3:
        # Phi(x) + x phi(x)
        return 0.5 * (1.0 + tl.math.erf(x * _SQRT_HALF)) + x * _INV_SQRT_2PI * tl.exp(-0.5 * x * x)
    elif ACT == 4:
        t = _tanh(_SQRT_2_OVER_PI * (x + _GELU_TANH_C * x * x * x))
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_C * x * x)
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
    else:
        return tl.full(x.shape, 1.0, tl.float32)
