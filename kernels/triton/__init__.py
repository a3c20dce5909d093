"""moezoo.kernels.triton: the Triton backend of moezoo.kernels (ScatterMoE-style fused gather / scatter GEMMs).

- ``grouped_mm.py``: ``GroupedMM``, the grouped GEMM over expert-sorted rows as one autograd op.
- ``moe_mlp.py``: ``MoEMLP``, the routed expert MLP as one autograd op (design and equations in its docstring).
- kernels: ``scatter_gemm.py`` (gathered/scattered grouped GEMM with activation epilogues), ``group_xty.py``
  (per-expert weight gradient), ``segment.py`` (token-major reductions), ``activations.py``, ``configs.py``.

Importing this package imports no Triton: ``register()`` (called by ``moezoo.kernels``) registers lazy wrappers, and
the kernels are imported, and decorated, at their first call. Whether they run compiled or in Triton's CPU
interpreter is decided then, by ``TRITON_INTERPRET`` (compiled on CUDA tensors; interpreted on CPU tensors, fp32 and
fp16 only: the interpreter computes bfloat16 wrongly).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

from ..dispatch import mark_unavailable, register_backend

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


def _grouped_mm(x, w, offsets):
    from .grouped_mm import grouped_mm

    return grouped_mm(x, w, offsets)


def _moe_mlp(x, token_index, expert_index, weight, w1, w2, b1=None, b2=None, activation="gelu", glu=False):
    from .moe_mlp import moe_mlp

    return moe_mlp(x, token_index, expert_index, weight, w1, w2, b1, b2, activation, glu)


def register() -> None:
    """Register backend ``triton`` (picked by ``auto`` on CUDA) when the triton package is installed."""
    if not installed():
        mark_unavailable("triton", "the triton package is not installed (pip install triton; Linux x86_64 + CUDA)")
        return
    register_backend("triton", check=unavailable_reason, auto_devices=("cuda",), grouped_mm=_grouped_mm,
                     moe_mlp=_moe_mlp)
