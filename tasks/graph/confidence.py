"""Confidence of the weak expert from the dispersion of its prediction (Mowst, Zeng et al. ICLR 2024, Sec. 3).

For p = softmax(MLP logits) over n classes:

    variance dispersion   D_var(p) = Var(p) / Var(one-hot) = n^2 / (n - 1) * mean_j (p_j - 1/n)^2   in [0, 1]
    entropy dispersion    D_ent(p) = 1 - H(p) / log n                                          in [0, 1]
    confidence            C(p) = D(p) ** alpha

Both are 0 for the uniform prediction and 1 for a one-hot one. Mowst* feeds [D_var, D_ent] (computed without
gradient) to a gate MLP instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def variance_dispersion(p: torch.Tensor) -> torch.Tensor:
    """D_var(p) = Var(p) / Var(one-hot), p [N, n] -> [N]."""
    n = p.shape[-1]
    return (p - 1.0 / n).square().mean(-1) * (n * n / (n - 1))


def entropy_dispersion(p: torch.Tensor) -> torch.Tensor:
    """D_ent(p) = 1 - H(p) / log n, p [N, n] -> [N]."""
    n = p.shape[-1]
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
    return 1.0 - entropy / math.log(n)


DISPERSIONS = {"variance": variance_dispersion, "entropy": entropy_dispersion}


class DispersionConfidence(nn.Module):
    """C(p) = D(p) ** alpha for D the variance or entropy dispersion (differentiable in p)."""

    def __init__(self, dispersion: str = "variance", alpha: float = 1.0):
        super().__init__()
        if dispersion not in DISPERSIONS:
            raise ValueError(f"unknown dispersion {dispersion!r}; valid: {', '.join(DISPERSIONS)}")
        self.dispersion, self.alpha = dispersion, alpha

    def forward(self, p: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        return DISPERSIONS[self.dispersion](p).clamp(0.0, 1.0) ** self.alpha


class LearnedConfidence(nn.Module):
    """C = sigmoid(w^T h + b) on the weak expert's last hidden layer h."""

    def __init__(self, hidden_channels: int):
        super().__init__()
        self.head = nn.Linear(hidden_channels, 1)

    def forward(self, p: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.head(hidden)).squeeze(-1)


class DispersionGate(nn.Module):
    """Mowst*'s gate: C = sigmoid(MLP([D_var(p), D_ent(p)] (, x))), the dispersions taken without gradient."""

    def __init__(self, hidden_channels: int = 64, in_features: int = 0):
        super().__init__()
        self.use_features = in_features > 0
        self.mlp = nn.Sequential(nn.Linear(2 + in_features, hidden_channels), nn.ReLU(),
                                 nn.Linear(hidden_channels, 1))

    def forward(self, p: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            features = torch.stack([variance_dispersion(p), entropy_dispersion(p)], dim=-1)
        if self.use_features:
            features = torch.cat([features, x], dim=-1)
        return torch.sigmoid(self.mlp(features)).squeeze(-1)
