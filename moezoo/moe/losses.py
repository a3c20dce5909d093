"""Auxiliary losses of MoE routers, as pure functions of the router distribution and the assignments."""

from __future__ import annotations

import torch
import torch.distributed as dist


def expert_fraction(expert_index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """f_i: the fraction of assignments that went to expert i, [E] (sums to 1; zeros if there are none)."""
    counts = torch.bincount(expert_index, minlength=num_experts).float()
    return counts / counts.sum().clamp_min(1.0)


def _null_experts_as_one_group(f: torch.Tensor, num_null_experts: int) -> torch.Tensor:
    """f with the null experts' fractions replaced by their mean (AdaMoE): null experts are identical, so the loss
    balances the true experts and the null group as a whole, not the null experts among themselves."""
    if num_null_experts <= 0:
        return f
    real = f.shape[-1] - num_null_experts
    return torch.cat([f[:real], f[real:].mean().expand(num_null_experts)])


def switch_load_balancing_loss(probs: torch.Tensor, expert_index: torch.Tensor,
                               num_null_experts: int = 0) -> torch.Tensor:
    """Switch Transformer load balancing (Fedus et al. 2021, eq. 4): L = E * sum_i f_i * P_i.

    f_i is the fraction of assignments routed to expert i (no gradient), P_i = mean_t probs[t, i]. Equals 1 when
    routing is uniform and grows to E when one expert takes everything. probs [T, E], expert_index [A].

    ``expert_index`` is the router's choice *before* any capacity drops assignments: GShard and Switch take f from
    the top-k choice (fairscale ``fairscale/nn/moe/top2gate.py``, ``top2gating``: ``l_aux`` from ``mask1`` before
    ``mask1 *= torch.lt(locations1, capacity)``; flaxformer ``flaxformer/architectures/moe/routing.py``,
    ``TokensChooseMaskedRouter._compute_routing_instructions``: ``_load_balancing_loss(router_probs, expert_index)``
    before the ``expert_capacity`` mask), so an overloaded expert is not hidden by its capacity.

    With ``num_null_experts`` m (the last m of the E columns, AdaMoE), f of each null expert is the mean f over the
    null experts (official code, github.com/CengZihao/AdaMoE ``exp_1/src/mola_modeling_llama_hacked.py``,
    ``load_balancing_loss_func``: ``expert_mask_1[4:] = mean(expert_mask_1[4:])``); E counts the null experts.
    """
    num_experts = probs.shape[-1]
    f = _null_experts_as_one_group(expert_fraction(expert_index, num_experts), num_null_experts).to(probs.dtype)
    return num_experts * torch.sum(f * probs.mean(dim=0))


def router_entropy_loss(probs: torch.Tensor) -> torch.Tensor:
    """The dynamic loss of top-p routing (Huang et al. 2024, "Harder Tasks Need More Experts", sec. 3.2):
    L_d = mean_t -sum_i P_{t,i} log P_{t,i}, the entropy of the router distribution.

    Without it a top-p router can flatten its distribution so that every token reaches p only with (nearly) every
    expert; minimising the entropy makes it confident, so tokens use fewer experts. probs [T, E]; a probability of
    0 (a masked expert) contributes 0 and no gradient.
    """
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss (Zoph et al. 2022, eq. 5): L_z = mean_t (log sum_j exp(logits[t, j]))^2."""
    finite = torch.where(torch.isfinite(logits), logits, torch.full_like(logits, -1e4))
    return torch.logsumexp(finite.float(), dim=-1).square().mean()


def all_reduce_counts(counts: torch.Tensor) -> torch.Tensor:
    """Sum expert counts over data-parallel ranks when torch.distributed is running (no-op otherwise)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        counts = counts.clone()
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return counts


def global_batch_load_balancing_loss(probs: torch.Tensor, global_counts: torch.Tensor,
                                     num_null_experts: int = 0) -> torch.Tensor:
    """Global-batch balancing (Qiu et al. 2025, "Demons in the Detail"): L = E * sum_i f_i^global * P_i.

    f^global comes from expert counts summed over all data-parallel ranks and all micro-batches of the optimizer step
    so far (``global_counts`` [E]), so a sequence may specialise as long as the global batch stays balanced. The
    counts are of the router's choices before capacity, and null experts count as one group, as in
    ``switch_load_balancing_loss``. The gradient (to P only) uses f as of this forward, also when non-reentrant
    activation checkpointing recomputes the layer after later forwards have counted.
    """
    num_experts = probs.shape[-1]
    f = global_counts.float() / global_counts.sum().clamp_min(1.0)
    f = _null_experts_as_one_group(f, num_null_experts).to(probs.dtype)
    return num_experts * _WeightedByFraction.apply(probs.mean(dim=0), f)


class _WeightedByFraction(torch.autograd.Function):
    """sum_i f_i * P_i with f (no gradient) kept by the node instead of saved for backward: non-reentrant activation
    checkpointing recomputes saved tensors in the backward, when ``global_counts`` has also counted the forwards run
    since (a layer run twice in a step), so f would not be the forward's."""

    @staticmethod
    def forward(ctx, mean_probs, f):
        ctx.f = f.detach()
        return torch.sum(f * mean_probs)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.f, None
