"""The shared feature layer: categorical fields -> embeddings, numeric fields -> values, one vector per sample.

v = [E_1[c_1], ..., E_F[c_F], g(n_1, ..., n_N)]: one embedding table per categorical field (index 0 is the data's
reserved slot for missing and unseen values, a learned vector like any other); the numeric fields as the data module
normalised them (``numeric_embedding: none``) or each embedded to ``embed_dim`` (``piecewise`` / ``periodic``,
``numeric.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .numeric import NumericEmbedding


class FeatureEmbedding(nn.Module):
    """Concatenated field embeddings and numeric values (or their embeddings).

    Shapes: categorical [B, F] long, numeric [B, N] float -> [B, F * embed_dim + N] (``none``) or
    [B, (F + N) * embed_dim].
    """

    def __init__(self, cardinalities: Sequence[int], num_numeric: int, embed_dim: int = 16,
                 numeric_embedding: str = "none", numeric_bins: Sequence[Sequence[float]] | None = None):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, embed_dim) for n in cardinalities)
        for table in self.embeddings:
            nn.init.normal_(table.weight, std=0.01)  # the usual CTR init (FuxiCTR, DeepCTR)
        self.num_numeric = num_numeric
        self.numeric = NumericEmbedding(num_numeric, embed_dim, numeric_embedding, numeric_bins)
        self.out_dim = len(cardinalities) * embed_dim + self.numeric.out_dim

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        parts = [table(categorical[:, f]) for f, table in enumerate(self.embeddings)]
        if self.num_numeric:
            parts.append(self.numeric(numeric).to(parts[0].dtype if parts else numeric.dtype))
        return torch.cat(parts, dim=-1)
