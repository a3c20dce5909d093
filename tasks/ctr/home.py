"""HoME (Wang et al., Kuaishou 2024, arXiv 2408.05430, "HoME: Hierarchy of Multi-Gate Experts for Multi-Task
Learning at Kuaishou"). No official code was published; this follows the paper's description.

- Expert normalisation & Swish: every expert is Swish(BN(W v + b)) (``moezoo.moe.StackedMLP`` with batch_norm and
  the paper's name ``swish``, the registry's alias of ``silu``: x sigmoid(x)), so experts' outputs share one scale
  and no expert dies at zero the way ReLU experts collapse.
- Hierarchy mask, two levels. Tasks are grouped in categories (e.g. {click} and {purchase}).
  Meta level: global shared experts S^1 and one expert group C_c^1 per category, all reading v. Category c's meta
  gate mixes S^1 u C_c^1 into m_c; a global meta gate mixes all meta experts into m_s.
  Task level: shared experts S^2 read m_s, category experts C_c^2 read m_c, task experts T_t read m_{c(t)}; task t's
  gate sees only S^2 u C_{c(t)}^2 u T_t (the mask), the rest get weight 0.
- Feature gate: each expert e gets a private copy of its input, x_e = x * 2 sigmoid(x B_e A_e) with a low-rank
  B_e [d, r], A_e [r, d]; A_e starts at 0, so the gate starts at exactly 1 (identity) and learns to privatise.
- Self-gate: a residual next to a category's and a task's gated mixture, over its own specific experts (the
  category's meta experts, the task's experts): sum_e s_e f_e with s = sigmoid(x W_self) for one expert and
  softmax(x W_self) over several (the paper's rule, so the residual's weights sum to at most 1 as a gate's do).
  The global meta output mixes every meta expert and has no experts of its own: no self-gate
  (``global_self_gate: true`` adds one over the shared experts, moezoo's earlier form).
- What the gates read: the meta gates (and their self-gates) read the features v; the task level's gates read the
  input of the task's experts, its category's meta output m_{c(t)} (``task_gate_input: meta``), whose Swish(BN)
  scale lets the gate logits move; ``task_gate_input: features`` gives every gate v, moezoo's earlier form, with
  which the task gates stayed near uniform (review probe: task-gate logit std 0.13-0.20 against MMoE's 0.22-0.85).
With a domain column, each task gate and tower is per domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn

from moezoo.errors import MoezooError
from moezoo.moe import RoutingRecord, StackedMLP

from .gates import DomainGates, DomainTowers, module_key


class FeatureGate(nn.Module):
    """x_e = x * 2 sigmoid(x B_e A_e) for each of E experts (low rank r); identity at init (A_e = 0).

    Shapes: x [B, d] (shared) or [E, B, d] (per expert) -> [E, B, d].
    """

    def __init__(self, num_experts: int, dim: int, rank: int = 8):
        super().__init__()
        self.down = nn.Parameter(torch.randn(num_experts, dim, rank) / dim**0.5)  # B_e
        self.up = nn.Parameter(torch.zeros(num_experts, rank, dim))  # A_e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.expand(self.down.shape[0], -1, -1)
        return x * 2 * torch.sigmoid(torch.bmm(torch.bmm(x, self.down), self.up))


class SelfGate(nn.Module):
    """sum_{e in experts} s_e f_e, s = sigmoid(x W) for one expert, softmax(x W) over several: a residual over a
    gate's own specific experts. Shapes: x [B, d], expert_outputs [E, B, h] -> [B, h]."""

    def __init__(self, dim: int, experts: Sequence[int]):
        super().__init__()
        self.experts = list(experts)
        self.gate = nn.Linear(dim, len(self.experts))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.gate(x)  # [B, n]
        return torch.sigmoid(logits) if len(self.experts) == 1 else torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor, expert_outputs: torch.Tensor) -> torch.Tensor:
        weights = self.weights(x).to(expert_outputs.dtype)
        return torch.einsum("bn,nbh->bh", weights, expert_outputs[self.experts])


