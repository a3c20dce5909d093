"""PLE / CGC (Tang et al., RecSys 2020, "Progressive Layered Extraction").

Level l has shared experts S^l and per-task experts T_t^l. Task t's gate mixes only S^l and T_t^l (CGC);
below the last level a shared gate mixes all of the level's experts and feeds the next level's shared experts:

    x_t^{l+1} = sum_{e in S^l u T_t^l} g_t^l(x_t^l)_e f_e(x^l_e),   x_s^{l+1} = sum_{e in all} g_s^l(x_s^l)_e f_e(x^l_e)

where expert e reads x_s^l if it is shared and x_t^l if it belongs to task t (x^0 = the features). One level is CGC.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from moezoo.moe import RoutingRecord, StackedMLP

from .gates import DomainGates, DomainTowers, module_key


class PLENet(nn.Module):
    """Shapes: v [B, d], domain [B] -> logits [B, T]. Experts of a level are ordered shared first, then per task."""

    def __init__(self, in_dim: int, tasks: Sequence[str], domains: Sequence[str], num_levels: int = 2,
                 num_shared: int = 2, num_specific: int = 2, expert_hidden: Sequence[int] = (64,),
                 tower_hidden: Sequence[int] = (32,), dropout: float = 0.0, activation: str = "relu",
                 batch_norm: bool = False):
        super().__init__()
        self.tasks = list(tasks)
        self.num_shared, self.num_specific = num_shared, num_specific
        num_tasks = len(self.tasks)
        num_experts = num_shared + num_tasks * num_specific
        self.experts, self.task_gates, self.shared_gates = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        dim = in_dim
        for level in range(num_levels):
            self.experts.append(StackedMLP(num_experts, dim, expert_hidden, activation, batch_norm, dropout))
            self.experts[-1].record = RoutingRecord()  # the level's experts' usage by every task's gate, by task
            self.task_gates.append(nn.ModuleDict({
                module_key(t): DomainGates(dim, num_experts, domains, allowed=self.allowed(i),
                                           pool=self.experts[-1].record, task=i)
                for i, t in enumerate(self.tasks)}))
            if level < num_levels - 1:
                self.shared_gates.append(DomainGates(dim, num_experts, ["shared"]))
            dim = self.experts[-1].out_dim
        self.towers = DomainTowers(num_tasks, len(domains), dim, tower_hidden, dropout)

    def allowed(self, task: int) -> list[int]:
        """The experts task ``task``'s gate may mix: the shared ones and its own."""
        start = self.num_shared + task * self.num_specific
        return [*range(self.num_shared), *range(start, start + self.num_specific)]

    def expert_inputs(self, shared: torch.Tensor, per_task: list[torch.Tensor]) -> torch.Tensor:
        """[E, B, d]: each expert's input (shared experts read the shared stream, task experts their task's)."""
        blocks = [shared.expand(self.num_shared, -1, -1)]
        blocks += [x.expand(self.num_specific, -1, -1) for x in per_task]
        return torch.cat(blocks)

    def forward(self, v: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        shared, per_task = v, [v] * len(self.tasks)
        for level, experts in enumerate(self.experts):
            h = experts(v) if level == 0 else experts(self.expert_inputs(shared[None], [x[None] for x in per_task]))
            gates = list(self.task_gates[level].values())
            new_tasks = [gate(x, h, domain) for gate, x in zip(gates, per_task)]
            if level < len(self.shared_gates):
                shared = self.shared_gates[level](shared, h, domain)
            per_task = new_tasks
        return self.towers(torch.stack(per_task), domain)

