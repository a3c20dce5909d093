"""Node-classification graphs for full-batch training: Planetoid raw files and the heterophilous-graph npz format.

- Embedded default (``root: null``): Cora, shipped with moezoo (Planetoid raw files, MIT), public split.
- Planetoid (``name: Cora|CiteSeer|PubMed``): ``root/<name>/raw/ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}``,
  read offline, without trusting the pickles (``planetoid.py``: a restricted unpickler and checked arrays; PyG's
  ``read_planetoid_data`` assembly), nothing written next to the data, public split.
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

from . import planetoid

PLANETOID = ("cora", "citeseer", "pubmed")
PLANETOID_FILES = planetoid.FILES
EMBEDDED_CORA = Path(__file__).parent / "cora"


def read_planetoid(root: Path, name: str) -> Data:
    """Planetoid raw files of ``name`` under ``root/<name>/raw`` (or ``root/raw``), with the public split."""
    candidates = [root / name / "raw", root / "raw", root]
    prefix = name.lower()
    for raw in candidates:
        if all((raw / f"ind.{prefix}.{part}").is_file() for part in PLANETOID_FILES):
            return planetoid.read_planetoid_data(raw, prefix)
    looked = ", ".join(f"ind.{prefix}.{part}" for part in PLANETOID_FILES)
    raise MoezooError(f"data.root: no Planetoid files for {name!r} in {candidates[0]} (looked for {looked})")


NPZ_ARRAYS = {  # key -> (dimensions, dtype kinds allowed, what it is)
    "node_features": (2, "biuf", "[nodes, features] numbers"),
    "node_labels": (1, "iu", "[nodes] integer class ids"),
    "edges": (2, "iu", "[edges, 2] integer node ids"),
    "train_masks": (2, "b", "[splits, nodes] booleans"),
    "val_masks": (2, "b", "[splits, nodes] booleans"),
    "test_masks": (2, "b", "[splits, nodes] booleans"),
}


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """The six arrays of a heterophilous-benchmark npz, each checked for its rank and dtype (no pickles)."""
    with open(path, "rb") as file:
        head = file.read(4)
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip's local header, or an empty zip's end record
        raise MoezooError(f"{path}: not an npz archive (a zip of .npy arrays); it starts with {head!r}")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as error:  # not a zip, damaged, an object array at the top level, ...
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise MoezooError(f"{path}: not a readable npz file ({reason})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise MoezooError(f"{path}: expected an npz archive of named arrays, got a single {type(npz).__name__}")
    arrays = {}
    with npz:
        missing = [k for k in NPZ_ARRAYS if k not in npz.files]
        if missing:
            raise MoezooError(f"{path}: missing arrays {missing} (has {npz.files})")
        for key, (ndim, kinds, what) in NPZ_ARRAYS.items():
            try:
                value = npz[key]
            except Exception as error:  # a damaged member, an object (pickled) array, a bad header
                reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
                raise MoezooError(f"{path}: cannot read array {key!r} ({reason})") from None
            if value.ndim != ndim or value.dtype.kind not in kinds:
                raise MoezooError(f"{path}: {key} must be {what}, got {value.dtype} of shape {list(value.shape)}")
            arrays[key] = value
    return arrays


def read_heterophilous_npz(path: Path, split: int) -> Data:
    """One of the ten fixed splits of a heterophilous-benchmark npz; edges made undirected.

    Every array is checked before use: shapes against each other, node ids and labels in range (labels 0..C-1
    with every class present, at least two), finite features, and the split's three masks non-empty and disjoint.
    """
    if not path.is_file():
        raise MoezooError(f"data.root: no such file: {path} (expected <root>/<name>.npz)")
    arrays = _npz_arrays(path)
    features, labels, edges = arrays["node_features"], arrays["node_labels"], arrays["edges"]
    num_nodes = features.shape[0]
    if num_nodes == 0 or features.shape[1] == 0:
        raise MoezooError(f"{path}: node_features has shape {list(features.shape)}; needs nodes and features")
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become inf: refused just below
        x = torch.as_tensor(features.astype(np.float32))
    if not torch.isfinite(x).all():
        raise MoezooError(f"{path}: node_features holds {int((~torch.isfinite(x)).sum())} values that are not "
                          "finite in float32 (inf, nan or beyond 3.4e38)")
    if labels.shape[0] != num_nodes:
        raise MoezooError(f"{path}: node_labels has {labels.shape[0]} entries but node_features has {num_nodes} nodes")
    classes = np.unique(labels)
    if classes[0] < 0 or classes[-1] != len(classes) - 1 or len(classes) < 2:
        raise MoezooError(f"{path}: node_labels must be class ids 0..C-1 with every class present and C >= 2; "
                          f"found {len(classes)} distinct values from {int(classes[0])} to {int(classes[-1])}")
    if edges.shape[1] != 2:
        raise MoezooError(f"{path}: edges must have shape [edges, 2] (one row per edge), got {list(edges.shape)}")
    if edges.size and (edges.min() < 0 or edges.max() >= num_nodes):
        bad = int(edges.max()) if edges.max() >= num_nodes else int(edges.min())
        raise MoezooError(f"{path}: edges point to node {bad} but there are {num_nodes} nodes "
                          f"(valid ids 0..{num_nodes - 1})")
    masks = {k: arrays[f"{k}_masks"] for k in ("train", "val", "test")}
    num_splits = masks["train"].shape[0]
    for name, mask in masks.items():
        if mask.shape != (num_splits, num_nodes):
            raise MoezooError(f"{path}: {name}_masks has shape {list(mask.shape)}; expected [splits, nodes] = "
                              f"[{num_splits}, {num_nodes}] like train_masks")
    if not 0 <= split < num_splits:
        raise MoezooError(f"data.split={split} is out of range: {path} has {num_splits} splits (0..{num_splits - 1})")
    chosen = {name: mask[split] for name, mask in masks.items()}
    for name, mask in chosen.items():
        if not mask.any():
            raise MoezooError(f"{path}: {name}_masks[{split}] selects no node (split {split} needs {name} nodes)")
    if (chosen["train"] & chosen["val"]).any() or (chosen["train"] & chosen["test"]).any() \
            or (chosen["val"] & chosen["test"]).any():
        raise MoezooError(f"{path}: the train, val and test masks of split {split} overlap (they must be disjoint)")
    edge_index = to_undirected(torch.as_tensor(edges.astype(np.int64)).t().contiguous(), num_nodes=num_nodes)
    return Data(x=x, edge_index=edge_index, y=torch.as_tensor(labels.astype(np.int64)),
                train_mask=torch.as_tensor(chosen["train"]), val_mask=torch.as_tensor(chosen["val"]),
                test_mask=torch.as_tensor(chosen["test"]))


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

    model_links = {"num_features": "num_features", "num_classes": "num_classes", "metric": "metric"}

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
            data, source = read_planetoid(EMBEDDED_CORA, "cora"), EMBEDDED_CORA
        elif self.name.lower() in PLANETOID:
            if not self.root.is_dir():
                raise MoezooError(f"data.root: no such directory: {self.root}")
            data, source = read_planetoid(self.root, self.name), self.root / self.name
        else:
            source = self.root / f"{self.name}.npz"
            data = read_heterophilous_npz(source, self.split)
        if self.normalize_features:
            data = T.NormalizeFeatures()(data)
            if not torch.isfinite(data.x).all():  # finite features whose row sums overflow float32
                raise MoezooError(f"{source}: node features too large to row-normalise (a row sums past 3.4e38); "
                                  "use --data.normalize_features false")
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
