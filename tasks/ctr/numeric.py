"""Numeric fields as embeddings (Gorishniy, Rubachev, Babenko, "On Embeddings for Numerical Features in Tabular Deep
Learning", NeurIPS 2022), with the authors' package ``rtdl_num_embeddings``.

A scalar fed to an MLP next to field embeddings is a weak input where the label depends on thresholds of the value:
adult's ``capital-gain`` (0 for 92 % of the rows, income > 50K almost sure above about 7,000, not between 3,000 and
5,000) is the feature gradient-boosted trees gain most from (their income AUC drops 0.031 without it), and a
standardised or log-scaled scalar left the networks 0.02 AUC behind the trees. Each numeric field instead becomes an
``embed_dim`` vector like a categorical field:

- ``piecewise`` (the paper's PLE, eq. 1, with version "B" of the package: a linear embedding of the value plus a
  learned linear map of its piecewise-linear encoding, started at 0): for bin edges b_0 < ... < b_T the encoding is
  e_t = clip((x - b_{t-1}) / (b_t - b_{t-1}), 0, 1) (the first bin unclipped below, the last above). The edges come
  from the training split: ``tree`` (the paper's target-aware bins, sec. 3.2.2: the split thresholds of a decision
  tree with at most ``n_bins`` leaves fitted on the value against a label) or ``quantile`` (sec. 3.2.1). With several
  tasks a tree is fitted per task and the edges are pooled.
- ``periodic``: the paper's PLR, ReLU(Linear(concat(cos(2 pi c x), sin(2 pi c x)))), learned frequencies c; no bins.
- ``none``: the value as it is (one input dimension per field), as before.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
from rtdl_num_embeddings import PeriodicEmbeddings, PiecewiseLinearEmbeddings, compute_bins

from moezoo.errors import MoezooError

NUMERIC_EMBEDDINGS = ("none", "piecewise", "periodic")
# The trees' stopping rules: at least 16 rows a leaf, no minimum gain, so a tree grows to its n_bins leaves where the
# rows allow. The package's documented example (64 rows, gain 1e-4) stops adult's trees at 13-23 edges a field and
# left never-married AUC 0.003 lower (tasks/ctr/README.md, chosen by validation AUC over 8-64 rows).
TREE_KWARGS = {"min_samples_leaf": 16, "min_impurity_decrease": 0.0}


def fit_bins(values: torch.Tensor, labels: torch.Tensor, n_bins: int = 48,
             method: Literal["tree", "quantile"] = "tree", max_rows: int = 1_000_000, seed: int = 0,
             min_samples_leaf: int = TREE_KWARGS["min_samples_leaf"],
             min_impurity_decrease: float = TREE_KWARGS["min_impurity_decrease"]) -> list[list[float]]:
    """Bin edges per numeric field from training rows: values [N, F] (as the data module encoded them), labels [N, T]
    0/1. At most ``max_rows`` rows (a seeded sample) are read. A field with a single value gets one bin [v, v + 1].
    ``min_samples_leaf`` and ``min_impurity_decrease`` are the trees' stopping rules (scikit-learn's
    ``DecisionTreeClassifier`` arguments, which the paper tunes per dataset; default ``TREE_KWARGS``): the trees stop
    splitting at these before they reach ``n_bins`` leaves. Returns plain lists (they travel as a model argument and
    in its saved hyper-parameters)."""
    if method not in ("tree", "quantile"):
        raise MoezooError(f"data.numeric_bins must be tree, quantile or null, got {method!r}")
    if n_bins < 2:
        raise MoezooError(f"data.num_numeric_bins must be at least 2, got {n_bins}")
    if isinstance(min_samples_leaf, bool) or not isinstance(min_samples_leaf, int) or min_samples_leaf < 1:
        raise MoezooError(f"data.bin_tree_min_samples_leaf must be a whole number of rows >= 1, got "
                          f"{min_samples_leaf!r}")
    if not min_impurity_decrease >= 0:
        raise MoezooError(f"data.bin_tree_min_impurity_decrease must be >= 0, got {min_impurity_decrease!r}")
    tree_kwargs = {"min_samples_leaf": min_samples_leaf, "min_impurity_decrease": float(min_impurity_decrease)}
    values, labels = values.float(), labels.float()
    if len(values) > max_rows:
        rows = torch.randperm(len(values), generator=torch.Generator().manual_seed(seed))[:max_rows]
        values, labels = values[rows], labels[rows]
    edges: list[list[float]] = []
    for f in range(values.shape[1]):
        column = values[:, f:f + 1]
        low, high = float(column.min()), float(column.max())
        if low == high or len(column) < 3:
            edges.append([low, low + 1.0])
            continue
        bins = min(n_bins, len(column) - 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "just two bin edges": a field with two values
            if method == "quantile":
                pooled = compute_bins(column, bins)[0]
            else:
                per_task = [compute_bins(column, bins, tree_kwargs=dict(tree_kwargs), y=labels[:, t],
                                         regression=False)[0]
                            for t in range(labels.shape[1]) if labels[:, t].min() != labels[:, t].max()]
                pooled = torch.unique(torch.cat(per_task)) if per_task else compute_bins(column, bins)[0]
        edges.append(pooled.tolist() if len(pooled) >= 2 else [low, high])
    return edges


class NumericEmbedding(nn.Module):
    """[B, N] numeric values -> [B, N * embed_dim] (``piecewise``, ``periodic``) or [B, N] unchanged (``none``)."""

    def __init__(self, num_numeric: int, embed_dim: int, kind: str = "none",
                 bins: Sequence[Sequence[float]] | None = None):
        super().__init__()
        if kind not in NUMERIC_EMBEDDINGS:
            raise MoezooError(f"model.numeric_embedding must be one of {', '.join(NUMERIC_EMBEDDINGS)}, got {kind!r}")
        self.kind = kind if num_numeric else "none"
        self.embed = None
        if self.kind == "piecewise":
            if bins is None:
                raise MoezooError("model.numeric_embedding=piecewise needs bin edges: set --data.numeric_bins tree "
                                  "(or quantile), which the CLI links to model.numeric_bins")
            if len(bins) != num_numeric:
                raise MoezooError(f"model.numeric_bins has edges for {len(bins)} fields, the data has {num_numeric} "
                                  "numeric fields")
            edges = [torch.tensor(list(b), dtype=torch.float) for b in bins]
            for i, e in enumerate(edges):
                if len(e) < 2 or not bool(torch.isfinite(e).all()) or bool((e[1:] <= e[:-1]).any()):
                    raise MoezooError(f"model.numeric_bins[{i}]: bin edges must be at least two increasing finite "
                                      f"numbers, got {e.tolist()[:6]}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # a one-bin field (min-max scaling, as documented)
                self.embed = PiecewiseLinearEmbeddings(edges, embed_dim, activation=False, version="B")
        elif self.kind == "periodic":
            self.embed = PeriodicEmbeddings(num_numeric, embed_dim, lite=False)
        self.out_dim = num_numeric * embed_dim if self.embed is not None else num_numeric

    def forward(self, numeric: torch.Tensor) -> torch.Tensor:
        if self.embed is None:
            return numeric
        return self.embed(numeric.float()).flatten(1)
