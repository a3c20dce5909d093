"""The OGB node-property folder (raw CSVs and the binary npz) and the LINKX Facebook100 .mat, on small files the
tests write in those layouts; read through GraphData and trained through the CLI; damaged files are one-line errors."""

import gzip
import json

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse
import torch

from moezoo.cli import main
from moezoo.errors import MoezooError
from moezoo.tasks.graph import GraphData

QUIET = ["--trainer.enable_progress_bar", "false"]
N, F, C = 90, 5, 3


def _toy_graph(seed=0):
    rng = np.random.default_rng(seed)
    edges = rng.integers(0, N, size=(300, 2))
    edges = edges[edges[:, 0] != edges[:, 1]]
    features = rng.normal(size=(N, F)).astype(np.float32)
    labels = rng.integers(0, C, size=N)
    labels[:C] = np.arange(C)  # every class present
    return edges, features, labels


def write_ogb_csv(root, name="ogbn-toy", split_type="time", labels=None):
    """The folder ogb's NodePropPredDataset downloads: <root>/ogbn_toy/raw/*.csv.gz and split/<type>/*.csv.gz."""
    edges, features, toy_labels = _toy_graph()
    labels = toy_labels if labels is None else labels
    folder = root / name.replace("-", "_")
    (folder / "raw").mkdir(parents=True)
    frames = {"edge": pd.DataFrame(edges), "node-feat": pd.DataFrame(features), "node-label": pd.DataFrame(labels),
              "num-node-list": pd.DataFrame([N]), "num-edge-list": pd.DataFrame([len(edges)])}
    for stem, frame in frames.items():
        frame.to_csv(folder / "raw" / f"{stem}.csv.gz", header=False, index=False, compression="gzip")
    order = np.random.default_rng(1).permutation(N)
    (folder / "split" / split_type).mkdir(parents=True)
    for stem, index in (("train", order[:45]), ("valid", order[45:65]), ("test", order[65:])):
        pd.DataFrame(index).to_csv(folder / "split" / split_type / f"{stem}.csv.gz", header=False, index=False,
                                   compression="gzip")
    return folder, edges, features, labels, order


def write_fb100(path, seed=0):
    """A Facebook100 .mat: A (sparse symmetric) and local_info [N, 6] (column 1: gender 0 missing, 1, 2)."""
    rng = np.random.default_rng(seed)
    edges, _, _ = _toy_graph(seed)
    a = scipy.sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(N, N)).tocsc()
    a = ((a + a.T) > 0).astype(np.float64)
    info = np.stack([rng.integers(1, 3, N), rng.integers(0, 3, N), rng.integers(0, 6, N), rng.integers(0, 4, N),
                     rng.integers(0, 5, N), rng.integers(2004, 2010, N)], axis=1)
    info[:2, 1] = [1, 2]
    scipy.io.savemat(path, {"A": a, "local_info": info.astype(np.float64)})
    return a, info


def test_ogb_raw_csv_folder_reads_as_ogb_builds_it(tmp_path):
    folder, edges, features, labels, order = write_ogb_csv(tmp_path)
    dm = GraphData(root=str(tmp_path), name="ogbn-toy")
    dm.setup()
    data = dm.data
    assert data.num_nodes == N and dm.num_features == F and dm.num_classes == C
    torch.testing.assert_close(data.x, torch.as_tensor(features))
    assert torch.equal(data.y, torch.as_tensor(labels))
    assert data.train_mask.nonzero().view(-1).tolist() == sorted(order[:45].tolist())
    assert data.val_mask.sum() == 20 and data.test_mask.sum() == 25
    undirected = {tuple(e) for e in edges.tolist()} | {tuple(e[::-1]) for e in edges.tolist()}
    assert set(map(tuple, data.edge_index.t().tolist())) == undirected  # made undirected, each direction once


