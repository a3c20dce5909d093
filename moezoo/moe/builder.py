"""MoEArgs: the arguments of an MoE feed-forward layer as one small dataclass (what configs set), and its builder."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from .experts import DenseMLP, GroupedMLP
from .layer import MoE
from .routers import ExpertChoiceRouter, TopKRouter, TopPRouter

ROUTERS = {"top_k": TopKRouter, "expert_choice": ExpertChoiceRouter, "top_p": TopPRouter}


@dataclass
class MoEArgs:
    """An MoE FFN: ``num_experts`` MLP experts behind a router, plus ``num_shared_experts`` always-on ones.

    router: ``top_k`` (uses ``k`` and optional ``capacity_factor``), ``expert_choice`` (``capacity_factor``, default
    1.0) or ``top_p`` (``p``, and ``dynamic_loss_weight``: the weight of its entropy loss, None for the paper's 1e-4).
    ``expert_hidden_ratio`` scales each routed expert's hidden width relative to the dense FFN it replaces (0.5
    halves it, as fine-grained and ProMoE experts do). ``router_context_dim``: the width of the ``router_context``
    features the layer's router reads next to each token (``MoE.forward``); ``noise``: ``learned`` for noisy top-k
    gating (``Router``).
    """

    num_experts: int = 8
    router: Literal["top_k", "expert_choice", "top_p"] = "top_k"
    k: int = 2
    capacity_factor: float | None = None
    p: float = 0.4
    score: Literal["softmax", "sigmoid", "linear"] = "softmax"
    num_null_experts: int = 0
    num_shared_experts: int = 0
    expert_hidden_ratio: float = 1.0
    activation: str = "gelu"
    glu: bool = False
    balance_loss_weight: float = 0.01
    global_balance_loss_weight: float = 0.0
    z_loss_weight: float = 0.0
    dynamic_loss_weight: float | None = None
    bias_update_rate: float = 0.0
    expert_groups: list[list[int]] | None = None
    kernel_backend: str | None = None
    router_context_dim: int = 0
    noise: Literal["none", "learned"] = "none"
    extra_router_args: dict = field(default_factory=dict)

    def build_router(self, dim: int) -> nn.Module:
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; valid: {', '.join(ROUTERS)}")
        common = dict(
            score=self.score, expert_groups=self.expert_groups, num_null_experts=self.num_null_experts,
            balance_loss_weight=self.balance_loss_weight, global_balance_loss_weight=self.global_balance_loss_weight,
            z_loss_weight=self.z_loss_weight, bias_update_rate=self.bias_update_rate, noise=self.noise,
            **self.extra_router_args,
        )
        if self.router != "top_p" and self.dynamic_loss_weight:
            raise ValueError(f"dynamic_loss_weight={self.dynamic_loss_weight} is the top-p router's entropy loss; "
                             f"router {self.router!r} has none (set router: top_p, or leave it unset)")
        if self.router == "top_k":
            return TopKRouter(dim, self.num_experts, self.k, capacity_factor=self.capacity_factor, **common)
        if self.router == "expert_choice":
            return ExpertChoiceRouter(dim, self.num_experts, self.capacity_factor or 1.0, **common)
        if self.dynamic_loss_weight is not None:
            common["dynamic_loss_weight"] = self.dynamic_loss_weight
        return TopPRouter(dim, self.num_experts, self.p, **common)

    def build(self, dim: int, hidden: int, router_dim: int | None = None, *, device=None, dtype=None) -> MoE:
        """The MoE layer replacing a dense FFN of width ``hidden`` on tokens of width ``dim``.

        ``device``/``dtype``: of every parameter (``device="meta"`` allocates nothing). The router's gate takes
        ``dtype`` so that it reads the tokens as they come; its load counters and balancing bias stay float32.
        """
        dd = dict(device=device, dtype=dtype)
        expert_hidden = max(1, round(hidden * self.expert_hidden_ratio))
        experts = GroupedMLP(self.num_experts, dim, expert_hidden, activation=self.activation, glu=self.glu,
                             backend=self.kernel_backend, **dd)
        shared = None
        if self.num_shared_experts > 0:
            shared = DenseMLP(dim, expert_hidden * self.num_shared_experts, activation=self.activation, glu=self.glu,
                              **dd)
        with torch.device(device) if device is not None else nullcontext():
            router = self.build_router((router_dim or dim) + self.router_context_dim)
        if dtype is not None:
            router.gate.to(dtype=dtype)
        return MoE(dim, router, experts, shared)

