"""Expert activations by name: the one registry of every expert bank and every kernel backend.

``ACTIVATIONS`` holds the canonical names (the Triton kernels mirror them one to one); ``ALIASES`` maps the other
names papers use onto them: ``swish`` is ``silu`` (x sigmoid(x); HoME's paper says Swish) and ``none`` is
``identity``. Banks store the canonical name, so every backend receives one it knows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "identity": lambda x: x,
}
ALIASES = {"swish": "silu", "none": "identity"}


def canonical_activation(name: str) -> str:
    """The registry's name for activation ``name`` (an alias resolved); a clear error lists the valid names."""
    canonical = ALIASES.get(name, name)
    if canonical not in ACTIVATIONS:
        aliases = ", ".join(f"{a} (= {c})" for a, c in ALIASES.items())
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}, or {aliases}")
    return canonical


def activation(name: str):
    """The activation function called ``name`` (a canonical name or an alias)."""
    return ACTIVATIONS[canonical_activation(name)]


def apply_activation(h: torch.Tensor, name: str, glu: bool) -> torch.Tensor:
    """act(h), or for a gated unit act(a) * b with h = [a, b] (SwiGLU is silu with glu=True)."""
    act = activation(name)
    if glu:
        a, b = h.chunk(2, dim=-1)
        return act(a) * b
    return act(h)
