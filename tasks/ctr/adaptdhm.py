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
b^l_shared + b^l_k; the last layer gives one logit per task. Samples are sorted by cluster and each layer is one
grouped GEMM over the clusters (``moezoo.kernels.grouped_mm``). The cluster choice is a hard top-1 Routing, logged
with the domain as its group when the data has one, so users see which domains each cluster serves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from moezoo.kernels import grouped_mm, sort_by_expert
from moezoo.moe import Routing, RoutingRecord, in_backward

from .model import CTRTask


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

    def forward(self, v: torch.Tensor, group: torch.Tensor | None = None) -> torch.Tensor:
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
                                num_experts=self.num_clusters, probs=weights, logits=weights.log(),
                                group=group), training=self.training)
        return cluster


class ClusterNetworks(nn.Module):
    """K STAR-style MLPs: layer l of cluster k is x (W_shared^l * W_k^l) + b_shared^l + b_k^l.

    Shapes: v [B, d], cluster [B] -> [B, out_dim]. ReLU between layers, none after the last.
    """

    def __init__(self, num_clusters: int, in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0):
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        self.num_clusters = num_clusters
        self.shared_weights = nn.ParameterList(nn.Parameter(torch.empty(i, o)) for i, o in zip(dims, dims[1:]))
        self.shared_biases = nn.ParameterList(nn.Parameter(torch.zeros(o)) for o in dims[1:])
        # the specific factors start at 1 (and biases at 0): every cluster starts as the shared network
        self.cluster_weights = nn.ParameterList(nn.Parameter(torch.ones(num_clusters, i, o))
                                                for i, o in zip(dims, dims[1:]))
        self.cluster_biases = nn.ParameterList(nn.Parameter(torch.zeros(num_clusters, o)) for o in dims[1:])
        for w in self.shared_weights:
            nn.init.xavier_uniform_(w)
        self.dropout = nn.Dropout(dropout)

    def forward(self, v: torch.Tensor, cluster: torch.Tensor) -> torch.Tensor:
        order, offsets = sort_by_expert(cluster, self.num_clusters)
        rows = cluster[order]
        h = v[order]
        last = len(self.shared_weights) - 1
        for layer in range(last + 1):
            weight = self.shared_weights[layer] * self.cluster_weights[layer]  # [K, i, o]
            bias = self.shared_biases[layer] + self.cluster_biases[layer][rows]
            h = grouped_mm(h, weight, offsets) + bias
            if layer < last:
                h = self.dropout(F.relu(h))
        return h.new_empty(h.shape).index_copy(0, order, h)


class AdaptDHMNet(nn.Module):
    """Shapes: v [B, d], domain [B] (statistics only) -> logits [B, T]."""

    def __init__(self, in_dim: int, tasks: Sequence[str], domains: Sequence[str], num_clusters: int = 4,
                 iterations: int = 3, momentum: float = 0.9, temperature: float = 0.1,
                 hidden: Sequence[int] = (128, 64), dropout: float = 0.0):
        super().__init__()
        self.num_domains = len(domains)
        self.adaptation = DistributionAdaptation(in_dim, num_clusters, iterations, momentum, temperature)
        self.clusters = ClusterNetworks(num_clusters, in_dim, hidden, len(tasks), dropout)

    def forward(self, v: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        cluster = self.adaptation(v, group=domain if self.num_domains > 1 else None)
        return self.clusters(v, cluster)


class AdaptDHM(CTRTask):
    """AdaptDHM: clusters samples by dynamic routing (no domain column needed) and gives each cluster its network."""

    def __init__(self, num_clusters: int = 4, iterations: int = 3, momentum: float = 0.9, temperature: float = 0.1,
                 hidden: list[int] = [128, 64], dropout: float = 0.0, **kwargs):  # noqa: B006
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def build_network(self, in_dim, tasks, domains):
        h = self.hparams
        return AdaptDHMNet(in_dim, tasks, domains, h.num_clusters, h.iterations, h.momentum, h.temperature,
                           h.hidden, h.dropout)
