"""Growing and freezing a trained MoE layer: continual learning without the old data (MoveGCL).

- ``add_experts(layer, count)`` appends ``count`` experts to a layer's stacked bank, each initialised as the mean of
  the existing experts, and the matching router rows (gate and noise gate) as the mean of the existing rows, so a
  new expert starts where the old ones agree and the router ranks it in the middle (MoveGCL's official code,
  github.com/tsinghua-fib-lab/MoveGCL ``continual_learning.py``: new expert = mean of the old experts, its router
  row the mean of theirs). The balancing state grows with it.
- ``freeze_experts(layer, experts)`` keeps the given experts' weights fixed while the rest of the layer trains: their
  gradient slices are zeroed by a hook (Adam's moments stay zero, so the update is zero), and ``after_optimizer_step``
  (``TaskModule`` calls it) puts their values back, which also undoes a decoupled weight decay. In a loop of your
  own, call ``moezoo.moe.after_optimizer_step(model)`` after each step, or give those parameters no weight decay.
- ``most_used_experts(counts)``: per label value (e.g. each old city), the expert with the largest load; the union
  is what MoveGCL freezes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .layer import MoE
from .parallel import stacked_expert_parameters


def _check(layer: MoE) -> None:
    router = layer.router
    if router.num_null_experts or router.expert_groups is not None:
        raise ValueError("add_experts: layers with null experts or expert groups cannot grow (their slots are fixed)")
    if getattr(layer.experts, "expert_shard", None) is not None:
        raise ValueError("add_experts: a bank sharded over ranks cannot grow; grow it before shard_experts")


@torch.no_grad()
def add_experts(layer: MoE, count: int = 1) -> list[int]:
    """Append ``count`` experts to ``layer`` (in place; see the module docstring); returns their indices."""
    if count < 1:
        raise ValueError(f"add_experts: count must be at least 1, got {count}")
    _check(layer)
    bank, router = layer.experts, layer.router
    old = bank.num_experts
    for name in stacked_expert_parameters(bank):
        param = bank.get_parameter(name)
        grown = torch.cat([param, param.mean(0, keepdim=True).expand(count, *param.shape[1:])])
        owner, _, leaf = name.rpartition(".")
        setattr(bank.get_submodule(owner), leaf, nn.Parameter(grown.clone(), requires_grad=param.requires_grad))
    bank.num_experts = old + count
    for gate_name in ("gate", "noise_gate"):
        gate = getattr(router, gate_name, None)
        if gate is None:
            continue
        weight = gate.weight
        rows = torch.cat([weight, weight.mean(0, keepdim=True).expand(count, -1)])
        new_gate = nn.Linear(gate.in_features, old + count, bias=False, device=weight.device, dtype=weight.dtype)
        new_gate.weight.copy_(rows)
        setattr(router, gate_name, new_gate)
    for buffer in ("expert_bias", "step_counts", "global_counts"):
        value = getattr(router, buffer)
        setattr(router, buffer, torch.cat([value, value.new_zeros(count)]))
    router.num_experts = router.num_slots = old + count
    if getattr(layer, "frozen_experts", None):
        freeze_experts(layer, layer.frozen_experts)  # re-register on the grown parameters
    return list(range(old, old + count))


def freeze_experts(layer: MoE, experts: list[int]) -> None:
    """Keep the weights of ``experts`` of ``layer`` fixed in training (see the module docstring)."""
    bank = layer.experts
    experts = sorted(set(int(e) for e in experts))
    if any(not 0 <= e < bank.num_experts for e in experts):
        raise ValueError(f"freeze_experts: experts {experts} outside 0..{bank.num_experts - 1}")
    for handle in getattr(layer, "_freeze_hooks", []):
        handle.remove()
    layer.frozen_experts = experts
    layer._freeze_hooks, layer._frozen_values = [], {}
    if not experts:
        return
    index = torch.tensor(experts)
    for name in stacked_expert_parameters(bank):
        param = bank.get_parameter(name)
        mask = torch.zeros(param.shape[0], *([1] * (param.ndim - 1)), dtype=param.dtype, device=param.device)
        mask[index] = 1.0
        layer._frozen_values[name] = param.detach()[index].clone()
        layer._freeze_hooks.append(param.register_hook(lambda grad, keep=1.0 - mask: grad * keep))


@torch.no_grad()
def restore_frozen_experts(model: nn.Module) -> None:
    """Put every frozen expert's saved weights back (after an optimizer step)."""
    for module in model.modules():
        values = getattr(module, "_frozen_values", None)
        if isinstance(module, MoE) and values:
            index = torch.tensor(module.frozen_experts)
            for name, value in values.items():
                param = module.experts.get_parameter(name)
                param[index.to(param.device)] = value.to(param.device, param.dtype)


def most_used_experts(counts: torch.Tensor) -> list[int]:
    """The union over label values (rows of ``counts`` [V, E], e.g. ``load_by_label``'s) of each value's most
    loaded expert; values never seen (all-zero rows) choose none."""
    seen = counts.sum(-1) > 0
    return sorted(set(counts[seen].argmax(-1).tolist()))
