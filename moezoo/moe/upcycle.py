"""Sparse upcycling: turn the dense FFNs of a trained model into MoE layers whose experts start as copies.

Komatsuzaki et al. 2023 ("Sparse Upcycling"), and MoE-LLaVA's "MoE-tuning" (Lin et al. 2024): after the dense
stages, the FFN of every other block becomes E experts, each a copy of the trained FFN, behind a new router. With
token choice whose weights are renormalised over the chosen experts (top-k, k > 1) and no token dropped, the
upcycled model computes exactly the dense model at first: sum_e w_e FFN(x) = FFN(x), sum_e w_e = 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from .builder import MoEArgs
from .experts import DenseMLP, GroupedMLP
from .layer import MoE


def upcycle(model: nn.Module, moe: MoEArgs, *, every: int = 2,
            select: Callable[[str, DenseMLP], bool] | None = None) -> list[str]:
    """Replace dense FFNs of ``model`` (``DenseMLP`` modules), in place, by MoE layers built from ``moe`` (its
    router; ``moe.num_experts`` copies of the FFN as the experts) and return the replaced modules' names.

    Which FFNs: ``select(name, module)`` where given, else every ``every``-th ``DenseMLP`` in module order (the
    ``every``-th, 2 * ``every``-th, ...: blocks 1, 3, 5, ... for 2, as ``MoETransformer``'s ``moe_every``). A
    ``DenseMLP`` that is already an MoE's shared expert is never replaced. The experts keep the FFN's width, device
    and dtype (``moe.expert_hidden_ratio`` and ``moe.num_shared_experts`` do not apply: the copies are the FFN); the
    router is new, on the FFN's device.
    """
    if every < 1:
        raise ValueError(f"upcycle: every={every} must be a positive integer")
    shared = {id(m.shared_experts) for m in model.modules() if isinstance(m, MoE) and m.shared_experts is not None}
    dense = [(name, m) for name, m in model.named_modules() if isinstance(m, DenseMLP) and id(m) not in shared]
    if select is None:
        chosen = [(name, m) for i, (name, m) in enumerate(dense) if (i + 1) % every == 0]
    else:
        chosen = [(name, m) for name, m in dense if select(name, m)]
    for name, ffn in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        dim = ffn.fc1.in_features
        router = moe.build_router(dim).to(ffn.fc1.weight.device)
        router.gate.to(dtype=ffn.fc1.weight.dtype)  # its load counters and balancing bias stay float32
        experts = GroupedMLP.from_dense(ffn, moe.num_experts, backend=moe.kernel_backend)
        setattr(parent, attr, MoE(dim, router, experts))
    return [name for name, _ in chosen]
