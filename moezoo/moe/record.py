"""RoutingRecord: what a module that routes keeps of its forwards (aux losses, statistics, load by label).

Every module that routes (the MoE layer, ``GatedMixture``, a family's own gate such as Mowst's confidence or
AdaptDHM's clusters) owns one as ``self.record`` and calls ``self.record.add(routing, training=self.training)`` once
per forward; ``moezoo.moe.aux_loss`` / ``routing_stats`` / ``load_by_label`` find it on the model.

Labels: a task may attach labels to the samples (or tokens) of a forward with ``routing_labels(model, {name: ids})``
(``moezoo.moe.stats``; ``TaskModule`` does it from the batch). While they are attached, ``add`` counts the load of
each expert per label value into ``[V, E]`` tables. Labels never restrict experts (that is ``group``). A label of
shape [B] (one id per sample) is spread over the sample's tokens when the forward's T tokens are B consecutive
samples of T / B tokens (sample-major, as every backbone here lays them out); ids < 0 are not counted (e.g. nodes
outside the stage's split); a label that cannot be laid onto a forward's tokens is skipped for that forward.
"""

from __future__ import annotations

import warnings

import torch

from .routing import Routing

TOTAL = "*"  # the label table of every counted assignment, whatever its labels: one row, the load over the stage


def in_backward() -> bool:
    """True while autograd runs a backward pass, e.g. when activation checkpointing recomputes a forward.

    False while torch.compile traces (asking autograd for its graph task would break the graph: it returns an int):
    the traced Python runs once, and a recomputation inside a compiled region replays the graph, not the records.
    A compiled module called again by an eager checkpoint's recomputation does record again (not detected).
    """
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


def token_labels(label: torch.Tensor, num_tokens: int) -> torch.Tensor | None:
    """The label id of each of ``num_tokens`` tokens: the label itself if it has one id per token, each sample's
    id repeated over its T / B consecutive tokens if it has one id per sample, else None."""
    label = label.reshape(-1)
    if label.numel() == num_tokens:
        return label
    if label.numel() and num_tokens % label.numel() == 0:
        return label.repeat_interleave(num_tokens // label.numel())
    return None


def label_sizes(labels: dict[str, torch.Tensor]) -> dict[str, int]:
    """The number of values of each label (its largest id + 1, at least 1): the rows of its load table."""
    return {name: max(1, int(label.max()) + 1) if label.numel() else 1 for name, label in labels.items()}


class RoutingRecord:
    """Per routing module: aux losses waiting to be collected, statistics of the last forward, training load since
    the last ``take_expert_load``, and the load by label value since the last ``load_by_label(reset=True)``.

    Aux losses wait for ``moezoo.moe.aux_loss`` from at most the latest ``max_pending`` training forwards: each
    carries its forward's autograd graph, so a loop that never collects them (a hand-written training loop, forwards
    in train mode for analysis) holds ``max_pending`` graphs, not one per step. An older forward's losses are
    dropped, with a warning when they carried a graph (they never reach a loss). Raise ``max_pending`` on a record
    whose layer runs more often than that between two collections.
    """

    max_pending = 4  # two forwards per step (classifier-free guidance) with room; under torch.compile each length
    # up to it is a guard of its own, so a compiled loop that never collects compiles max_pending + 1 times

    def __init__(self):
        self.losses: list[dict[str, torch.Tensor]] = []
        self.warned_drop = False
        self.last: dict[str, torch.Tensor] = {}
        self.load_total: torch.Tensor | None = None
        self.labels: dict[str, torch.Tensor] | None = None  # attached by routing_labels() for the forwards inside it
        self.label_sizes: dict[str, int] = {}  # the number of values of each attached label (rows of its table)
        self.by_label: dict[str, torch.Tensor] = {}  # label name -> [V, E] float load (counts, or soft gate mass)

    def add(self, routing: Routing, training: bool, labels: dict[str, torch.Tensor] | None = None) -> None:
        """Record one forward's routing: its statistics; in training also its aux losses and load. ``labels``
        (name -> ids) count its load by label instead of the attached ones. A recomputation during backward
        (activation checkpointing) records nothing, so no forward counts twice."""
        if in_backward():
            return
        if training and routing.aux_losses:
            self._keep_losses(routing.aux_losses)
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
            if labels is not None:
                self._count_by_label(routing, labels, label_sizes(labels))
            elif self.labels is not None:
                self._count_by_label(routing, self.labels, self.label_sizes)

    def _keep_losses(self, losses: dict[str, torch.Tensor]) -> None:
        excess = len(self.losses) + 1 - self.max_pending
        if excess > 0:
            dropped, self.losses = self.losses[:excess], self.losses[excess:]
            if (not torch.compiler.is_compiling() and not self.warned_drop
                    and any(v.requires_grad for d in dropped for v in d.values())):
                self.warned_drop = True  # once per record: a loop that never collects would warn every step
                warnings.warn(f"an MoE layer dropped aux losses nobody collected (it keeps those of its latest "
                              f"{self.max_pending} forwards): add moezoo.moe.aux_loss(model) to the loss after each "
                              "forward, or raise the layer's record.max_pending", stacklevel=2)
        self.losses.append(losses)

    def _count_by_label(self, routing: Routing, labels: dict[str, torch.Tensor], sizes: dict[str, int]) -> None:
        # no boolean masks and no sizes read from the data here, so torch.compile(fullgraph=True) traces it: ids < 0
        # add zero mass to row 0, and each table has the label's number of values, known before the forward
        mass = routing.weight.detach().float() if routing.soft else torch.ones_like(routing.weight, dtype=torch.float)
        counted = torch.ones_like(mass)
        for name, label in labels.items():
            ids = token_labels(label.to(routing.token_index.device), routing.num_tokens)
            if ids is None:
                continue
            ids = ids.long()[routing.token_index]
            keep = (ids >= 0).to(mass.dtype)
            counted = counted * keep
            self._accumulate(name, ids.clamp_min(0), routing.expert_index, mass * keep, routing.num_experts,
                             sizes[name])
        self._accumulate(TOTAL, torch.zeros_like(routing.expert_index), routing.expert_index, mass * counted,
                         routing.num_experts, 1)

    def _accumulate(self, name, ids, experts, mass, num_experts, rows: int) -> None:
        table = self.by_label.get(name)
        if table is None:
            table = mass.new_zeros(rows, num_experts)
        elif table.shape[0] < rows:  # a label value not seen before: grow the table
            table = torch.cat([table, table.new_zeros(rows - table.shape[0], num_experts)])
        self.by_label[name] = table.index_put_((ids, experts), mass, accumulate=True)