def test_ogb_binary_npz_gives_the_same_graph(tmp_path):
    write_ogb_csv(tmp_path / "csv")
    folder, edges, features, labels, _ = write_ogb_csv(tmp_path / "bin")
    for stem in ("edge", "node-feat", "node-label"):
        (folder / "raw" / f"{stem}.csv.gz").unlink()
    np.savez(folder / "raw" / "data.npz", edge_index=edges.T, node_feat=features, num_nodes_list=np.array([N]),
             num_edges_list=np.array([len(edges)]))
    np.savez(folder / "raw" / "node-label.npz", node_label=labels[:, None].astype(np.float64))
    a = GraphData(root=str(tmp_path / "csv"), name="ogbn-toy")
    b = GraphData(root=str(tmp_path / "bin"), name="ogbn-toy")
    a.setup(), b.setup()
    for key in ("x", "y", "edge_index", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(a.data[key], b.data[key]), key


def test_ogb_nan_labels_are_unlabelled_and_split_nodes_must_be_labelled(tmp_path):
    labels = _toy_graph()[2].astype(np.float64)
    order = np.random.default_rng(1).permutation(N)
    labels[order[-1]] = np.nan  # a test node
    write_ogb_csv(tmp_path, labels=labels)
    with pytest.raises(MoezooError, match=r"test\.csv\.gz: 1 of its nodes have no label"):
        GraphData(root=str(tmp_path), name="ogbn-toy").setup()


@pytest.mark.parametrize("damage, message", [
    ("missing", r"missing OGB raw files node-feat\.csv\.gz"),
    ("edge_range", r"edges point to node 90 but there are 90 nodes"),
    ("text", r"node-feat\.csv\.gz: not a readable numeric CSV"),
    ("count", r"num-edge-list says 1 edges"),
    ("overlap", r"overlap"),
    ("two_splits", r"expected one split folder"),
    ("not_gzip", r"edge\.csv\.gz: not a readable numeric CSV"),
])
def test_damaged_ogb_files_are_one_line_errors(tmp_path, damage, message):
    folder, *_ = write_ogb_csv(tmp_path)
    raw = folder / "raw"
    if damage == "missing":
        (raw / "node-feat.csv.gz").unlink()
    elif damage == "edge_range":
        with gzip.open(raw / "edge.csv.gz", "at") as f:
            f.write("0,90\n")
        pd.DataFrame([301]).to_csv(raw / "num-edge-list.csv.gz", header=False, index=False, compression="gzip")
        count = len(pd.read_csv(raw / "edge.csv.gz", header=None))
        pd.DataFrame([count]).to_csv(raw / "num-edge-list.csv.gz", header=False, index=False, compression="gzip")
    elif damage == "text":
        with gzip.open(raw / "node-feat.csv.gz", "at") as f:
            f.write("a,b,c,d,e\n")
    elif damage == "count":
        pd.DataFrame([1]).to_csv(raw / "num-edge-list.csv.gz", header=False, index=False, compression="gzip")
    elif damage == "overlap":
        train = pd.read_csv(folder / "split" / "time" / "train.csv.gz", header=None)
        train.to_csv(folder / "split" / "time" / "test.csv.gz", header=False, index=False, compression="gzip")
    elif damage == "two_splits":
        (folder / "split" / "other").mkdir()
    elif damage == "not_gzip":
        (raw / "edge.csv.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(MoezooError, match=message) as error:
        GraphData(root=str(tmp_path), name="ogbn-toy").setup()
    assert "\n" not in str(error.value)


def test_fb100_mat_reads_as_linkx_builds_it(tmp_path):
    a, info = write_fb100(tmp_path / "Penn94.mat")
    dm = GraphData(root=str(tmp_path), name="Penn94", split=3)
    dm.setup()
    data = dm.data
    assert torch.equal(data.y, torch.as_tensor(info[:, 1] - 1))
    # one-hot per column except gender: 2 values (one column, as label_binarize gives) + 3 + 4 + 5 + 6
    widths = [1 if len(np.unique(info[:, c])) == 2 else len(np.unique(info[:, c])) for c in (0, 2, 3, 4, 5)]
    assert data.num_features == sum(widths)
    assert torch.all(data.x.sum(1) == sum(w > 1 for w in widths) + torch.as_tensor(info[:, 0] == 2).float())
    labelled = int((info[:, 1] > 0).sum())
    assert int(data.train_mask.sum()) == labelled // 2 and not (data.train_mask & (data.y < 0)).any()
    assert int((data.train_mask | data.val_mask | data.test_mask).sum()) == labelled
    assert data.edge_index.shape[1] == a.nnz and dm.metric == "roc_auc"
    other = GraphData(root=str(tmp_path), name="Penn94", split=4)
    other.setup()
    assert not torch.equal(other.data.train_mask, data.train_mask)  # the split seeds the draw


@pytest.mark.parametrize("damage, message", [("text", r"Penn94\.mat: not a MATLAB file"),
                                             ("no_info", r"missing variables \['local_info'\]"),
                                             ("dense", r"A must be a square sparse adjacency"),
                                             ("gender", r"column 1 \(gender\) must hold 0 \(missing\), 1 and 2")])
def test_damaged_fb100_files_are_one_line_errors(tmp_path, damage, message):
    path = tmp_path / "Penn94.mat"
    a, info = write_fb100(path)
    if damage == "text":
        path.write_text("not a mat file")
    elif damage == "no_info":
        scipy.io.savemat(path, {"A": a})
    elif damage == "dense":
        scipy.io.savemat(path, {"A": np.ones((N, N)), "local_info": info.astype(float)})
    elif damage == "gender":
        info[0, 1] = 7
        scipy.io.savemat(path, {"A": a, "local_info": info.astype(float)})
    with pytest.raises(MoezooError, match=message):
        GraphData(root=str(tmp_path), name="Penn94").setup()


@pytest.mark.parametrize("name", ["ogbn-toy", "Penn94"])
def test_ogb_and_fb100_train_through_the_cli_sampled(name, tmp_path):
    if name == "Penn94":
        write_fb100(tmp_path / "Penn94.mat")
    else:
        write_ogb_csv(tmp_path)
    main(["fit", "--task", "graph/mowst-sage", "--data.root", str(tmp_path), "--data.name", name,
          "--data.sampler", "neighbor", "--data.batch_size", "16", "--data.num_neighbors", "[5, 5]",
          "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_epochs", "2", *QUIET])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    key = "test/roc_auc" if name == "Penn94" else "test/acc"
    assert 0.0 <= metrics[key] <= 1.0
    dm = GraphData(root=str(tmp_path), name=name)
    dm.setup()
    assert metrics["global_step"] == 2 * -(-int(dm.data.train_mask.sum()) // 16)  # one step per batch of 16 seeds
