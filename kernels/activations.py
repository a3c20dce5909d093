"""Expert activations by name, shared by every backend so that they compute the same function."""

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


def activation(name: str):
    """The activation function called ``name``; a clear error lists the valid names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def apply_activation(h: torch.Tensor, name: str, glu: bool) -> torch.Tensor:
    """act(h), or for a gated unit act(a) * b with h = [a, b] (SwiGLU is silu with glu=True)."""
    act = activation(name)
    if glu:
        a, b = h.chunk(2, dim=-1)
        return act(a) * b
    return act(h)
