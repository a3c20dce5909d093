"""Backend choice for moezoo.kernels: ``reference`` (torch), ``triton`` (registered when triton is installed), and
``auto``, which picks per call from the first tensor's device and dtype."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

_BACKENDS: dict[str, dict[str, Callable]] = {}
_CHECKS: dict[str, Callable[[torch.Tensor], str | None]] = {}
_AUTO: dict[str, tuple[str, ...]] = {}  # backend -> device types on which "auto" prefers it over reference
_UNAVAILABLE: dict[str, str] = {}  # known backend -> why it is not registered here
_ENV = "MOEZOO_KERNEL_BACKEND"


def register_backend(
    name: str,
    *,
    check: Callable[[torch.Tensor], str | None] | None = None,
    auto_devices: tuple[str, ...] = (),
    **ops: Callable,
) -> None:
    """Make ``ops`` (op name -> function with the reference signature) available under backend ``name``.

    ``check(x)`` returns None when the backend runs on tensors like ``x`` (the op's first argument), else a one-line
    reason naming what can; ``auto_devices``: the device types on which backend ``auto`` picks ``name``.
    """
    _BACKENDS[name] = dict(ops)
    _UNAVAILABLE.pop(name, None)
    if check is not None:
        _CHECKS[name] = check
    if auto_devices:
        _AUTO[name] = tuple(auto_devices)


def mark_unavailable(name: str, reason: str) -> None:
    """Record that backend ``name`` exists but cannot be registered on this machine, so asking for it says why."""
    _UNAVAILABLE[name] = reason


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def _checked(name: str, op: str, fn: Callable) -> Callable:
    check = _CHECKS.get(name)
    if check is None:
        return fn

    def run(x: torch.Tensor, *args, **kwargs):
        reason = check(x)
        if reason is not None:
            raise ValueError(f"kernel backend {name!r} cannot run {op} on {x.device.type} {x.dtype} tensors: {reason}")
        return fn(x, *args, **kwargs)

    return run


def _auto(op: str) -> Callable:
    def run(x: torch.Tensor, *args, **kwargs):
        for name, devices in _AUTO.items():
            check = _CHECKS.get(name)
            if name in _BACKENDS and op in _BACKENDS[name] and x.device.type in devices and not (check and check(x)):
                return _BACKENDS[name][op](x, *args, **kwargs)
        return _BACKENDS["reference"][op](x, *args, **kwargs)

    return run


def resolve(op: str, backend: str | None = None) -> Callable:
    """The function implementing ``op`` in ``backend`` (default: $MOEZOO_KERNEL_BACKEND, else ``reference``).

    ``auto`` picks per call: a backend registered for the tensors' device type that can run them (``triton`` on
    CUDA), else ``reference``. A backend that cannot run the given tensors raises a ValueError saying what can.
    """
    name = backend or os.environ.get(_ENV, "reference")
    if name == "auto":
        return _auto(op)
    if name not in _BACKENDS:
        valid = f"valid: {available_backends()} or 'auto'"
        if name in _UNAVAILABLE:
            raise ValueError(f"kernel backend {name!r} is unavailable: {_UNAVAILABLE[name]}; {valid}")
        raise ValueError(f"unknown kernel backend {name!r} (from argument or ${_ENV}); {valid}")
    ops = _BACKENDS[name]
    if op not in ops:
        return _BACKENDS["reference"][op]
    return _checked(name, op, ops[op])
