"""MMoE (Ma et al., KDD 2018, "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts").

    f^t(x) = sum_{e=1}^{E} g^t(x)_e f_e(x),   g^t(x) = softmax(W_{g^t} x),   y_t = h^t(f^t(x))

E shared experts f_e, one softmax gate g^t and one tower h^t per task (per task and domain with a domain column).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from moezoo.moe import RoutingRecord, StackedMLP

from .gates import DomainGates, DomainTowers, module_key


class MMoENet(nn.Module):
    """Shapes: v [B, d], domain [B] -> logits [B, T]."""

    def __init__(self, in_dim: int, tasks: Sequence[str], domains: Sequence[str], num_experts: int = 8,
                 expert_hidden: Sequence[int] = (64,), tower_hidden: Sequence[int] = (32,), dropout: float = 0.0,
                 activation: str = "relu", batch_norm: bool = False):
        super().__init__()
        self.tasks = list(tasks)
        self.experts = StackedMLP(num_experts, in_dim, expert_hidden, activation, batch_norm, dropout)
        self.experts.record = RoutingRecord()  # the experts' usage by every task's gate, by task
        self.gates = nn.ModuleDict({module_key(t): DomainGates(in_dim, num_experts, domains, pool=self.experts.record,
                                                               task=i)
                                    for i, t in enumerate(self.tasks)})
        self.towers = DomainTowers(len(self.tasks), len(domains), self.experts.out_dim, tower_hidden, dropout)

    def forward(self, v: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        h = self.experts(v)
        reps = torch.stack([gate(v, h, domain) for gate in self.gates.values()])
        return self.towers(reps, domain)