class HoMENet(nn.Module):
    """Shapes: v [B, d], domain [B] -> logits [B, T].

    Expert order per level: shared, then each category's group; the task level adds each task's group last.
    """

    def __init__(self, in_dim: int, tasks: Sequence[str], domains: Sequence[str],
                 categories: Sequence[Sequence[str]] | None = None, num_shared: int = 2, num_category: int = 2,
                 num_task: int = 1, expert_hidden: Sequence[int] = (64,), tower_hidden: Sequence[int] = (32,),
                 dropout: float = 0.0, feature_gate: bool = True, feature_gate_rank: int = 8,
                 self_gate: bool = True, global_self_gate: bool = False,
                 task_gate_input: Literal["meta", "features"] = "meta"):
        super().__init__()
        self.tasks = list(tasks)
        if task_gate_input not in ("meta", "features"):
            raise MoezooError(f"model.network.task_gate_input must be meta or features, got {task_gate_input!r}")
        self.task_gate_input = task_gate_input
        self.categories = [list(c) for c in categories] if categories else [[t] for t in self.tasks]
        self.category_of = self._category_of_each_task()
        num_cats = len(self.categories)
        self.num_shared, self.num_category, self.num_task = num_shared, num_category, num_task
        width = expert_hidden[-1]

        def bank(n, dim):
            return StackedMLP(n, dim, expert_hidden, "swish", batch_norm=True, dropout=dropout)

        # meta level
        num_meta = num_shared + num_cats * num_category
        self.meta_experts = bank(num_meta, in_dim)
        self.meta_feature_gate = FeatureGate(num_meta, in_dim, feature_gate_rank) if feature_gate else None
        self.meta_gates = nn.ModuleList(DomainGates(in_dim, num_meta, ["all"], allowed=self.meta_allowed(c))
                                        for c in range(num_cats))
        self.global_gate = DomainGates(in_dim, num_meta, ["all"])
        # task level
        num_level2 = num_meta + len(self.tasks) * num_task
        self.task_experts = bank(num_level2, width)
        self.task_experts.record = RoutingRecord()  # the task-level experts' usage by every task's gate, by task
        self.task_feature_gate = FeatureGate(num_level2, width, feature_gate_rank) if feature_gate else None
        task_gate_dim = width if task_gate_input == "meta" else in_dim
        self.task_gates = nn.ModuleDict({module_key(t): DomainGates(task_gate_dim, num_level2, domains,
                                                                    allowed=self.task_allowed(i),
                                                                    pool=self.task_experts.record, task=i)
                                         for i, t in enumerate(self.tasks)})
        if self_gate:
            self.meta_self_gates = nn.ModuleList(SelfGate(in_dim, self.category_experts(c)) for c in range(num_cats))
            self.global_self_gate = SelfGate(in_dim, range(num_shared)) if global_self_gate else None
            self.task_self_gates = nn.ModuleList(SelfGate(task_gate_dim, self.own_experts(i))
                                                 for i in range(len(self.tasks)))
        self.self_gate = self_gate
        self.towers = DomainTowers(len(self.tasks), len(domains), width, tower_hidden, dropout)

    def _category_of_each_task(self) -> list[int]:
        owner = {}
        for c, members in enumerate(self.categories):
            for task in members:
                if task not in self.tasks:
                    raise MoezooError(f"model.categories names task {task!r}; the data's tasks are "
                                     f"{', '.join(self.tasks)}")
                if task in owner:
                    raise MoezooError(f"model.categories puts task {task!r} in two categories")
                owner[task] = c
        missing = [t for t in self.tasks if t not in owner]
        if missing:
            raise MoezooError(f"model.categories leaves out task(s) {', '.join(missing)}")
        return [owner[t] for t in self.tasks]

    def category_experts(self, category: int) -> list[int]:
        start = self.num_shared + category * self.num_category
        return list(range(start, start + self.num_category))

    def own_experts(self, task: int) -> list[int]:
        start = self.num_shared + len(self.categories) * self.num_category + task * self.num_task
        return list(range(start, start + self.num_task))

    def meta_allowed(self, category: int) -> list[int]:
        """Category c's meta gate: the global shared experts and category c's."""
        return [*range(self.num_shared), *self.category_experts(category)]

    def task_allowed(self, task: int) -> list[int]:
        """Task t's gate: the shared experts, its category's and its own (the hierarchy mask)."""
        return [*self.meta_allowed(self.category_of[task]), *self.own_experts(task)]

    def forward(self, v: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        meta_in = self.meta_feature_gate(v) if self.meta_feature_gate is not None else v
        h1 = self.meta_experts(meta_in)
        meta = []
        for c, gate in enumerate(self.meta_gates):
            m = gate(v, h1, domain)
            meta.append(m + self.meta_self_gates[c](v, h1) if self.self_gate else m)
        shared = self.global_gate(v, h1, domain)
        if self.self_gate and self.global_self_gate is not None:
            shared = shared + self.global_self_gate(v, h1)
        # each task-level expert reads its kind's meta output
        inputs = [shared[None].expand(self.num_shared, -1, -1)]
        inputs += [m[None].expand(self.num_category, -1, -1) for m in meta]
        inputs += [meta[self.category_of[t]][None].expand(self.num_task, -1, -1) for t in range(len(self.tasks))]
        x2 = torch.cat(inputs)
        if self.task_feature_gate is not None:
            x2 = self.task_feature_gate(x2)
        h2 = self.task_experts(x2)
        reps = []
        for t, gate in enumerate(self.task_gates.values()):
            reads = meta[self.category_of[t]] if self.task_gate_input == "meta" else v
            r = gate(reads, h2, domain)
            reps.append(r + self.task_self_gates[t](reads, h2) if self.self_gate else r)
        return self.towers(torch.stack(reps), domain)

