"""OGB node-property-prediction folders (ogbn-arxiv, ogbn-products, ...) read offline, without the ``ogb`` package.

The layout ``ogb``'s ``NodePropPredDataset`` downloads and reads (``ogb/io/read_graph_raw.py``)::

    <root>/<name with _>/raw/edge.csv.gz          [E, 2] node ids, one row per edge (one direction)
                            node-feat.csv.gz      [N, F] numbers
                            node-label.csv.gz     [N, 1] class ids (NaN: no label, as in ogbn-papers100M)
                            num-node-list.csv.gz  [1] N (one graph)
                            num-edge-list.csv.gz  [1] E
                        split/<split_type>/{train,valid,test}.csv.gz   one node id per line

or, for the sets OGB ships in binary (``binary: True``), ``raw/data.npz`` (``edge_index`` [2, E], ``node_feat``,
``num_nodes_list``, ``num_edges_list``) and ``raw/node-label.npz`` (``node_label``), read with
``allow_pickle=False``. Uncompressed ``.csv`` files are accepted too. ``split_type`` is the one folder under
``split/`` (``time`` for arxiv, ``sales_ranking`` for products) unless ``split`` names one. The processed files
(``processed/geometric_data_processed.pt``) are pickles of PyG objects: loading one can run code, so they are not read.

Every file is checked (a one-line ``MoezooError`` naming it): present, parseable, shapes against each other, node
ids in range, labels integers >= 0 where present, split ids in range, non-empty, disjoint and labelled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import Data
from torch_geometric.utils import to_undirected

from moezoo.errors import MoezooError

RAW_FILES = ("edge", "node-feat", "node-label", "num-node-list", "num-edge-list")
SPLITS = {"train": "train", "val": "valid", "test": "test"}


def ogb_folder(root: Path, name: str) -> Path:
    """Where ``ogb`` keeps ``name``: ``root/ogbn_arxiv`` for ``ogbn-arxiv``."""
    return root / name.replace("-", "_")


def _csv_path(folder: Path, stem: str) -> Path | None:
    for suffix in (".csv.gz", ".csv"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _read_csv(path: Path, dtype=None) -> np.ndarray:
    """A headerless numeric CSV (gzip by suffix) as a 2-D array, or a MoezooError naming the file."""
    try:
        frame = pd.read_csv(path, header=None, dtype=dtype, compression="infer")
    except pd.errors.EmptyDataError:
        return np.empty((0, 0), dtype=dtype or np.int64)
    except Exception as error:  # gzip, parser, unicode and value errors all end here
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise MoezooError(f"{path}: not a readable numeric CSV ({reason})") from None
    values = frame.to_numpy()
    if values.dtype.kind not in "biuf":
        kinds = sorted(set(map(str, frame.dtypes)))
        raise MoezooError(f"{path}: holds values that are not numbers (column types {kinds})")
    return values


def _integers(values: np.ndarray, path: Path, what: str) -> np.ndarray:
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or (values != np.round(values)).any():
            raise MoezooError(f"{path}: {what} must be integers, found non-integer values")
        values = values.astype(np.int64)
    return values.astype(np.int64, copy=False)


def _read_raw_csv(raw: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    paths = {stem: _csv_path(raw, stem) for stem in RAW_FILES}
    missing = [f"{stem}.csv.gz" for stem, path in paths.items() if path is None]
    if missing:
        raise MoezooError(f"{raw}: missing OGB raw files {', '.join(missing)} (or raw/data.npz + raw/node-label.npz)")
    num_nodes_list = _integers(_read_csv(paths["num-node-list"]), paths["num-node-list"], "node counts").reshape(-1)
    num_edges_list = _integers(_read_csv(paths["num-edge-list"]), paths["num-edge-list"], "edge counts").reshape(-1)
    edges = _integers(_read_csv(paths["edge"]), paths["edge"], "node ids")
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise MoezooError(f"{paths['edge']}: must have two columns (source, target), got shape {list(edges.shape)}")
    features = _read_csv(paths["node-feat"], dtype=np.float32)
    labels = _read_csv(paths["node-label"], dtype=np.float64)
    return edges.T, features, labels, _one_graph(num_nodes_list, num_edges_list, edges.shape[0], raw)


def _npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as error:  # not a zip, damaged, a pickled (object) array
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise MoezooError(f"{path}: not a readable npz file of numeric arrays ({reason})") from None


def _read_raw_binary(raw: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    if not (raw / "node-label.npz").is_file():
        raise MoezooError(f"{raw}: has data.npz but no node-label.npz (the labels of OGB's binary format)")
    graph, label_file = _npz(raw / "data.npz"), _npz(raw / "node-label.npz")
    missing = [k for k in ("edge_index", "node_feat", "num_nodes_list", "num_edges_list") if k not in graph]
    if missing:
        raise MoezooError(f"{raw / 'data.npz'}: missing arrays {missing} (has {sorted(graph)})")
    if "node_label" not in label_file:
        raise MoezooError(f"{raw / 'node-label.npz'}: missing array 'node_label' (has {sorted(label_file)})")
    edges = _integers(graph["edge_index"], raw / "data.npz", "edge_index")
    if edges.ndim != 2 or edges.shape[0] != 2:
        raise MoezooError(f"{raw / 'data.npz'}: edge_index must have shape [2, edges], got {list(edges.shape)}")
    num_nodes = _one_graph(graph["num_nodes_list"].reshape(-1), graph["num_edges_list"].reshape(-1), edges.shape[1],
                           raw / "data.npz")
    features, labels = graph["node_feat"], label_file["node_label"]
    for key, value, path in (("node_feat", features, raw / "data.npz"), ("node_label", labels, raw / "node-label.npz")):
        if value.dtype.kind not in "biuf":
            raise MoezooError(f"{path}: {key} must hold numbers, got dtype {value.dtype}")
    return edges, features.astype(np.float32), labels.astype(np.float64), num_nodes


def _one_graph(num_nodes_list: np.ndarray, num_edges_list: np.ndarray, num_edges: int, where: Path) -> int:
    if len(num_nodes_list) != 1 or len(num_edges_list) != 1:
        raise MoezooError(f"{where}: num-node-list and num-edge-list must each hold one count (one graph), got "
                          f"{len(num_nodes_list)} and {len(num_edges_list)}")
    if int(num_edges_list[0]) != num_edges:
        raise MoezooError(f"{where}: num-edge-list says {int(num_edges_list[0])} edges but the edge file has "
                          f"{num_edges}")
    if int(num_nodes_list[0]) <= 0:
        raise MoezooError(f"{where}: num-node-list says {int(num_nodes_list[0])} nodes; needs at least one")
    return int(num_nodes_list[0])


def _split(folder: Path, split_type: str | None, num_nodes: int, labels: np.ndarray) -> dict[str, torch.Tensor]:
    base = folder / "split"
    types = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if split_type is None:
        if len(types) != 1:
            raise MoezooError(f"{base}: expected one split folder (e.g. time, sales_ranking), found "
                              f"{types or 'none'}; name one with --data.ogb_split")
        split_type = types[0]
    elif split_type not in types:
        raise MoezooError(f"data.ogb_split={split_type!r}: no such folder in {base} (has {types or 'none'})")
    masks = {}
    for stage, stem in SPLITS.items():
        path = _csv_path(base / split_type, stem)
        if path is None:
            raise MoezooError(f"{base / split_type}: missing {stem}.csv.gz (one node id per line)")
        index = _integers(_read_csv(path), path, "node ids").reshape(-1)
        if index.size == 0:
            raise MoezooError(f"{path}: selects no node (the {stem} split needs nodes)")
        if index.min() < 0 or index.max() >= num_nodes:
            raise MoezooError(f"{path}: node id {int(index.max() if index.max() >= num_nodes else index.min())} "
                              f"out of range (valid ids 0..{num_nodes - 1})")
        if (labels[index] < 0).any():
            raise MoezooError(f"{path}: {int((labels[index] < 0).sum())} of its nodes have no label")
        mask = torch.zeros(num_nodes, dtype=torch.bool)
        mask[torch.tensor(index)] = True
        masks[stage] = mask
    if (masks["train"] & masks["val"]).any() or (masks["train"] & masks["test"]).any() \
            or (masks["val"] & masks["test"]).any():
        raise MoezooError(f"{base / split_type}: the train, valid and test node ids overlap (they must be disjoint)")
    return masks


def read_ogb_node_dataset(root: Path, name: str, split_type: str | None = None) -> Data:
    """An OGB node-classification set under ``root`` (see the module docstring), edges made undirected."""
    folder = ogb_folder(root, name)
    raw = folder / "raw"
    if not raw.is_dir():
        raise MoezooError(f"data.root: no OGB folder {raw} (expected <root>/{folder.name}/raw and split/)")
    binary = (raw / "data.npz").is_file()
    edges, features, labels, num_nodes = (_read_raw_binary if binary else _read_raw_csv)(raw)
    label_file = raw / ("node-label.npz" if binary else "node-label.csv.gz")
    feature_file = raw / ("data.npz" if binary else "node-feat.csv.gz")
    if features.ndim != 2 or features.shape[0] != num_nodes or features.shape[1] == 0:
        raise MoezooError(f"{feature_file}: node features must be [{num_nodes}, features], got "
                          f"{list(features.shape)}")
    if not np.isfinite(features).all():
        raise MoezooError(f"{feature_file}: node features hold {int((~np.isfinite(features)).sum())} values that are "
                          "not finite in float32")
    labels = labels.reshape(labels.shape[0], -1) if labels.ndim else labels
    if labels.ndim != 2 or labels.shape != (num_nodes, 1):
        raise MoezooError(f"{label_file}: labels must be [{num_nodes}, 1] (one class per node; multi-task sets "
                          f"such as ogbn-proteins are not node classification), got {list(labels.shape)}")
    labels = labels[:, 0]
    known = np.isfinite(labels)
    if (labels[known] < 0).any() or (labels[known] != np.round(labels[known])).any():
        raise MoezooError(f"{label_file}: labels must be class ids 0, 1, ... (or NaN for no label)")
    y = np.where(known, labels, -1).astype(np.int64)
    if edges.size and (edges.min() < 0 or edges.max() >= num_nodes):
        raise MoezooError(f"{raw}: edges point to node {int(edges.max() if edges.max() >= num_nodes else edges.min())}"
                          f" but there are {num_nodes} nodes (valid ids 0..{num_nodes - 1})")
    masks = _split(folder, split_type, num_nodes, y)
    if int(y.max()) < 1:
        raise MoezooError(f"{label_file}: needs at least two classes, found {int(y.max()) + 1}")
    edge_index = to_undirected(torch.as_tensor(edges), num_nodes=num_nodes)
    return Data(x=torch.as_tensor(features), edge_index=edge_index, y=torch.as_tensor(y),
                train_mask=masks["train"], val_mask=masks["val"], test_mask=masks["test"])
