"""moezoo.kernels.triton: the Triton backend of moezoo.kernels (ScatterMoE-style fused gather / scatter GEMMs).

- ``grouped_mm.py``: the grouped GEMM over expert-sorted rows and its weight gradient (``moezoo::grouped_mm``).
- ``moe_mlp.py``: the routed expert MLP, forward and backward (``moezoo::moe_mlp``; equations in its docstring).
- kernels: ``scatter_gemm.py`` (gathered/scattered grouped GEMM with activation epilogues), ``group_xty.py``
  (per-expert weight gradient), ``segment.py`` (token-major reductions), ``activations.py``, ``configs.py``.

Importing this package imports no Triton: ``register()`` (called by ``moezoo.kernels``) registers functions that
import the kernels, which decorates them, at their first call. Whether they run compiled or in Triton's CPU
interpreter is decided then, by ``TRITON_INTERPRET`` (compiled on CUDA tensors; interpreted on CPU tensors, fp32 and
fp16 only: the interpreter computes bfloat16 wrongly).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable

import torch

from ..dispatch import GroupedMMKernels, MoEMLPKernels, mark_unavailable, register_backend

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CONFIGS = __name__ + ".configs"


def installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether the kernels run in Triton's CPU interpreter: fixed when they are first imported (decorated)."""
    configs = sys.modules.get(_CONFIGS)
    if configs is not None:
        return configs.INTERPRET
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def unavailable_reason(x: torch.Tensor) -> str | None:
    """Why the Triton backend cannot run on tensors like ``x`` (None when it can): one line naming what can."""
    if x.dtype not in SUPPORTED_DTYPES:
        return f"it supports {', '.join(str(d) for d in SUPPORTED_DTYPES)}; use backend='reference' for {x.dtype}"
    if x.device.type not in ("cuda", "cpu"):
        return f"it runs on cuda (or on cpu under TRITON_INTERPRET=1), not {x.device.type}; use backend='reference'"
    if interpreting():
        if x.dtype == torch.bfloat16:
            return ("Triton's interpreter (TRITON_INTERPRET=1) computes bfloat16 wrongly (it stores it as uint16); "
                    "use float32 or float16 there, backend='reference', or a GPU without the interpreter")
        return None
    if x.device.type == "cpu":
        return ("it runs on cuda; on cpu use backend='reference' (or 'auto'), or set TRITON_INTERPRET=1 before "
                "importing triton to run its kernels in the (slow) CPU interpreter")
    return None


def _lazy(module: str, name: str) -> Callable:
    """``module.name`` (a module of this package), imported at the first call."""

    def call(*args):
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)(*args)

    call.__qualname__ = f"{module}.{name}"
    return call


def register() -> None:
    """Register backend ``triton`` (picked by ``auto`` on CUDA) when the triton package is installed."""
    if not installed():
        mark_unavailable("triton", "the triton package is not installed (pip install triton; Linux x86_64 + CUDA)")
        return
    register_backend(
        "triton", check=unavailable_reason, auto_devices=("cuda",),
        grouped_mm=GroupedMMKernels(*(_lazy("grouped_mm", f) for f in GroupedMMKernels._fields)),
        moe_mlp=MoEMLPKernels(*(_lazy("moe_mlp", f) for f in MoEMLPKernels._fields)),
    )
