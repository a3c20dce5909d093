"""Precision: routers in float32 under autocast, and diffusers' layerwise casting reaching the expert banks.

- Mixed precision (``torch.autocast``, Lightning's ``bf16-mixed``): the expert banks compute in the region's dtype
  (``moezoo.kernels`` casts at its ops, as autocast does for nn.Linear) while the routers score the experts in
  float32, gate matmul included (``router_precision``): bfloat16 keeps 8 bits of mantissa, so rounded logits tie and
  flip top-k choices and the balancing losses see coarse probabilities. Switch Transformer's "selective precision"
  (Fedus et al. 2022, sec. 2.4) and DeepSeek-V3's gate do the same; the gate is d x E, negligible next to the experts.
- diffusers' ``ModelMixin.enable_layerwise_casting`` (weights stored in a low-precision dtype, cast up for each
  forward) hooks only the layer types it knows (nn.Linear, convolutions, nn.Embedding), so banks whose stacked
  weights are their own parameters stay in full precision: most of an MoE model's weights.
  ``enable_expert_layerwise_casting`` puts diffusers' own hook (``apply_layerwise_casting_hook``) on those banks, with
  the same skip rules; ``ExpertLayerwiseCasting`` makes a ``ModelMixin``'s ``enable_layerwise_casting`` call it.
"""

from __future__ import annotations

import re
from contextlib import nullcontext

import torch
import torch.nn as nn

from moezoo.kernels.ops import autocast_enabled

from .experts import GroupedMLP
from .stacked import RoutedStackedMLP

# banks whose stacked weights are their own parameters and that hold no norm layer (a hook casts the whole module)
LAYERWISE_CAST_BANKS = (GroupedMLP, RoutedStackedMLP)


def router_precision(x: torch.Tensor):
    """A context in which ``x``'s device computes without autocast: what a router runs in, on float32 copies of its
    inputs (a no-op outside an autocast region)."""
    if autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return nullcontext()


def _skip_patterns(model: nn.Module, skip_modules_pattern) -> tuple[str, ...]:
    # as ModelMixin.enable_layerwise_casting resolves them
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    patterns = tuple(DEFAULT_SKIP_MODULES_PATTERN if skip_modules_pattern is None else skip_modules_pattern)
    for extra in (getattr(model, "_keep_in_fp32_modules", None), getattr(model, "_skip_layerwise_casting_patterns",
                                                                           None)):
        patterns += tuple(extra or ())
    return patterns


def enable_expert_layerwise_casting(model: nn.Module, storage_dtype: torch.dtype, compute_dtype: torch.dtype,
                                    skip_modules_pattern=None, skip_modules_classes=None,
                                    non_blocking: bool = False) -> list[str]:
    """Store the stacked weights of ``model``'s expert banks (``LAYERWISE_CAST_BANKS``) in ``storage_dtype`` and cast
    them to ``compute_dtype`` for each forward, with diffusers' ``LayerwiseCastingHook``; returns the banks' names.

    The arguments are ``ModelMixin.enable_layerwise_casting``'s, and so are the skip rules: a bank is skipped when
    its name or an enclosing module's matches a pattern (None: diffusers' defaults, plus the model's
    ``_keep_in_fp32_modules`` and ``_skip_layerwise_casting_patterns``) or is one of ``skip_modules_classes``.
    """
    from diffusers.hooks.layerwise_casting import apply_layerwise_casting_hook

    patterns = _skip_patterns(model, skip_modules_pattern)
    classes = tuple(skip_modules_classes or ())
    hooked = []

    def visit(module: nn.Module, name: str) -> None:
        if isinstance(module, classes) or any(re.search(pattern, name) for pattern in patterns):
            return
        if isinstance(module, LAYERWISE_CAST_BANKS):
            apply_layerwise_casting_hook(module, storage_dtype, compute_dtype, non_blocking)
            hooked.append(name)
            return
        for child_name, child in module.named_children():
            visit(child, f"{name}.{child_name}" if name else child_name)

    visit(model, "")
    return hooked


class ExpertLayerwiseCasting:
    """Mixin for a diffusers ``ModelMixin`` holding moezoo expert banks (listed before ``ModelMixin``): its
    ``enable_layerwise_casting`` also casts the banks' stacked weights (``enable_expert_layerwise_casting``)."""

    def enable_layerwise_casting(self, storage_dtype: torch.dtype = torch.float8_e4m3fn,
                                 compute_dtype: torch.dtype | None = None, skip_modules_pattern=None,
                                 skip_modules_classes=None, non_blocking: bool = False) -> None:
        compute_dtype = compute_dtype or self.dtype  # read before any weight is cast, as diffusers would
        copy = None if skip_modules_pattern is None else tuple(skip_modules_pattern)  # diffusers extends a list
        super().enable_layerwise_casting(storage_dtype, compute_dtype, copy, skip_modules_classes, non_blocking)
        enable_expert_layerwise_casting(self, storage_dtype, compute_dtype, skip_modules_pattern,
                                        skip_modules_classes, non_blocking)
