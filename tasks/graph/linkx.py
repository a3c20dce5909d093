"""The LINKX Facebook100 ``.mat`` format (Penn94, ...), as ``load_fb100`` of CUAI/Non-Homophily-Large-Scale reads it.

``<root>/<name>.mat`` (or ``<root>/facebook100/<name>.mat``), a MATLAB file read with ``scipy.io.loadmat``:

- ``A``: the [N, N] sparse adjacency (symmetric; its non-zeros are the edges);
- ``local_info``: [N, 6] integers per node: student/faculty, gender, major, second major/minor, dorm/house, year
  (0 = missing).

As LINKX builds it: the label is the gender column minus 1 (two classes; 0, missing, becomes -1: no label), the
features the one-hot encodings (scikit-learn's ``label_binarize`` over each column's values, a single column for a
two-valued one) of every other column. LINKX draws random 50/25/25 % train/valid/test splits of the labelled nodes
(``rand_train_test_idx``); here ``split`` seeds that draw, so a split is reproducible. The set has two classes:
scored with ROC-AUC, like the heterophilous npz sets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
import torch
from sklearn.preprocessing import label_binarize
from torch_geometric.data import Data
from torch_geometric.utils import to_undirected

from moezoo.errors import MoezooError

LABEL_COLUMN = 1  # gender
TRAIN_FRACTION, VAL_FRACTION = 0.5, 0.25


def fb100_path(root: Path, name: str) -> Path | None:
    """The ``.mat`` file of ``name`` under ``root`` (or its ``facebook100/`` folder), if there is one."""
    for path in (root / f"{name}.mat", root / "facebook100" / f"{name}.mat"):
        if path.is_file():
            return path
    return None


def random_split(labels: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
    """Masks of a seeded random 50/25/25 % split of the labelled nodes (labels >= 0), LINKX's proportions."""
    labelled = np.flatnonzero(labels >= 0)
    order = labelled[np.random.default_rng(seed).permutation(labelled.size)]
    train_end = int(TRAIN_FRACTION * order.size)
    val_end = train_end + int(VAL_FRACTION * order.size)
    masks = {}
    for stage, index in (("train", order[:train_end]), ("val", order[train_end:val_end]), ("test", order[val_end:])):
        mask = torch.zeros(labels.size, dtype=torch.bool)
        mask[torch.as_tensor(index)] = True
        masks[stage] = mask
    return masks


def read_fb100_mat(path: Path, split: int) -> Data:
    """A Facebook100 graph (see the module docstring) with split ``split`` (a seed, >= 0)."""
    try:
        mat = scipy.io.loadmat(path)
    except Exception as error:  # not a MAT file, MATLAB 7.3 (HDF5), truncated, ...
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise MoezooError(f"{path}: not a MATLAB file scipy.io.loadmat can read ({reason})") from None
    missing = [key for key in ("A", "local_info") if key not in mat]
    if missing:
        present = sorted(k for k in mat if not k.startswith("__"))
        raise MoezooError(f"{path}: missing variables {missing} (has {present})")
    adjacency, info = mat["A"], mat["local_info"]
    if not scipy.sparse.issparse(adjacency) or adjacency.ndim != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise MoezooError(f"{path}: A must be a square sparse adjacency matrix, got {type(adjacency).__name__} of "
                          f"shape {list(np.shape(adjacency))}")
    num_nodes = adjacency.shape[0]
    if not isinstance(info, np.ndarray) or info.ndim != 2 or info.shape[0] != num_nodes or info.shape[1] < 2 \
            or info.dtype.kind not in "biuf":
        raise MoezooError(f"{path}: local_info must be [{num_nodes}, columns] numbers (one row per node of A), got "
                          f"{getattr(info, 'dtype', type(info).__name__)} of shape {list(np.shape(info))}")
    if info.dtype.kind == "f" and (not np.isfinite(info).all() or (info != np.round(info)).any()):
        raise MoezooError(f"{path}: local_info must hold integers (category codes, 0 = missing)")
    info = info.astype(np.int64)
    labels = info[:, LABEL_COLUMN] - 1
    if labels.min() < -1 or labels.max() > 1 or not ((labels == 0).any() and (labels == 1).any()):
        raise MoezooError(f"{path}: local_info column {LABEL_COLUMN} (gender) must hold 0 (missing), 1 and 2, found "
                          f"values {sorted(np.unique(labels + 1).tolist())[:10]}")
    if not isinstance(split, int) or split < 0:
        raise MoezooError(f"data.split={split!r}: for a .mat set it seeds the random 50/25/25 split; needs an integer "
                          ">= 0")
    columns = [c for c in range(info.shape[1]) if c != LABEL_COLUMN]
    features = [label_binarize(info[:, c], classes=np.unique(info[:, c])) for c in columns]
    x = np.hstack(features).astype(np.float32) if features else np.ones((num_nodes, 1), dtype=np.float32)
    coo = adjacency.tocoo()
    edge_index = torch.as_tensor(np.stack([coo.row, coo.col]).astype(np.int64))
    edge_index = to_undirected(edge_index, num_nodes=num_nodes)
    masks = random_split(labels, split)
    return Data(x=torch.as_tensor(x), edge_index=edge_index, y=torch.as_tensor(labels),
                train_mask=masks["train"], val_mask=masks["val"], test_mask=masks["test"])
