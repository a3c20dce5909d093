"""The MoE layer: a router and an expert bank, plus optional always-on shared experts."""

from __future__ import annotations

import torch
import torch.nn as nn

from .record import RoutingRecord


class MoE(nn.Module):
    """y = sum_{e in route(x)} g_e(x) * expert_e(x) (+ shared(x)).

    Takes tokens x [..., d] and returns [..., d_out]. Keywords some families need and others ignore:
    ``router_input`` [..., d_r] (what the router sees, when it differs from x), ``router_context`` [..., d_c]
    (features the router sees next to x or ``router_input``: it reads their concatenation, so its gate takes
    d + d_c inputs; MoveGCL's city and mobility features, TrajMoE's spatial encoding), ``group`` [...] (a group id
    per token restricting its experts; -1: not routed), ``condition`` (per-sample information for the router).

    Every real forward in training mode records the router's aux losses on this layer (collected and cleared by
    ``moezoo.moe.aux_loss(model)``; those of its latest ``record.max_pending`` forwards wait, older ones are dropped);
    a recomputation during backward (activation checkpointing) records nothing. Routing statistics of the last
    forward are kept for ``routing_stats``. Under ``torch.autocast`` the experts compute in the region's dtype and the
    router in float32 (``moezoo.moe.precision``). Under expert parallelism (``moezoo.moe.parallel``) ``dispatch``
    sends each assignment to the rank that holds its expert; by default the bank runs on this process.
    """

    def __init__(self, dim: int, router: nn.Module, experts: nn.Module, shared_experts: nn.Module | None = None):
        super().__init__()
        self.dim = dim
        self.router = router
        self.experts = experts
        self.shared_experts = shared_experts
        self.record = RoutingRecord()
        self.dispatch = None  # None: the bank runs here; moezoo.moe.parallel.shard_experts sets an all-to-all

    def forward(self, x: torch.Tensor, *, router_input: torch.Tensor | None = None,
                router_context: torch.Tensor | None = None, group: torch.Tensor | None = None,
                condition=None) -> torch.Tensor:
        lead = x.shape[:-1]
        tokens = x.reshape(-1, x.shape[-1])
        seen = tokens if router_input is None else router_input.reshape(-1, router_input.shape[-1])
        if router_context is not None:
            context = router_context.reshape(-1, router_context.shape[-1])
            if context.shape[0] != seen.shape[0]:
                raise ValueError(f"router_context has {context.shape[0]} tokens but x has {seen.shape[0]}")
            seen = torch.cat([seen, context.to(seen.dtype)], dim=-1)
        if seen.shape[0] != tokens.shape[0]:
            raise ValueError(f"router_input has {seen.shape[0]} tokens but x has {tokens.shape[0]}")
        routing = self.router(seen, group=None if group is None else group.reshape(-1), condition=condition)
        y = self.experts(tokens, routing) if self.dispatch is None else self.dispatch(tokens, routing, self.experts)
        if self.shared_experts is not None:
            y = y + self.shared_experts(tokens)
        self.record.add(routing, training=self.training)
        return y.reshape(*lead, y.shape[-1])
