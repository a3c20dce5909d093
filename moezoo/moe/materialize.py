"""Materialising a model built on the meta device: ``to_empty``, then the buffers no state dict holds.

A large model is built with ``device="meta"`` (nothing allocated), moved with ``to_empty`` and then loaded or
upcycled. ``to_empty`` leaves every tensor uninitialised; parameters and persistent buffers come back from the state
dict, but non-persistent ones (a router's expert-group mask and step counts) do not, so each module that has them
recomputes them in ``init_non_persistent_buffers()`` (timm's name for the same step).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def init_non_persistent_buffers(module: nn.Module) -> nn.Module:
    """Call ``init_non_persistent_buffers()`` on ``module`` and every submodule that defines it; returns ``module``."""
    for sub in module.modules():
        init = getattr(sub, "init_non_persistent_buffers", None)
        if callable(init):
            init()
    return module


def materialize(module: nn.Module, device: torch.device | str, *, reset_parameters: bool = False) -> nn.Module:
    """``module.to_empty(device)`` with its non-persistent buffers recomputed; with ``reset_parameters`` every
    submodule that has ``reset_parameters()`` also re-initialises its parameters (for a model trained from scratch
    rather than loaded). Returns ``module``, ready for ``load_state_dict``."""
    module.to_empty(device=device)
    if reset_parameters:
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
    return init_non_persistent_buffers(module)
