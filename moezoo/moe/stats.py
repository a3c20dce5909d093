"""The functions that collect what routing modules record: aux losses, routing statistics, load by label."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn as nn

from .grow import restore_frozen_experts
from .record import TOTAL, RoutingRecord, label_sizes
from .routers import Router


def distributed() -> bool:
    """Whether torch.distributed runs with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_ranks(table: torch.Tensor) -> torch.Tensor:
    """``table`` summed over all processes of torch.distributed (itself when there is one): counts of every rank's
    tokens. Tables whose first dim differs between ranks (label values one rank has not seen) are zero-padded to the
    largest first. Every process must call it, in the same order."""
    if not distributed():
        return table
    rows = torch.tensor([table.shape[0] if table.ndim else 0], device=table.device)
    dist.all_reduce(rows, op=dist.ReduceOp.MAX)
    out = table.detach().float().clone()
    if table.ndim and int(rows) > table.shape[0]:
        out = torch.cat([out, out.new_zeros(int(rows) - table.shape[0], *table.shape[1:])])
    dist.all_reduce(out)
    return out


def moe_layers(model: nn.Module):
    """(name, layer) for every module of ``model`` that keeps a RoutingRecord (every MoE layer)."""
    for name, module in model.named_modules():
        if isinstance(getattr(module, "record", None), RoutingRecord):
            yield name, module


def aux_loss_terms(model: nn.Module) -> dict[str, torch.Tensor]:
    """The aux losses recorded since the last call, summed per kind over layers and forwards; clears them (the
    rule of ``aux_loss``). A value recorded without autograd (the first pass of reentrant activation checkpointing)
    passes through its layer's ``RecomputedAuxGradient.keep``, so the backward's recomputation trains the router."""
    terms: dict[str, torch.Tensor] = {}
    for _, layer in moe_layers(model):
        deferred = getattr(layer, "aux_gradient", None)  # losses of a forward without autograd (reentrant checkpoint)
        for losses in layer.record.losses:
            for kind, value in losses.items():
                if deferred is not None and not value.requires_grad and torch.is_grad_enabled():
                    value = deferred.keep(kind, value)
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


def routing_stats(model: nn.Module, sync: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Per MoE layer, from its last forward: load per expert (fraction of assignments, or of gate mass for soft
    mixtures), imbalance (max load / mean load, 1 is perfect), mean router entropy (nats), the number of tokens that
    lost an assignment to capacity, and for grouped routings ``group_load`` [G, E] (each group's load over experts,
    rows summing to 1; 0 for a group absent from the batch).

    ``sync``: of every process's last forward under torch.distributed (counts summed, entropy averaged over ranks;
    every process must call it, with the same layers run)."""
    stats = {}
    for name, layer in moe_layers(model):
        last = layer.record.last
        if not last and not (sync and distributed()):
            continue
        if sync and distributed():
            present = sum_over_ranks(torch.tensor(float(bool(last))))
            if int(present) == 0:  # ran on no process (a pooled record no forward fills): skipped, as in one
                continue
            if not last or int(present) < dist.get_world_size():
                raise RuntimeError(f"routing_stats(sync=True): layer {name} ran on some processes only")
            last = {key: sum_over_ranks(value) for key, value in last.items()}
            last["entropy"] = last["entropy"] / dist.get_world_size()
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


def take_expert_load(model: nn.Module, sync: bool = False) -> dict[str, torch.Tensor]:
    """Training assignments per expert per layer since the last call ([E] counts), and reset them; ``sync``: summed
    over all processes of torch.distributed (every process calls it)."""
    totals = {}
    for name, layer in moe_layers(model):
        if layer.record.load_total is not None:
            totals[name] = sum_over_ranks(layer.record.load_total) if sync else layer.record.load_total
        layer.record.load_total = None
    return totals


def after_optimizer_step(model: nn.Module) -> None:
    """Tell every router an optimizer step happened (bias balancing update, new global batch), and put frozen
    experts' weights back (``moezoo.moe.grow.freeze_experts``)."""
    for module in model.modules():
        if isinstance(module, Router):
            module.after_optimizer_step()
    restore_frozen_experts(model)


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


def load_by_label(model: nn.Module, reset: bool = True, sync: bool = False) -> dict[str, dict[str, dict]]:
    """Per routing module, per label counted since the last reset (``routing_labels``): ``counts`` [V, E] (label
    value x expert: assignments, or gate mass for soft mixtures), ``load`` (each row over experts, summing to 1; 0 for
    a value never seen) and ``nmi`` (``normalized_mutual_information``); and under ``"*"`` the load of every counted
    assignment ([1, E], no NMI). ``reset`` starts the next tally; ``sync``: the counts of all processes of
    torch.distributed, summed (every process calls it, having counted the same layers and labels)."""
    result = {}
    for name, layer in moe_layers(model):
        tables = layer.record.by_label
        if reset:
            layer.record.by_label = {}
        if not tables:
            continue
        result[name] = {}
        for label, counts in tables.items():
            counts = sum_over_ranks(counts) if sync else counts
            entry = {"counts": counts, "load": counts / counts.sum(-1, keepdim=True).clamp_min(1e-12)}
            if label != TOTAL:
                entry["nmi"] = normalized_mutual_information(counts)
            result[name][label] = entry
    return result
