"""Backend choice for moezoo.kernels: ``reference`` (torch) now; the Triton backend registers itself here."""

from __future__ import annotations

import os
from collections.abc import Callable

_BACKENDS: dict[str, dict[str, Callable]] = {}
_ENV = "MOEZOO_KERNEL_BACKEND"


def register_backend(name: str, **ops: Callable) -> None:
    """Make ``ops`` (op name -> function with the reference signature) available under backend ``name``."""
    _BACKENDS[name] = dict(ops)


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def resolve(op: str, backend: str | None = None) -> Callable:
    """The function implementing ``op`` in ``backend`` (default: $MOEZOO_KERNEL_BACKEND, else ``reference``)."""
    name = backend or os.environ.get(_ENV, "reference")
    if name not in _BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r} (from argument or ${_ENV}); valid: {available_backends()}")
    ops = _BACKENDS[name]
    return ops.get(op, _BACKENDS["reference"][op])
