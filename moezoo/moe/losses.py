"""Auxiliary losses of MoE routers, as pure functions of the router distribution and the assignments."""

from __future__ import annotations

import torch
import torch.distributed as dist


def expert_fraction(expert_index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """f_i: the fraction of assignments that went to expert i, [E] (sums to 1; zeros if there are none)."""
    counts = torch.bincount(expert_index, minlength=num_experts).float()
    return counts / counts.sum().clamp_min(1.0)


def switch_load_balancing_loss(probs: torch.Tensor, expert_index: torch.Tensor) -> torch.Tensor:
    """Switch Transformer load balancing (Fedus et al. 2021, eq. 4): L = E * sum_i f_i * P_i.

    f_i is the fraction of assignments routed to expert i (no gradient), P_i = mean_t probs[t, i]. Equals 1 when
    routing is uniform and grows to E when one expert takes everything. probs [T, E], expert_index [A].
    """
    num_experts = probs.shape[-1]
    f = expert_fraction(expert_index, num_experts).to(probs.dtype)
    return num_experts * torch.sum(f * probs.mean(dim=0))


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


def global_batch_load_balancing_loss(probs: torch.Tensor, global_counts: torch.Tensor) -> torch.Tensor:
    """Global-batch balancing (Qiu et al. 2025, "Demons in the Detail"): L = E * sum_i f_i^global * P_i.

    f^global comes from expert counts summed over all data-parallel ranks and all micro-batches of the optimizer step
    so far (``global_counts`` [E]), so a sequence may specialise as long as the global batch stays balanced.
    """
    num_experts = probs.shape[-1]
    f = (global_counts.float() / global_counts.sum().clamp_min(1.0)).to(probs.dtype)
    return num_experts * torch.sum(f * probs.mean(dim=0))
