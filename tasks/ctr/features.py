"""The shared feature layer: categorical fields -> embeddings, numeric fields -> values, one vector per sample.

v = [E_1[c_1], ..., E_F[c_F], n_1, ..., n_N]: one embedding table per categorical field (index 0 is the data's
reserved slot for missing and unseen values, a learned vector like any other), numeric fields as the data module
normalised them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


class FeatureEmbedding(nn.Module):
    """Concatenated field embeddings and numeric values.

    Shapes: categorical [B, F] long, numeric [B, N] float -> [B, F * embed_dim + N].
    """

    def __init__(self, cardinalities: Sequence[int], num_numeric: int, embed_dim: int = 16):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, embed_dim) for n in cardinalities)
        for table in self.embeddings:
            nn.init.normal_(table.weight, std=0.01)  # the usual CTR init (FuxiCTR, DeepCTR)
        self.num_numeric = num_numeric
        self.out_dim = len(cardinalities) * embed_dim + num_numeric

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        parts = [table(categorical[:, f]) for f, table in enumerate(self.embeddings)]
        if self.num_numeric:
            parts.append(numeric)
        return torch.cat(parts, dim=-1)
