"""Stacked MLP experts and towers for multi-task recommendation: E small MLPs run as batched GEMMs.

Peer libraries (FuxiCTR, torch-rechub, DeepCTR-Torch) loop over an ``nn.ModuleList`` of experts; here the E experts'
weights are stacked ``[E, d_in, d_out]`` and each layer is one GEMM (shared input) or one ``bmm`` (a private input
per expert, e.g. HoME's feature-gated inputs).

Layer l of expert e:  h_e <- act(norm(h_e W_e^l + b_e^l)), with ``norm`` a BatchNorm over each expert's own
units (HoME's expert normalisation) or none, and ``act`` ReLU or Swish (SiLU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"relu": F.relu, "swish": F.silu, "none": lambda h: h}


class StackedMLP(nn.Module):
    """E independent MLPs with stacked weights.

    Args:
        num_experts: E.
        in_dim: input width d.
        hidden: widths of the layers; the last is the output width.
        activation: ``relu`` or ``swish`` after every layer (``none`` for linear).
        batch_norm: BatchNorm per expert before the activation (HoME: Swish(BN(W v + b))).
        dropout: dropout after every activation.
        output_layer: the last layer is a plain linear output (no norm, activation or dropout): towers.

    Shapes: x [B, d] (every expert sees the same input) or [E, B, d] (a private input per expert) -> [E, B, h_last].
    """

    def __init__(self, num_experts: int, in_dim: int, hidden: Sequence[int], activation: str = "relu",
                 batch_norm: bool = False, dropout: float = 0.0, output_layer: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if not hidden:
            raise ValueError("hidden must name at least one layer width")
        self.num_experts, self.activation, self.output_layer = num_experts, activation, output_layer
        dims = [in_dim, *hidden]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(num_experts, i, o)) for i, o in zip(dims, dims[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(num_experts, 1, o)) for o in dims[1:])
        plain = len(hidden) - 1 if output_layer else len(hidden)
        self.norms = nn.ModuleList(nn.BatchNorm1d(num_experts * o) for o in hidden[:plain]) if batch_norm else None
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w, b in zip(self.weights, self.biases):  # nn.Linear's init, per expert
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    @property
    def out_dim(self) -> int:
        return self.weights[-1].shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num_layers = len(self.weights)
        h = x
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            if h.dim() == 2:  # shared input: one GEMM against all experts' weights side by side
                num_experts, d_in, d_out = w.shape
                h = (h @ w.permute(1, 0, 2).reshape(d_in, num_experts * d_out)).view(-1, num_experts, d_out)
                h = h.transpose(0, 1) + b
            else:
                h = torch.baddbmm(b, h, w)
            if self.output_layer and layer == num_layers - 1:
                break
            if self.norms is not None:
                num_experts, batch, width = h.shape
                h = self.norms[layer](h.transpose(0, 1).reshape(batch, num_experts * width))
                h = h.view(batch, num_experts, width).transpose(0, 1)
            h = self.dropout(ACTIVATIONS[self.activation](h))
        return h
