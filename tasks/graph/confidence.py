"""Confidence of the weak expert from the dispersion of its prediction (Mowst, Zeng et al. ICLR 2024, Sec. 3).

For p = softmax(MLP logits) over n classes:

    variance dispersion   D_var(p) = Var(p) / Var(one-hot) = n^2 / (n - 1) * mean_j (p_j - 1/n)^2   in [0, 1]
    entropy dispersion    D_ent(p) = 1 - H(p) / log n                                          in [0, 1]
    gate (the default)    C = sigmoid(GateMLP([D_var(p), D_ent(p)] (, x)))     (``DispersionGate``)
    power                 C = D(p) ** alpha                                    (``DispersionConfidence``)

Both dispersions are 0 for the uniform prediction and 1 for a one-hot one, and both are taken without gradient, as
in the official code (facebookresearch/mowst-gnn, ``train_test_engine.py``: ``compute_confidence`` is decorated
``@torch.no_grad``): the weak expert cannot lower its loss ``C * CE(weak) + (1 - C) * CE(strong)`` by flattening its
own predictions to push C to 0; it learns only through its own cross-entropy, weighted by C.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch_geometric.nn.models import MLP


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


@torch.no_grad()
def dispersions(p: torch.Tensor) -> torch.Tensor:
    """[D_var(p), D_ent(p)] without gradient, p [N, n] -> [N, 2] (the official ``compute_confidence``, twice)."""
    return torch.stack([variance_dispersion(p.float()), entropy_dispersion(p.float())], dim=-1)


class DispersionConfidence(nn.Module):
    """C(p) = D(p) ** alpha for D the variance or entropy dispersion, without gradient into p (no parameters)."""

    def __init__(self, dispersion: str = "variance", alpha: float = 1.0):
        super().__init__()
        if dispersion not in DISPERSIONS:
            raise ValueError(f"unknown dispersion {dispersion!r}; valid: {', '.join(DISPERSIONS)}")
        self.dispersion, self.alpha = dispersion, alpha

    def forward(self, p: torch.Tensor, x: torch.Tensor | None = None, hidden: torch.Tensor | None = None):
        with torch.no_grad():
            return DISPERSIONS[self.dispersion](p).clamp(0.0, 1.0) ** self.alpha


class LearnedConfidence(nn.Module):
    """C = sigmoid(w^T h + b) on the weak expert's last hidden layer h (gradient flows into the weak expert)."""

    def __init__(self, hidden_channels: int):
        super().__init__()
        self.head = nn.Linear(hidden_channels, 1)

    def forward(self, p: torch.Tensor, x: torch.Tensor | None = None, hidden: torch.Tensor | None = None):
        return torch.sigmoid(self.head(hidden)).squeeze(-1)


class DispersionGate(nn.Module):
    """C = sigmoid(GateMLP([D_var(p), D_ent(p)] (, x))), the dispersions without gradient (Mowst and Mowst*).

    GateMLP is the official ``model.py: GateMLP``: Linear, BatchNorm, ReLU, dropout per hidden layer, a plain last
    Linear to one logit; here PyG's ``MLP`` with ``norm="batch_norm"`` builds exactly that stack. ``in_features > 0``
    also feeds the node's features x (the official ``--original_data true``).
    """

    def __init__(self, hidden_channels: int = 64, in_features: int = 0, num_layers: int = 2, dropout: float = 0.5):
        super().__init__()
        self.use_features = in_features > 0
        self.mlp = MLP(in_channels=2 + in_features, hidden_channels=hidden_channels, out_channels=1,
                       num_layers=num_layers, dropout=dropout, norm="batch_norm")

    def forward(self, p: torch.Tensor, x: torch.Tensor | None = None, hidden: torch.Tensor | None = None):
        features = dispersions(p)
        if self.use_features:
            features = torch.cat([features, x.to(features.dtype)], dim=-1)
        return torch.sigmoid(self.mlp(features)).squeeze(-1)
