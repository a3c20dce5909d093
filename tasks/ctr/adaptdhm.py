"""AdaptDHM (Li et al., Alibaba 2022, arXiv 2211.12105, "Adaptive Distribution Hierarchical Model for Multi-domain
CTR Prediction"). No official code was published; this follows the paper's description.

Distribution adaptation: samples are clustered without any domain column. Each sample's representation
u = v / |v| (detached: routing sends no gradient into the features) is assigned to one of K unit-norm centres
c_1..c_K (a registered buffer, so it is saved in checkpoints and moved by ``.to()``) by dynamic routing:

    c^(0) = c;  for i = 1..T:  a_{bk} = softmax_k(u_b . c_k^(i-1) / tau),   c_k^(i) = normalise(sum_b a_{bk} u_b)

(a centre with no mass keeps its value). In training the sample's cluster is argmax_k a_{bk} of the last iteration
and the centres move by momentum, c <- normalise(beta c + (1 - beta) c^(T)) (averaged over data-parallel ranks
first; no gradient); in eval the centres are frozen and a sample goes to its nearest centre.
tau = 1 would give almost uniform weights over cosines in [-1, 1] and pull every centre to the batch mean; the
default tau = 0.1 keeps the clusters apart.

Cluster networks (STAR-style): cluster k's MLP uses weights W^l_shared * W^l_k (element-wise) and biases
b^l_shared + b^l_k; the last layer gives one logit per task: the core's routed bank
``moezoo.moe.RoutedStackedMLP(factored=True)`` (samples sorted by cluster, one grouped GEMM per layer). The cluster
choice is a hard top-1 Routing recorded like any router's; with a domain column ``CTRTask`` counts it by domain
(``test/routing/net.adaptation/domain=<d>/e<k>``), so users see which domains each cluster serves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from moezoo.moe import RoutedStackedMLP, Routing, RoutingRecord, in_backward


class DistributionAdaptation(nn.Module):
    """Dynamic-routing clustering of samples to K unit-norm centres. Shapes: v [B, d] -> cluster [B] long."""

    def __init__(self, dim: int, num_clusters: int = 4, iterations: int = 3, momentum: float = 0.9,
                 temperature: float = 0.1):
        super().__init__()
        self.num_clusters, self.iterations = num_clusters, iterations
        self.momentum, self.temperature = momentum, temperature
        self.register_buffer("centres", F.normalize(torch.randn(num_clusters, dim), dim=-1))
        self.record = RoutingRecord()

    @torch.no_grad()
    def route(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dynamic routing from the stored centres: (assignment weights a [B, K], refined centres [K, d])."""
        centres = self.centres
        for _ in range(self.iterations):
            weights = torch.softmax(u @ centres.t() / self.temperature, dim=-1)
            mass = weights.sum(0)
            merged = F.normalize(weights.t() @ u, dim=-1)
            centres = torch.where(mass[:, None] > 0, merged, centres)
        return torch.softmax(u @ centres.t() / self.temperature, dim=-1), centres

    @torch.no_grad()
    def update_centres(self, refined: torch.Tensor) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            refined = refined.clone()
            dist.all_reduce(refined)
            refined /= dist.get_world_size()
        self.centres.copy_(F.normalize(self.momentum * self.centres + (1 - self.momentum) * refined, dim=-1))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        u = F.normalize(v.detach().float(), dim=-1)
        if self.training:
            weights, refined = self.route(u)
            if not in_backward():
                self.update_centres(refined)
        else:
            weights = torch.softmax(u @ self.centres.t() / self.temperature, dim=-1)
        cluster = weights.argmax(-1)
        batch = v.shape[0]
        self.record.add(Routing(token_index=torch.arange(batch, device=v.device), expert_index=cluster,
                                weight=torch.ones(batch, device=v.device), num_tokens=batch,
                                num_experts=self.num_clusters, probs=weights, logits=weights.log()),
                        training=self.training)
        return cluster


class ClusterNetworks(nn.Module):
    """K STAR-style MLPs: layer l of cluster k is x (W_shared^l * W_k^l) + b_shared^l + b_k^l.

    The core routed bank ``moezoo.moe.RoutedStackedMLP(factored=True)`` over a hard top-1 Routing: sample b goes to
    its cluster with weight 1. Shapes: v [B, d], cluster [B] -> [B, out_dim]. ReLU between layers, none after the
    last.
    """

    # parameter names before the bank moved into the core, so that older checkpoints still load
    _OLD_KEYS = {"shared_weights.": "bank.shared_weights.", "shared_biases.": "bank.shared_biases.",
                 "cluster_weights.": "bank.weights.", "cluster_biases.": "bank.biases."}

    def __init__(self, num_clusters: int, in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.num_clusters = num_clusters
        self.bank = RoutedStackedMLP(num_clusters, in_dim, [*hidden, out_dim], "relu", dropout, output_layer=True,
                                     factored=True)

    def forward(self, v: torch.Tensor, cluster: torch.Tensor) -> torch.Tensor:
        batch = v.shape[0]
        probs = F.one_hot(cluster, self.num_clusters).to(v.dtype)
        routing = Routing(token_index=torch.arange(batch, device=v.device), expert_index=cluster,
                          weight=v.new_ones(batch), num_tokens=batch, num_experts=self.num_clusters,
                          probs=probs, logits=probs.log())
        return self.bank(v, routing)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for old, new in self._OLD_KEYS.items():
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class AdaptDHMNet(nn.Module):
    """Shapes: v [B, d], domain [B] (unused: clusters replace domains) -> logits [B, T]."""

    def __init__(self, in_dim: int, tasks: Sequence[str], domains: Sequence[str], num_clusters: int = 4,
                 iterations: int = 3, momentum: float = 0.9, temperature: float = 0.1,
                 hidden: Sequence[int] = (128, 64), dropout: float = 0.0):
        super().__init__()
        self.adaptation = DistributionAdaptation(in_dim, num_clusters, iterations, momentum, temperature)
        self.clusters = ClusterNetworks(num_clusters, in_dim, hidden, len(tasks), dropout)

    def forward(self, v: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        cluster = self.adaptation(v)
        return self.clusters(v, cluster)

