"""The functions that collect what routing modules record: aux losses, routing statistics, load by label."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn as nn

from .record import TOTAL, RoutingRecord, label_sizes
from .routers import Router


def moe_layers(model: nn.Module):
    """(name, layer) for every module of ``model`` that keeps a RoutingRecord (every MoE layer)."""
    for name, module in model.named_modules():
        if isinstance(getattr(module, "record", None), RoutingRecord):
            yield name, module


def aux_loss_terms(model: nn.Module) -> dict[str, torch.Tensor]:
    """The aux losses recorded since the last call, summed per kind over layers and forwards; clears them (the
    rule of ``aux_loss``)."""
    terms: dict[str, torch.Tensor] = {}
    for _, layer in moe_layers(model):
        for losses in layer.record.losses:
            for kind, value in losses.items():
                terms[kind] = terms[kind] + value if kind in terms else value
        layer.record.losses = []
    return terms


def aux_loss(model: nn.Module) -> torch.Tensor | float:
    """Sum of all aux losses recorded since the last call (0.0 if none); clears them.

    Every training-mode forward of a layer records its router's aux losses, with their autograd graph, until a call
    collects them: call it after the forward(s) of each step, ``loss = task_loss + aux_loss(model)`` (``TaskModule``
    does), and the forwards since the last call all count, a layer run twice (classifier-free guidance) twice. A
    layer keeps the losses of its latest ``RoutingRecord.max_pending`` (4) forwards only: in a loop that never calls
    this, older ones are dropped (with a warning), so their graphs are freed instead of piling up.
    """
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


@contextmanager
def routing_labels(model: nn.Module, labels: Mapping[str, torch.Tensor] | None) -> Iterator[None]:
    """Attach ``labels`` (name -> ids per sample [B] or per token) to the forwards run inside this block: every
    routing module of ``model`` counts its load by each label's values (read with ``load_by_label``). Nested blocks
    add their labels to the outer ones; on exit the previous labels are restored, so nothing outlives the block.
    Empty ``labels`` count only each module's total load over the block (``"*"``); None counts nothing."""
    if labels is None:
        yield
        return
    records = [layer.record for _, layer in moe_layers(model)]
    previous = [(record.labels, record.label_sizes) for record in records]
    sizes = label_sizes(dict(labels))  # read here, before the forward, so a compiled forward needs no data-sized op
    for record, (before, before_sizes) in zip(records, previous):
        record.labels = {**(before or {}), **labels}
        record.label_sizes = {**before_sizes, **sizes}
    try:
        yield
    finally:
        for record, (before, before_sizes) in zip(records, previous):
            record.labels, record.label_sizes = before, before_sizes


def normalized_mutual_information(counts: torch.Tensor) -> float:
    """NMI(L; E) = I(L; E) / mean(H(L), H(E)) of a [V, E] table of (label value, expert) counts or gate mass:
    0 when the expert ignores the label, 1 when the label decides the expert (0 when either marginal is constant).

    The mutual information is scikit-learn's ``mutual_info_score`` on the contingency table (soft gate mass is
    scaled to integer milli-units first: scikit-learn reads integer tables, and the NMI is scale-free)."""
    from scipy.stats import entropy
    from sklearn.metrics import mutual_info_score

    table = counts.detach().double().cpu()
    if table.sum() <= 0:
        return 0.0
    if not torch.equal(table, table.round()):
        table = (table / table.sum() * 1e6).round()
    table = table.to(torch.int64).numpy()
    h_label, h_expert = entropy(table.sum(1)), entropy(table.sum(0))
    if h_label <= 0 or h_expert <= 0:
        return 0.0
    return float(mutual_info_score(None, None, contingency=table) / ((h_label + h_expert) / 2))


def load_by_label(model: nn.Module, reset: bool = True) -> dict[str, dict[str, dict]]:
    """Per routing module, per label counted since the last reset (``routing_labels``): ``counts`` [V, E] (label
    value x expert: assignments, or gate mass for soft mixtures), ``load`` (each row over experts, summing to 1; 0 for
    a value never seen) and ``nmi`` (``normalized_mutual_information``); and under ``"*"`` the load of every counted
    assignment ([1, E], no NMI). ``reset`` starts the next tally."""
    result = {}
    for name, layer in moe_layers(model):
        tables = layer.record.by_label
        if reset:
            layer.record.by_label = {}
        if not tables:
            continue
        result[name] = {}
        for label, counts in tables.items():
            entry = {"counts": counts, "load": counts / counts.sum(-1, keepdim=True).clamp_min(1e-12)}
            if label != TOTAL:
                entry["nmi"] = normalized_mutual_information(counts)
            result[name][label] = entry
    return result
