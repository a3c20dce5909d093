"""GatedMixture: a gate that mixes outputs of experts computed elsewhere (shared by several gates, as in MMoE)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .record import RoutingRecord
from .routers import Router


class GatedMixture(nn.Module):
    """y_b = sum_e g_{b,e} h_{e,b}: the router's weights over precomputed expert outputs.

    In multi-gate models (MMoE, PLE, HoME) every expert runs once and each task's gate mixes the same outputs, so
    the gate does not own the experts as ``MoE`` does. It records its Routing like an MoE layer (aux losses,
    statistics, load), so ``aux_loss`` / ``routing_stats`` / the load heatmaps see it.

    Shapes: gate_input [B, d], expert_outputs [E, B, h] (all of the router's experts), group [B] optional;
    returns [B, h].
    """

    def __init__(self, router: Router):
        super().__init__()
        self.router = router
        self.record = RoutingRecord()

    def forward(self, gate_input: torch.Tensor, expert_outputs: torch.Tensor, *,
                group: torch.Tensor | None = None) -> torch.Tensor:
        routing = self.router(gate_input, group=group)
        self.record.add(routing, training=self.training)
        if routing.soft:  # dense weights: one batched contraction
            return torch.einsum("be,ebh->bh", routing.combine_weights().to(expert_outputs.dtype), expert_outputs)
        weight = routing.weight.to(expert_outputs.dtype).unsqueeze(-1)
        picked = expert_outputs[routing.expert_index, routing.token_index]  # [A, h]
        out = expert_outputs.new_zeros(expert_outputs.shape[1:])
        return out.index_add(0, routing.token_index, weight * picked)
