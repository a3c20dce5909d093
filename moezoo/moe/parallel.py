"""Expert parallelism: the dispatch seam between a router and its expert bank.

An ``MoE`` layer computes ``y = bank(x, routing)`` on its own process unless it has a dispatcher. Under expert
parallelism (``shard_experts``) each of the P ranks of an expert-parallel process group holds E / P of the layer's
experts (rank r: global experts [r E/P, (r+1) E/P)), allocated only there, and ``AllToAllDispatch`` moves the tokens:

1. the assignments are sorted by global expert; the per-expert counts [E] are exchanged with one
   ``all_to_all_single`` (rank q learns how many rows each rank sends to each of q's experts);
2. the token rows go to the ranks that own their experts (the autograd-aware
   ``torch.distributed.nn.functional.all_to_all_single``), the local bank computes them on the same kernels
   (``moezoo.kernels``) with weight 1, and a second all-to-all brings the outputs back;
3. the source rank scales each output by its gate weight and sums it into its token (``index_add``), so the
   gradients of the gate weights, the tokens and the local experts all flow through both all-to-alls.

The router runs on every rank on that rank's tokens (token choice, expert choice and top-p alike: a dispatcher sees
only (token, expert, weight) assignments), and shared experts stay replicated. A rank may send or receive no rows.

Checkpoints stay in the one-process layout: a sharded bank's ``state_dict()`` all-gathers its experts by global
index (every rank of the group must call it, as with FSDP's full state dict), and ``load_state_dict`` takes either
the full [E, ...] tensors (sliced to this rank's experts) or this rank's [E / P, ...] shard. So a checkpoint written
with P = 2 loads with P = 1 and back. ``ExpertParallelStrategy`` (``moezoo.training.parallel``) does all this under
Lightning, with the expert gradients reduced over their expert-data-parallel group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.nn.functional import all_to_all_single

from moezoo import kernels
from moezoo.errors import MoezooError

from .experts import FiLMExperts, GroupedMLP
from .layer import MoE
from .routing import Routing
from .stacked import RoutedStackedMLP

# parameter name prefixes of each routed bank that are stacked over experts on dim 0 (the rest is replicated)
STACKED_EXPERT_PARAMETERS: dict[type, tuple[str, ...]] = {
    GroupedMLP: ("w1", "w2", "b1", "b2"),
    FiLMExperts: ("weight", "bias"),
    RoutedStackedMLP: ("weights.", "biases."),
}


class ExpertParallelError(MoezooError, ValueError):
    """A layer that cannot be sharded (an unknown bank, E not divisible by the group size)."""


class AllToAllDispatch:
    """Runs a sharded bank on the ranks that own each assignment's expert (see the module docstring).

    ``group``: the expert-parallel process group (None: the default group); ``num_experts``: E, the layer's global
    expert count (the bank holds E / P). Called as ``dispatch(x [T, d], routing over E experts, bank) -> [T, d_out]``.
    It holds no tensors and no state: nothing is kept across steps.
    """

    def __init__(self, num_experts: int, group: dist.ProcessGroup | None = None):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if num_experts % self.size:
            raise ExpertParallelError(f"{num_experts} experts do not split over {self.size} expert-parallel ranks")
        self.num_experts, self.local_experts = num_experts, num_experts // self.size

    def __call__(self, x: torch.Tensor, routing: Routing, bank: nn.Module) -> torch.Tensor:
        size, local = self.size, self.local_experts
        order, offsets = kernels.sort_by_expert(routing.expert_index, self.num_experts)
        counts = torch.diff(offsets.long(), prepend=offsets.new_zeros(1).long())  # assignments per global expert
        token_index = routing.token_index[order]
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts, group=self.group)  # [P, E/P]: from rank q, rows per my expert
        recv_counts = recv_counts.view(size, local)
        send_splits = counts.view(size, local).sum(1).tolist()
        recv_splits = recv_counts.sum(1).tolist()
        rows = x[token_index]
        received = all_to_all_single(rows.new_empty(sum(recv_splits), x.shape[-1]), rows, recv_splits, send_splits,
                                     group=self.group)
        # each source's rows arrive sorted by expert: local expert ids are arange(E/P) repeated per source
        local_expert = torch.arange(local, device=x.device).repeat(size).repeat_interleave(recv_counts.flatten())
        n = received.shape[0]
        empty = received.new_zeros(n, local, dtype=torch.float)
        out = bank(received, Routing(token_index=torch.arange(n, device=x.device), expert_index=local_expert,
                                     weight=received.new_ones(n), num_tokens=n, num_experts=local, probs=empty,
                                     logits=empty))
        out = out.to(x.dtype)  # the collectives move the tokens' dtype (under autocast the bank may return bf16)
        back = all_to_all_single(out.new_empty(rows.shape[0], out.shape[-1]), out, send_splits, recv_splits,
                                 group=self.group)
        weighted = back * routing.weight[order].unsqueeze(-1).to(back.dtype)
        return back.new_zeros(routing.num_tokens, back.shape[-1]).index_add(0, token_index, weighted)


def stacked_expert_parameters(bank: nn.Module) -> list[str]:
    """The names (in ``bank``) of its parameters stacked over experts on dim 0; an error for banks that have none."""
    prefixes = next((p for kind, p in STACKED_EXPERT_PARAMETERS.items() if isinstance(bank, kind)), None)
    if prefixes is None:
        known = ", ".join(k.__name__ for k in STACKED_EXPERT_PARAMETERS)
        raise ExpertParallelError(f"{type(bank).__name__} cannot be sharded over experts (stacked banks can: {known})")
    return [name for name, _ in bank.named_parameters() if name.startswith(prefixes)]


def shard_experts(model: nn.Module, group: dist.ProcessGroup | None = None, *,
                  src: int = 0) -> dict[str, ExpertShard]:
    """Shard every ``MoE`` layer of ``model`` over the expert-parallel ``group`` (in place); returns the qualified
    names of the sharded parameters with their shard (what a data-parallel wrapper must leave to the
    expert-data-parallel reduction).

    Each rank first receives the full expert weights from global rank ``src`` (one initialisation everywhere), then
    keeps its E / P experts; the bank's ``num_experts`` becomes E / P and the layer gets an ``AllToAllDispatch``.
    A model already sharded is left as it is. A group of one rank shards nothing.
    """
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    names = {}
    for prefix, layer in model.named_modules():
        if not isinstance(layer, MoE):
            continue
        bank = layer.experts
        shard = getattr(bank, "expert_shard", None)
        if shard is None and size > 1:
            total = bank.num_experts
            dispatch = AllToAllDispatch(total, group)
            local = dispatch.local_experts
            start = rank * local
            for name in stacked_expert_parameters(bank):
                param = bank.get_parameter(name)
                full = param.detach().clone()
                dist.broadcast(full, src)
                owner, _, leaf = name.rpartition(".")
                setattr(bank.get_submodule(owner), leaf,  # a ParameterList takes its index as an attribute name
                        nn.Parameter(full[start:start + local].clone(), requires_grad=param.requires_grad))
            bank.num_experts = local
            bank.expert_shard = ExpertShard(start, local, total, group)
            bank._register_state_dict_hook(_gather_experts)
            bank._register_load_state_dict_pre_hook(_slice_experts, with_module=True)
            layer.dispatch = dispatch
        if getattr(bank, "expert_shard", None) is not None:
            base = f"{prefix}.experts." if prefix else "experts."
            names.update({base + name: bank.expert_shard for name in stacked_expert_parameters(bank)})
    return names


class ExpertShard:
    """Which experts a sharded bank holds: global ``start`` to ``start + local`` of ``total``, over ``group``."""

    def __init__(self, start: int, local: int, total: int, group):
        self.start, self.local, self.total, self.group = start, local, total, group

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The full [total, ...] tensor from every rank's [local, ...] shard (all ranks of the group call it)."""
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(parts, tensor.detach().contiguous(), group=self.group)
        return torch.cat(parts)

    def slice(self, tensor: torch.Tensor, key: str) -> torch.Tensor:
        """This rank's shard of a full tensor (a shard of this rank's size is returned as it is)."""
        if tensor.shape[0] == self.total:
            return tensor[self.start:self.start + self.local]
        if tensor.shape[0] == self.local:
            return tensor
        raise ExpertParallelError(f"{key}: {tensor.shape[0]} experts on dim 0, expected {self.total} (the full "
                                  f"layer) or {self.local} (one shard)")


def _gather_experts(bank, state, prefix, local_metadata):
    shard = bank.expert_shard
    for name in stacked_expert_parameters(bank):
        key = prefix + name
        if key in state:
            state[key] = shard.gather(state[key])
    return state


def _slice_experts(bank, state, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    shard = bank.expert_shard
    for name in stacked_expert_parameters(bank):
        key = prefix + name
        if key in state:
            state[key] = shard.slice(state[key], key)
