"""What MoE layers record per forward (aux losses, routing statistics), and the functions that collect it."""

from __future__ import annotations

import torch
import torch.nn as nn

from .routers import Router
from .routing import Routing


def in_backward() -> bool:
    """True while autograd runs a backward pass, e.g. when activation checkpointing recomputes a forward."""
    return torch._C._current_graph_task_id() != -1


class RoutingRecord:
    """Per-layer record: aux losses waiting to be collected, statistics of the last forward, load since reset."""

    def __init__(self):
        self.losses: list[dict[str, torch.Tensor]] = []
        self.last: dict[str, torch.Tensor] = {}
        self.load_total: torch.Tensor | None = None

    def add(self, routing: Routing, training: bool) -> None:
        """Keep the statistics of this forward; in training also its aux losses and its load (for the heatmap)."""
        if training and routing.aux_losses:
            self.losses.append(routing.aux_losses)
        with torch.no_grad():
            counts = routing.expert_load()
            probs = routing.probs.float()
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
            dropped = routing.dropped.sum() if routing.dropped is not None else counts.new_zeros(())
            self.last = {"counts": counts, "entropy": entropy, "dropped": dropped.float()}
            group_load = routing.group_load()
            if group_load is not None:
                self.last["group_counts"] = group_load
            if training:
                self.load_total = counts if self.load_total is None else self.load_total + counts


def moe_layers(model: nn.Module):
    """(name, layer) for every module of ``model`` that keeps a RoutingRecord (every MoE layer)."""
    for name, module in model.named_modules():
        if isinstance(getattr(module, "record", None), RoutingRecord):
            yield name, module


def aux_loss_terms(model: nn.Module) -> dict[str, torch.Tensor]:
    """The aux losses recorded since the last call, summed per kind over layers and forwards; clears them."""
    terms: dict[str, torch.Tensor] = {}
    for _, layer in moe_layers(model):
        for losses in layer.record.losses:
            for kind, value in losses.items():
                terms[kind] = terms[kind] + value if kind in terms else value
        layer.record.losses = []
    return terms


def aux_loss(model: nn.Module) -> torch.Tensor | float:
    """Sum of all aux losses recorded since the last call (0.0 if none); clears them."""
    return sum(aux_loss_terms(model).values(), 0.0)


def routing_stats(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Per MoE layer, from its last forward: load per expert (fraction of assignments, or of gate mass for soft
    mixtures), imbalance (max load / mean load, 1 is perfect), mean router entropy (nats), the number of tokens that
    lost an assignment to capacity, and for grouped routings ``group_load`` [G, E] (each group's load over experts,
    rows summing to 1; 0 for a group absent from the batch)."""
    stats = {}
    for name, layer in moe_layers(model):
        last = layer.record.last
        if not last:
            continue
        counts = last["counts"]
        load = counts / counts.sum().clamp_min(1.0)
        stats[name] = {
            "load": load,
            "imbalance": load.max() / load.mean().clamp_min(1e-12),
            "entropy": last["entropy"],
            "dropped": last["dropped"],
        }
        if "group_counts" in last:
            group_counts = last["group_counts"]
            stats[name]["group_load"] = group_counts / group_counts.sum(-1, keepdim=True).clamp_min(1e-12)
    return stats


def take_expert_load(model: nn.Module) -> dict[str, torch.Tensor]:
    """Training assignments per expert per layer since the last call ([E] counts), and reset them."""
    totals = {}
    for name, layer in moe_layers(model):
        if layer.record.load_total is not None:
            totals[name] = layer.record.load_total
        layer.record.load_total = None
    return totals


def after_optimizer_step(model: nn.Module) -> None:
    """Tell every router an optimizer step happened (bias balancing update, new global batch)."""
    for module in model.modules():
        if isinstance(module, Router):
            module.after_optimizer_step()
