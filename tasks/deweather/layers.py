"""The restorer's building blocks: EDSR residual blocks and the transformer FFNs the variants compare.

A block's FFN takes the normed tokens h [B, N, d] (the core's pre-norm ``TransformerBlock``) and is one of:

    dense    FFN(h) = W2 GELU(W1 h)                                    (8 d^2 weights, hidden 4d)
    moe      sum_{e in TopK} w_e FFN_e(h)                              (E full FFN experts, 8 E d^2)
    mofme    g = GELU(W1 h) * (W2 h)                                   (the shared gated block, 2 d^2)
             y = Adaptor(sum_{e in TopK} w_e FME_e(g)),  FME_e(g) = (A_e g + a_e) * g + (B_e g + b_e)
             Adaptor = Linear(d, 4d) - GELU - Linear(4d, d)            (2 E d^2 + 8 d^2 + 2 d^2)

The router sees h (``MoE(g, router_input=h)``): a softmax top-k router, or the uncertainty-aware router (UaR,
``moezoo.moe.UncertaintyRouter``). MoFME's shapes follow the official code (github.com/RoyZry98/MoFME-Pytorch
``models/moe/film.py``: ``basenet`` = two ``Linear(dim, dim)``, ``Modular_Experts``, ``adaptor``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from moezoo.moe import DenseMLP, FiLMExperts, GroupedMLP, MoE, TopKRouter, UncertaintyRouter

FFNS = ("dense", "moe", "mofme")
ROUTERS = ("topk", "uncertainty")
VARIANTS = {"dense": ("dense", "topk"), "moe": ("moe", "topk"), "mofme": ("mofme", "topk"),
            "mofme-uar": ("mofme", "uncertainty")}  # registered variant -> (ffn, router), as in configs/deweather


class ResBlock(nn.Module):
    """x + conv(ReLU(conv(x))), 3x3 convolutions (EDSR's residual block, the official restorer's head and tail)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class FMELayer(nn.Module):
    """MoFME's FFN: a shared gated block, E feature-modulated experts behind a router, an adaptor (see the module).

    Shapes: h [B, N, d] -> [B, N, d]."""

    def __init__(self, dim: int, router: nn.Module, num_experts: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, dim)
        self.w2 = nn.Linear(dim, dim)
        self.moe = MoE(dim, router, FiLMExperts(num_experts, dim))
        hidden = int(dim * mlp_ratio)
        self.adaptor = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                     nn.Dropout(dropout))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        shared = F.gelu(self.w1(h)) * self.w2(h)
        return self.adaptor(self.moe(shared, router_input=h))


def make_router(kind: str, dim: int, num_experts: int, k: int, *, balance_loss_weight: float = 0.0,
                uar_samples: int = 5, uar_dropout: float = 0.1) -> nn.Module:
    """A softmax top-k router (``topk``) or the uncertainty-aware one (``uncertainty``); weights renormalised over
    the k (the official ``KeepTopK`` then softmax)."""
    common = dict(balance_loss_weight=balance_loss_weight, normalize=True)
    if kind == "uncertainty":
        return UncertaintyRouter(dim, num_experts, k, num_samples=uar_samples, input_dropout=uar_dropout, **common)
    return TopKRouter(dim, num_experts, k, **common)


def make_ffn(ffn: str, dim: int, *, router: str = "topk", num_experts: int = 4, k: int = 2, mlp_ratio: float = 4.0,
             **router_kwargs) -> nn.Module:
    """The FFN of one transformer block, for a variant (``FFNS`` x ``ROUTERS``)."""
    hidden = int(dim * mlp_ratio)
    if ffn == "dense":
        return DenseMLP(dim, hidden)
    gate = make_router(router, dim, num_experts, k, **router_kwargs)
    if ffn == "moe":
        return MoE(dim, gate, GroupedMLP(num_experts, dim, hidden))
    return FMELayer(dim, gate, num_experts, mlp_ratio)
