"""Node-classification graphs for full-batch training: Planetoid raw files and the heterophilous-graph npz format.

- Embedded default (``root: null``): Cora, shipped with moezoo (Planetoid raw files, MIT), public split.
- Planetoid (``name: Cora|CiteSeer|PubMed``): ``root/<name>/raw/ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}``,
  read offline with PyG's ``read_planetoid_data`` (nothing is written next to the data), public split.
- Heterophilous benchmark (Platonov et al. 2023, ``name: minesweeper|tolokers|...``): ``root/<name>.npz`` with
  ``node_features``, ``node_labels``, ``edges`` (each undirected edge once) and ten fixed ``train/val/test_masks``;
  ``split`` picks one. Binary sets are scored with ROC-AUC, as the benchmark prescribes.

Each batch is the whole graph (a PyG ``Data`` with ``train_mask``/``val_mask``/``test_mask``), with both
``edge_index`` and ``adj_t`` (the transposed adjacency as a torch sparse CSR matrix, PyG's ``ToSparseTensor``): GCN,
GraphSAGE and GIN aggregate with one sparse-dense matmul on ``adj_t`` (4-6x faster per epoch on tolokers' 1M edges
than gather/scatter over ``edge_index``); GAT needs per-edge attention and uses ``edge_index``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch_geometric.transforms as T
from torch.utils.data import DataLoader
from torch_geometric.data import Data
from torch_geometric.utils import degree, to_undirected

from moezoo.errors import MoezooError
from moezoo.training.data import SplitDataModule

PLANETOID = ("cora", "citeseer", "pubmed")
PLANETOID_FILES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
EMBEDDED_CORA = Path(__file__).parent / "cora"


def read_planetoid(root: Path, name: str) -> Data:
    """Planetoid raw files of ``name`` under ``root/<name>/raw`` (or ``root/raw``), with the public split."""
    from torch_geometric.io import read_planetoid_data

    candidates = [root / name / "raw", root / "raw", root]
    prefix = name.lower()
    for raw in candidates:
        if all((raw / f"ind.{prefix}.{part}").is_file() for part in PLANETOID_FILES):
            return read_planetoid_data(str(raw), prefix)
    looked = ", ".join(f"ind.{prefix}.{part}" for part in PLANETOID_FILES)
    raise MoezooError(f"data.root: no Planetoid files for {name!r} in {candidates[0]} (looked for {looked})")


def read_heterophilous_npz(path: Path, split: int) -> Data:
    """One of the ten fixed splits of a heterophilous-benchmark npz; edges made undirected."""
    if not path.is_file():
        raise MoezooError(f"data.root: no such file: {path} (expected <root>/<name>.npz)")
    with np.load(path) as npz:
        missing = [k for k in ("node_features", "node_labels", "edges", "train_masks", "val_masks", "test_masks")
                   if k not in npz.files]
        if missing:
            raise MoezooError(f"{path}: missing arrays {missing} (has {npz.files})")
        x = torch.as_tensor(npz["node_features"], dtype=torch.float32)
        y = torch.as_tensor(npz["node_labels"], dtype=torch.long)
        edges = torch.as_tensor(npz["edges"], dtype=torch.long)
        masks = {k: torch.as_tensor(npz[f"{k}_masks"], dtype=torch.bool) for k in ("train", "val", "test")}
    num_nodes = x.shape[0]
    if y.shape[0] != num_nodes:
        raise MoezooError(f"{path}: node_labels has {y.shape[0]} entries but node_features has {num_nodes} nodes")
    if edges.numel() and (edges.min() < 0 or edges.max() >= num_nodes):
        raise MoezooError(f"{path}: edges point to node {int(edges.max())} but there are {num_nodes} nodes "
                          f"(valid ids 0..{num_nodes - 1})")
    num_splits = masks["train"].shape[0]
    if not 0 <= split < num_splits:
        raise MoezooError(f"data.split={split} is out of range: {path} has {num_splits} splits (0..{num_splits - 1})")
    edge_index = to_undirected(edges.t().contiguous(), num_nodes=num_nodes)
    return Data(x=x, edge_index=edge_index, y=y, train_mask=masks["train"][split], val_mask=masks["val"][split],
                test_mask=masks["test"][split])


class _WholeGraph(torch.utils.data.Dataset):
    """A dataset of one item: the whole graph."""

    def __init__(self, data: Data):
        self.data = data

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return self.data


class GraphData(SplitDataModule):
    """A node-classification graph as one full batch (the same batch for every stage: the masks pick the nodes).

    Args:
        root: folder holding the data (see the module docstring); None uses the embedded Cora.
        name: ``Cora``/``CiteSeer``/``PubMed`` (Planetoid) or the npz stem (``minesweeper``, ``tolokers``, ...).
        split: which of an npz's fixed splits (0..9); Planetoid uses its public split.
        normalize_features: row-normalise features to sum 1 with PyG's ``NormalizeFeatures`` (the usual choice
            for Planetoid bag-of-words; it first shifts all features by their minimum, and leaves a row whose sum
            is below 1 as it is). Default: on for Planetoid, off for the npz sets.
        metric: ``acc``, ``roc_auc`` or ``auto`` (ROC-AUC for two-class data, accuracy otherwise).
    """

    def __init__(self, root: str | None = None, name: str = "Cora", split: int = 0,
                 normalize_features: bool | None = None,
                 metric: Literal["auto", "acc", "roc_auc"] = "auto"):
        super().__init__()
        self.root = None if root is None else Path(root).expanduser()
        self.name, self.split, self.metric_arg = name, split, metric
        self.normalize_features = name.lower() in PLANETOID if normalize_features is None else normalize_features
        self.data: Data | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        if self.metric_arg not in ("auto", "acc", "roc_auc"):
            raise MoezooError(f"data.metric must be auto, acc or roc_auc, got {self.metric_arg!r}")
        if self.root is None:
            if self.name.lower() != "cora":
                raise MoezooError(f"data.name={self.name!r} needs --data.root (only Cora is embedded)")
            data = read_planetoid(EMBEDDED_CORA, "cora")
        elif self.name.lower() in PLANETOID:
            if not self.root.is_dir():
                raise MoezooError(f"data.root: no such directory: {self.root}")
            data = read_planetoid(self.root, self.name)
        else:
            data = read_heterophilous_npz(self.root / f"{self.name}.npz", self.split)
        if self.normalize_features:
            data = T.NormalizeFeatures()(data)
        data.degree = degree(data.edge_index[1], data.num_nodes)
        with warnings.catch_warnings():  # torch's one-time "sparse CSR is beta" notices, not the user's concern
            warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
            self.data = T.ToSparseTensor(remove_edge_index=False)(data)
        whole = _WholeGraph(self.data)
        self.splits = {"train": whole, "val": whole, "test": whole}

    @property
    def num_features(self) -> int:
        self.setup()
        return self.data.num_features

    @property
    def num_classes(self) -> int:
        self.setup()
        return int(self.data.y.max()) + 1

    @property
    def metric(self) -> str:
        if self.metric_arg != "auto":
            return self.metric_arg
        return "roc_auc" if self.num_classes == 2 else "acc"

    @property
    def monitor(self) -> str:
        """The validation metric that picks the best checkpoint."""
        return f"val/{self.metric}"

    def make_loader(self, dataset, shuffle: bool) -> DataLoader:
        """The whole graph as the one batch of every loader (never shuffled)."""
        return DataLoader(dataset, batch_size=None)
