"""Task gates and towers that a domain column can specialise (multi-domain MMoE / PLE / HoME).

Each (task, domain) pair has its own gate, a ``GatedMixture`` over a ``SoftRouter`` from the MoE core, so every gate
logs its expert usage under its own name (``gates.<task>.<domain>``): which experts each task and domain uses.
A sample goes through the gate and the tower of its own domain, the way multi-domain MMoE/PLE are usually run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from moezoo.moe import GatedMixture, RoutingRecord, SoftRouter, StackedMLP


def module_key(name: str) -> str:
    """A name usable as an nn.ModuleDict key (no dots)."""
    return str(name).replace(".", "_") or "_"


class DomainGates(nn.Module):
    """One soft gate per domain over the same experts; ``allowed`` restricts them (a hierarchy mask). ``pool`` and
    ``task``: the experts' record that counts the usage of every task's gates by task (``GatedMixture``'s pool).

    Shapes: gate_input [B, d], expert_outputs [E, B, h], domain [B] long -> [B, h].
    """

    def __init__(self, dim: int, num_experts: int, domains: Sequence[str], allowed: Sequence[int] | None = None,
                 pool: RoutingRecord | None = None, task: int | None = None):
        super().__init__()
        groups = None if allowed is None else [list(allowed)]
        self.allowed = None if allowed is None else list(allowed)
        labels = None if task is None else {"task": task}
        self.domains = nn.ModuleDict({
            module_key(d): GatedMixture(SoftRouter(dim, num_experts, expert_groups=groups), pool=pool,
                                        pool_labels=labels)
            for d in domains})

    def forward(self, gate_input: torch.Tensor, expert_outputs: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        gates = list(self.domains.values())
        if len(gates) == 1:
            return gates[0](gate_input, expert_outputs)
        out = expert_outputs.new_zeros(expert_outputs.shape[1:])
        for d, gate in enumerate(gates):
            rows = (domain == d).nonzero().squeeze(1)
            if rows.numel():
                out = out.index_copy(0, rows, gate(gate_input[rows], expert_outputs[:, rows]))
        return out


class DomainTowers(nn.Module):
    """Per task, one MLP tower per domain giving the task's logit; each sample uses its domain's tower.

    Shapes: inputs [T, B, h] (each task's representation), domain [B] long -> logits [B, T].
    """

    def __init__(self, num_tasks: int, num_domains: int, in_dim: int, hidden: Sequence[int], dropout: float = 0.0):
        super().__init__()
        self.num_domains = num_domains
        self.towers = nn.ModuleList(StackedMLP(num_domains, in_dim, [*hidden, 1], activation="relu", dropout=dropout,
                                               output_layer=True) for _ in range(num_tasks))

    def forward(self, inputs: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        logits = []
        for task, tower in enumerate(self.towers):
            out = tower(inputs[task]).squeeze(-1)  # [D, B]
            logits.append(out[0] if self.num_domains == 1 else out.gather(0, domain.unsqueeze(0)).squeeze(0))
        return torch.stack(logits, dim=-1)
