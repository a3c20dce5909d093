"""Node-classification graphs, trained full-batch or on sampled mini-batches: Planetoid, heterophilous npz, OGB, LINKX.

- Embedded default (``root: null``): Cora, shipped with moezoo (Planetoid raw files, MIT), public split.
- Planetoid (``name: Cora|CiteSeer|PubMed``): ``root/<name>/raw/ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}``,
  read offline, without trusting the pickles (``planetoid.py``: a restricted unpickler and checked arrays; PyG's
  ``read_planetoid_data`` assembly), nothing written next to the data, public split.
- Heterophilous benchmark (Platonov et al. 2023, ``name: minesweeper|tolokers|...``): ``root/<name>.npz`` with
  ``node_features``, ``node_labels``, ``edges`` (each undirected edge once) and ten fixed ``train/val/test_masks``;
  ``split`` picks one. Binary sets are scored with ROC-AUC, as the benchmark prescribes.
- OGB node property prediction (``name: ogbn-arxiv|ogbn-products|...``): ``root/ogbn_arxiv/raw`` CSVs (or OGB's
  binary npz) and ``split/<type>/`` (``ogb.py``).
- LINKX Facebook100 (``name: Penn94|...``): ``root/<name>.mat`` (or ``root/facebook100/``), a seeded random
  50/25/25 split of the labelled nodes (``linkx.py``).

``sampler: full`` (the default): each training batch is the whole graph. ``sampler: neighbor``: PyG's
``NeighborLoader`` over the train nodes (``num_neighbors`` per hop, ``batch_size`` seeds, shuffled; ``sampling.py``).
Validation, test and predict score every node without gradients, as full-batch evaluation scores it, in one of two
ways (``inference``): ``full`` (the default), one whole-graph pass; ``layerwise``, PyG's layer-wise inference
(``layerwise.py``): each layer for all nodes, ``inference_batch_size`` target nodes at a time on their full one-hop
neighbourhoods, so that only one layer's [nodes, hidden] outputs and one batch's subgraph are held (GAT's
whole-graph pass holds [edges, heads x hidden]); its logits equal the whole-graph pass's.
In a multi-process run (DDP) the train nodes are
split between the processes without overlap: sampled, a ``DistributedSampler`` (reshuffled every epoch, ``drop_last``)
over the seeds; full-batch, each process's ``train_mask`` keeps a fixed disjoint share (a seeded permutation dealt
round-robin), so the processes' averaged gradients are those of the whole train set.

Each whole-graph batch (a PyG ``Data`` with ``train_mask``/``val_mask``/``test_mask``), with both
``edge_index`` and ``adj_t`` (the transposed adjacency as a torch sparse CSR matrix, PyG's ``ToSparseTensor``): GCN,
GraphSAGE and GIN aggregate with one sparse-dense matmul on ``adj_t`` (4-6x faster per epoch on tolokers' 1M edges
than gather/scatter over ``edge_index``); GAT needs per-edge attention and uses ``edge_index``.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch_geometric.transforms as T
from torch.utils.data import DataLoader, DistributedSampler
from torch_geometric.data import Data
from torch_geometric.utils import degree, to_undirected

from moezoo.errors import MoezooError
from moezoo.training.data import SplitDataModule

from . import planetoid
from .linkx import fb100_path, read_fb100_mat
from .ogb import read_ogb_node_dataset
from .sampling import neighbor_loader

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
        raise MoezooError(f"data.root: no such file: {path} (expected <root>/<name>.npz, a LINKX <root>/<name>.mat, "
                          "or an ogbn-* name)")
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
    """A node-classification graph: one full batch, or sampled mini-batches of seed nodes for training.

    Args:
        root: folder holding the data (see the module docstring); None uses the embedded Cora.
        name: ``Cora``/``CiteSeer``/``PubMed`` (Planetoid), ``ogbn-<name>`` (OGB), a ``.mat`` stem (LINKX
            Facebook100, ``Penn94``) or the npz stem (``minesweeper``, ``tolokers``, ...).
        split: which of an npz's fixed splits (0..9); the seed of a ``.mat`` set's random split; Planetoid and OGB
            use their own split.
        ogb_split: the folder under an OGB set's ``split/`` (default: the only one there).
        sampler: ``full`` (the whole graph per training step) or ``neighbor`` (PyG's NeighborLoader).
        num_neighbors: ``neighbor``: in-neighbours sampled per node at each hop (``-1``: all); as many hops as the
            GNN has layers.
        batch_size: ``neighbor``: seed (train) nodes per batch.
        num_workers: ``neighbor``: DataLoader worker processes that sample.
        inference: how validation, test and predict score every node: ``full`` (one whole-graph pass) or
            ``layerwise`` (PyG's layer-wise inference, bounded memory, the same logits).
        inference_batch_size: ``layerwise``: target nodes per step of a layer.
        normalize_features: row-normalise features to sum 1 with PyG's ``NormalizeFeatures`` (the usual choice
            for Planetoid bag-of-words; it first shifts all features by their minimum, and leaves a row whose sum
            is below 1 as it is). Default: on for Planetoid, off for the npz sets.
        metric: ``acc``, ``roc_auc`` or ``auto`` (ROC-AUC for two-class data, accuracy otherwise).
    """

    model_links = {"num_features": "num_features", "num_classes": "num_classes", "metric": "metric"}

    def __init__(self, root: str | None = None, name: str = "Cora", split: int = 0,
                 normalize_features: bool | None = None,
                 metric: Literal["auto", "acc", "roc_auc"] = "auto", ogb_split: str | None = None,
                 sampler: Literal["full", "neighbor"] = "full", num_neighbors: list[int] | None = None,
                 batch_size: int = 1024, num_workers: int = 0,
                 inference: Literal["full", "layerwise"] = "full", inference_batch_size: int = 4096):
        super().__init__()
        self.root = None if root is None else Path(root).expanduser()
        self.name, self.split, self.metric_arg, self.ogb_split = name, split, metric, ogb_split
        self.sampler, self.batch_size, self.num_workers = sampler, batch_size, num_workers
        self.num_neighbors = [15, 10] if num_neighbors is None else list(num_neighbors)
        _check_sampling(sampler, self.num_neighbors, batch_size, num_workers, inference, inference_batch_size)
        self.inference, self.inference_batch_size = inference, inference_batch_size
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
        elif self.name.lower().startswith("ogbn-"):
            data, source = read_ogb_node_dataset(self.root, self.name.lower(), self.ogb_split), self.root
        elif fb100_path(self.root, self.name) is not None:
            source = fb100_path(self.root, self.name)
            data = read_fb100_mat(source, self.split)
        else:
            source = self.root / f"{self.name}.npz"
            data = read_heterophilous_npz(source, self.split)
        if self.normalize_features:
            data = T.NormalizeFeatures()(data)
            if not torch.isfinite(data.x).all():  # finite features whose row sums overflow float32
                raise MoezooError(f"{source}: node features too large to row-normalise (a row sums past 3.4e38); "
                                  "use --data.normalize_features false")
        data.degree = degree(data.edge_index[1], data.num_nodes)
        # what the sampler reads: the same tensors without adj_t (a subgraph is sliced from edge_index)
        self.sample_graph = Data(**{key: data[key] for key in data.keys() if key != "adj_t"})
        with warnings.catch_warnings():  # torch's one-time "sparse CSR is beta" notices, not the user's concern
            warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
            self.data = T.ToSparseTensor(remove_edge_index=False)(data)
        evaluated = self.data
        if self.inference == "layerwise":  # the experts read it and score the nodes layer by layer (model.py)
            evaluated = copy.copy(self.data)
            evaluated.layerwise_batch_size = self.inference_batch_size
        self.splits = {"train": _WholeGraph(self.data), "val": _WholeGraph(evaluated), "test": _WholeGraph(evaluated)}

    @property
    def num_features(self) -> int:
        self.setup()
        return self.data.num_features

    @property
    def num_classes(self) -> int:
        self.setup()
        return int(self.data.y.max()) + 1  # unlabelled nodes (OGB's NaN, LINKX's missing gender) are -1

    def train_dataloader(self):
        """The train batches: the whole graph, or NeighborLoader batches of train seeds; split over processes."""
        self.setup()
        rank, world = _rank_and_world(self.trainer)
        seeds = self.data.train_mask.nonzero().view(-1)
        if self.sampler == "full":
            data = self.data
            if world > 1:  # this process's fixed share of the train nodes: a seeded permutation dealt round-robin
                share = seeds[torch.randperm(seeds.numel(), generator=torch.Generator().manual_seed(0))][rank::world]
                data = copy.copy(data)  # the same tensors, but its own train_mask
                data.train_mask = torch.zeros_like(self.data.train_mask)
                data.train_mask[share] = True
            return DataLoader(_WholeGraph(data), batch_size=None)
        sampler = None
        if world > 1:  # disjoint seed sets per epoch (no padding: drop_last), reshuffled by Lightning's set_epoch
            sampler = DistributedSampler(range(seeds.numel()), num_replicas=world, rank=rank, shuffle=True,
                                         drop_last=True)
        return neighbor_loader(self.sample_graph, seeds, self.num_neighbors, self.batch_size, shuffle=True,
                               sampler=sampler, num_workers=self.num_workers)

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
        """The whole graph as the one batch of the evaluation loaders (never shuffled)."""
        return DataLoader(dataset, batch_size=None)


def _rank_and_world(trainer) -> tuple[int, int]:
    """(global rank, number of processes) of the run, (0, 1) outside one."""
    if trainer is None:
        return 0, 1
    return int(getattr(trainer, "global_rank", 0)), int(getattr(trainer, "world_size", 1))


def _check_sampling(sampler, num_neighbors, batch_size, num_workers, inference, inference_batch_size) -> None:
    for key, value, valid in (("sampler", sampler, ("full", "neighbor")),
                              ("inference", inference, ("full", "layerwise"))):
        if value not in valid:
            raise MoezooError(f"data.{key} must be {' or '.join(valid)}, got {value!r}")
    if not num_neighbors or any(isinstance(k, bool) or not isinstance(k, int) or k < -1 for k in num_neighbors):
        raise MoezooError(f"data.num_neighbors must be a non-empty list of integers >= -1 (one per hop, -1: all), "
                          f"got {num_neighbors!r}")
    for key, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                            ("inference_batch_size", inference_batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MoezooError(f"data.{key} must be an integer >= {low}, got {value!r}")
