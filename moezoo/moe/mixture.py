"""GatedMixture: a gate that mixes outputs of experts computed elsewhere (shared by several gates, as in MMoE)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from .layer import RecomputedAuxGradient
from .record import RoutingRecord
from .routers import Router


class GatedMixture(nn.Module):
    """y_b = sum_e g_{b,e} h_{e,b}: the router's weights over precomputed expert outputs.

    In multi-gate models (MMoE, PLE, HoME) every expert runs once and each task's gate mixes the same outputs, so
    the gate does not own the experts as ``MoE`` does. It records its Routing like an MoE layer (aux losses,
    statistics, load), so ``aux_loss`` / ``routing_stats`` / the load heatmaps see it.

    ``pool`` (a record owned by the shared experts, e.g. ``experts.record = RoutingRecord()``) with ``pool_labels``
    (constant ids of this gate, e.g. ``{"task": t}``) also counts this gate's routing into that record under those
    labels, so the load by label of the experts shows which experts each task's gate uses, and its NMI
    (``count_pooled``).

    Shapes: gate_input [B, d], expert_outputs [E, B, h] (all of the router's experts), group [B] optional;
    returns [B, h].
    """

    def __init__(self, router: Router, pool: RoutingRecord | None = None,
                 pool_labels: Mapping[str, int] | None = None):
        super().__init__()
        self.router = router
        self.record = RoutingRecord()
        self.pool, self.pool_labels = pool, dict(pool_labels or {})
        self.aux_gradient = RecomputedAuxGradient()  # the aux losses' gradient under reentrant checkpointing

    def forward(self, gate_input: torch.Tensor, expert_outputs: torch.Tensor, *,
                group: torch.Tensor | None = None) -> torch.Tensor:
        routing = self.router(gate_input, group=group)
        self.record.add(routing, training=self.training)
        if self.pool is not None:
            count_pooled(self.pool, routing, self.pool_labels)
        if routing.soft:  # dense weights: one batched contraction
            out = torch.einsum("be,ebh->bh", routing.combine_weights().to(expert_outputs.dtype), expert_outputs)
        else:
            weight = routing.weight.to(expert_outputs.dtype).unsqueeze(-1)
            picked = expert_outputs[routing.expert_index, routing.token_index]  # [A, h]
            out = expert_outputs.new_zeros(expert_outputs.shape[1:]).index_add(0, routing.token_index, weight * picked)
        return self.aux_gradient.route(out, routing.aux_losses, self.training)


def count_pooled(record: RoutingRecord, routing, labels: Mapping[str, int]) -> None:
    """Count ``routing`` (one gate's) into ``record`` (pooled over several gates of the same experts) by the labels
    attached to the forward plus the constant ``labels`` of this gate. Only load by label: no aux losses (the
    gate's own record has them), no training load and no last-forward statistics, so nothing is counted twice."""
    if record.labels is None:  # no stage asked for load by label
        return
    device = routing.token_index.device
    constant = {name: torch.full((routing.num_tokens,), value, dtype=torch.long, device=device)
                for name, value in labels.items()}
    saved = record.labels, record.label_sizes, record.last
    record.labels = {**saved[0], **constant}
    record.label_sizes = {**saved[1], **{name: value + 1 for name, value in labels.items()}}
    try:
        record.add(routing, training=False)
    finally:
        record.labels, record.label_sizes, record.last = saved
