"""Backend choice for moezoo.kernels: which backend's functions run an op, by name (``reference``, ``triton`` when
triton is installed, or ``auto``, which picks per call from the first tensor's device and dtype).

A backend is a set of plain functions per op (``GroupedMMKernels``, ``MoEMLPKernels``), registered here by name. The
torch.library ops (``ops.py``) take the resolved name as a string argument and look the functions up when they run,
so one op serves every backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import torch


class GroupedMMKernels(NamedTuple):
    """A backend's functions for ``moezoo::grouped_mm``, none differentiable (the op's autograd composes them).

    ``forward(x [N, K], w [E, K, M], offsets [E] int32) -> [N, M]`` (dx is ``forward`` on the transposed weights);
    ``weight_grad(x [N, K], grad [N, M], offsets) -> [E, K, M]`` (zero for an expert with no rows).
    """

    forward: Callable[..., torch.Tensor]
    weight_grad: Callable[..., torch.Tensor]


class MoEMLPKernels(NamedTuple):
    """A backend's functions for ``moezoo::moe_mlp``, none differentiable (the op's autograd composes them).

    ``forward(x, token_index, expert_index, weight, w1, w2, b1, b2, activation, glu) -> (y, saved)``: y [T, d] and
    the list of tensors its backward reads; ``saved_like(same arguments) -> saved`` with the shapes and dtypes only
    (for the op's fake kernel; it must not read data); ``backward(grad, saved, x, weight, w1, w2, b1, b2, activation,
    glu, needs) -> (dx, dweight, dw1, dw2, db1, db2)``, each None where ``needs`` (six bools, same order) is False.
    """

    forward: Callable[..., tuple[torch.Tensor, list[torch.Tensor]]]
    backward: Callable[..., tuple[torch.Tensor | None, ...]]
    saved_like: Callable[..., list[torch.Tensor]]


OPS = {"grouped_mm": GroupedMMKernels, "moe_mlp": MoEMLPKernels}
_BACKENDS: dict[str, dict[str, NamedTuple]] = {}
_CHECKS: dict[str, Callable[[torch.Tensor], str | None]] = {}
_AUTO: dict[str, tuple[str, ...]] = {}  # backend -> device types on which "auto" prefers it over reference
_UNAVAILABLE: dict[str, str] = {}  # known backend -> why it is not registered here
_ENV = "MOEZOO_KERNEL_BACKEND"


def register_backend(
    name: str,
    *,
    check: Callable[[torch.Tensor], str | None] | None = None,
    auto_devices: tuple[str, ...] = (),
    **ops: GroupedMMKernels | MoEMLPKernels,
) -> None:
    """Make ``ops`` (op name -> that op's functions, e.g. ``grouped_mm=GroupedMMKernels(...)``) available under
    backend ``name``; an op a backend does not supply runs on ``reference``.

    ``check(x)`` returns None when the backend runs on tensors like ``x`` (the op's first argument), else a one-line
    reason naming what can; ``auto_devices``: the device types on which backend ``auto`` picks ``name``.
    """
    for op, kernels in ops.items():
        if op not in OPS or not isinstance(kernels, OPS[op]):
            valid = ", ".join(f"{o}={k.__name__}(...)" for o, k in OPS.items())
            raise TypeError(f"register_backend({name!r}): {op}={type(kernels).__name__} is not one of {valid}")
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


def _auto(op: str, x: torch.Tensor) -> str:
    for name, devices in _AUTO.items():
        check = _CHECKS.get(name)
        if op in _BACKENDS.get(name, {}) and x.device.type in devices and not (check and check(x)):
            return name
    return "reference"


def resolve(op: str, backend: str | None, x: torch.Tensor) -> str:
    """The backend that runs ``op`` on tensors like ``x`` (the op's first argument): ``backend``, else
    $MOEZOO_KERNEL_BACKEND, else ``reference``; ``reference`` for an op the backend does not supply.

    ``auto`` picks a backend registered for ``x``'s device type that can run it (``triton`` on CUDA), else
    ``reference``. An unknown or unavailable backend, or one that cannot run ``x``, raises a one-line ValueError
    saying what can. Plain Python on names, devices and dtypes: torch.compile traces it.
    """
    name = backend or os.environ.get(_ENV, "reference")
    if name == "auto":
        return _auto(op, x)
    if name not in _BACKENDS:
        valid = f"valid: {available_backends()} or 'auto'"
        if name in _UNAVAILABLE:
            raise ValueError(f"kernel backend {name!r} is unavailable: {_UNAVAILABLE[name]}; {valid}")
        raise ValueError(f"unknown kernel backend {name!r} (from argument or ${_ENV}); {valid}")
    if op not in _BACKENDS[name]:
        return "reference"
    check = _CHECKS.get(name)
    reason = check(x) if check is not None else None
    if reason is not None:
        raise ValueError(f"kernel backend {name!r} cannot run {op} on {x.device.type} {x.dtype} tensors: {reason}")
    return name


def kernels(backend: str, op: str) -> GroupedMMKernels | MoEMLPKernels:
    """The functions of resolved backend ``backend`` for ``op`` (what the ops call when they run)."""
    return _BACKENDS[backend][op]
