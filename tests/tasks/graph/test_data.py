"""Graph data: the embedded Cora, Planetoid raw files, the heterophilous npz format, and clear errors."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from moezoo.errors import MoezooError
from moezoo.tasks.graph import GraphData

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "graph"


def _setup(**kw):
    data = GraphData(**kw)
    data.setup()
    return data


def test_embedded_cora_is_the_public_planetoid_split():
    data = _setup()
    g = data.data
    assert (g.num_nodes, g.num_edges, data.num_features, data.num_classes) == (2708, 10556, 1433, 7)
    assert (int(g.train_mask.sum()), int(g.val_mask.sum()), int(g.test_mask.sum())) == (140, 500, 1000)
    assert np.allclose(g.x.sum(-1)[g.x.sum(-1) > 0].numpy(), 1.0), "row-normalised bag of words"
    assert data.monitor == "val/acc"


def test_pyg_normalize_features_gives_cora_the_row_sums_of_one_of_dividing_by_the_row_sum():
    import torch

    from moezoo.tasks.graph.data import EMBEDDED_CORA, read_planetoid

    raw = read_planetoid(EMBEDDED_CORA, "cora").x
    by_hand = raw / raw.sum(-1, keepdim=True).clamp_min(1e-12)
    assert torch.equal(_setup().data.x, by_hand)
    assert torch.equal(_setup(normalize_features=False).data.x, raw)


def test_graph_accuracy_is_the_share_of_masked_nodes_whose_argmax_is_the_label():
    """GraphTask.metrics (torchmetrics' micro multiclass accuracy), scored on the stage's mask of the graph."""
    import torch

    from moezoo.tasks.graph.model import NodeClassifier

    g = _setup().data
    task = NodeClassifier("mlp", num_features=g.num_features, num_classes=7)
    probs = torch.softmax(torch.randn(g.num_nodes, 7, generator=torch.Generator().manual_seed(0)), -1)
    for stage in ("train", "val", "test"):
        mask = getattr(g, f"{stage}_mask")
        expected = (probs[mask].argmax(-1) == g.y[mask]).float().mean()
        assert task.metrics(probs, g, stage)[f"{stage}/acc"] == pytest.approx(float(expected), abs=1e-7)
    perfect = torch.nn.functional.one_hot(g.y, 7).float()
    assert float(task.metrics(perfect, g, "test")["test/acc"]) == 1.0


@pytest.mark.skipif(not (SHARED / "Cora").is_dir(), reason="shared data not present")
def test_planetoid_root_reads_the_raw_files_without_writing(tmp_path):
    root = tmp_path / "graphs"
    shutil.copytree(SHARED / "Cora", root / "Cora")
    data = _setup(root=str(root), name="Cora")
    assert data.data.num_nodes == 2708
    assert not (root / "Cora" / "processed").exists()


def _npz(path, n=10, classes=2, edges=None, splits=10):
    rng = np.random.default_rng(0)
    masks = np.zeros((splits, n), dtype=bool)
    np.savez(path, node_features=rng.normal(size=(n, 3)).astype(np.float32),
             node_labels=np.arange(n) % classes, edges=np.array(edges if edges is not None else [[0, 1], [1, 2]]),
             train_masks=masks | (np.arange(n) % 2 == 0), val_masks=masks | (np.arange(n) % 4 == 1),
             test_masks=masks | (np.arange(n) % 4 == 3))


def test_npz_split_is_chosen_and_edges_made_undirected_and_binary_sets_use_roc_auc(tmp_path):
    _npz(tmp_path / "toy.npz")
    data = _setup(root=str(tmp_path), name="toy", split=3)
    assert data.data.edge_index.shape == (2, 4)
    assert data.monitor == "val/roc_auc" and data.num_classes == 2
    assert _setup(root=str(tmp_path), name="toy", metric="acc").monitor == "val/acc"


@pytest.mark.skipif(not (SHARED / "minesweeper.npz").is_file(), reason="shared data not present")
def test_minesweeper_from_the_shared_data():
    data = _setup(root=str(SHARED), name="minesweeper", split=9)
    assert data.data.num_nodes == 10000 and data.data.num_edges == 78804 and int(data.data.train_mask.sum()) == 5000


@pytest.mark.parametrize("case,match", [
    ("split", "data.split=10 is out of range"),
    ("labels", "node_labels has 9 entries but node_features has 10 nodes"),
    ("edges", "edges point to node 12 but there are 10 nodes"),
    ("missing", "no such file"),
    ("planetoid", "looked for ind.cora.x"),
])
def test_bad_graph_input_is_a_clear_error(tmp_path, case, match):
    kw = dict(root=str(tmp_path), name="toy")
    if case == "split":
        _npz(tmp_path / "toy.npz")
        kw["split"] = 10
    elif case == "labels":
        _npz(tmp_path / "toy.npz")
        z = dict(np.load(tmp_path / "toy.npz"))
        z["node_labels"] = z["node_labels"][:9]
        np.savez(tmp_path / "toy.npz", **z)
    elif case == "edges":
        _npz(tmp_path / "toy.npz", edges=[[0, 12]])
    elif case == "planetoid":
        kw["name"] = "Cora"
    with pytest.raises(MoezooError, match=match):
        _setup(**kw)


@pytest.mark.parametrize("kind", ["gcn", "sage", "gin", "gat"])
def test_sparse_adjacency_gives_the_same_logits_as_edge_index(kind):
    """adj_t (sparse matmul) is a faster route to the same aggregation as gather/scatter over edge_index."""
    import torch

    from moezoo.tasks.graph.model import build_expert, expert_logits

    g = _setup().data
    assert g.adj_t.layout == torch.sparse_csr and g.adj_t.shape == (g.num_nodes, g.num_nodes)
    torch.manual_seed(0)
    model = build_expert(kind, g.num_features, 16, 7, 2, 0.0).eval()
    reference = build_expert(kind, g.num_features, 16, 7, 2, 0.0).eval()
    reference.load_state_dict(model.state_dict())
    if kind == "gcn":
        reference.convs[0].cached = reference.convs[1].cached = False
    with torch.no_grad():
        expected = reference(g.x, g.edge_index)
        torch.testing.assert_close(expert_logits(model, g), expected, atol=1e-5, rtol=1e-4)


# -- damaged and untrusted Planetoid files (issue #15) -----------------------------------------------------------------
def _cora_copy(tmp_path):
    from moezoo.tasks.graph.data import EMBEDDED_CORA

    root = tmp_path / "graphs"
    shutil.copytree(EMBEDDED_CORA / "raw", root / "Cora" / "raw")
    return root, root / "Cora" / "raw"


def test_safe_planetoid_reader_gives_exactly_what_pyg_reads_from_cora():
    import torch
    from torch_geometric.io import read_planetoid_data as pyg_read

    from moezoo.tasks.graph.data import EMBEDDED_CORA
    from moezoo.tasks.graph.planetoid import read_planetoid_data

    ours, theirs = read_planetoid_data(EMBEDDED_CORA / "raw", "cora"), pyg_read(str(EMBEDDED_CORA / "raw"), "cora")
    for key in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(ours[key], theirs[key]), key


def test_citeseer_test_nodes_that_test_index_skips_get_zero_rows_as_in_pyg(tmp_path):
    """CiteSeer's isolated test nodes: test.index skips ids; PyG (and we) give them zero features and label 0."""
    import pickle
    from collections import defaultdict

    import scipy.sparse as sp
    import torch
    from torch_geometric.io import read_planetoid_data as pyg_read

    from moezoo.tasks.graph.planetoid import read_planetoid_data

    rng = np.random.default_rng(0)
    n_all, n_test, features, classes = 503, 3, 4, 2

    def csr(rows):
        return sp.random(rows, features, density=0.6, format="csr", dtype=np.float32, random_state=rng) + 0

    def one_hot(rows):
        return np.eye(classes, dtype=np.int32)[np.arange(rows) % classes]

    test = np.array([n_all + 3, n_all, n_all + 1])  # n_all + 2 is skipped
    graph = defaultdict(list, {i: [(i + 1) % (n_all + 4)] for i in range(n_all + 4)})
    parts = {"x": csr(2), "tx": csr(n_test), "allx": csr(n_all), "y": one_hot(2), "ty": one_hot(n_test),
             "ally": one_hot(n_all), "graph": graph}
    for part, value in parts.items():
        (tmp_path / f"ind.citeseer.{part}").write_bytes(pickle.dumps(value, protocol=2))
    (tmp_path / "ind.citeseer.test.index").write_text("\n".join(map(str, test)) + "\n")
    ours, theirs = read_planetoid_data(tmp_path, "citeseer"), pyg_read(str(tmp_path), "citeseer")
    for key in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(ours[key], theirs[key]), key
    assert ours.num_nodes == n_all + 4 and ours.x[n_all + 2].abs().sum() == 0


def test_a_bit_flip_that_made_pyg_segfault_in_todense_is_a_one_line_error_naming_the_file(tmp_path):
    """Flipping bit 2 of byte 57263 of ind.cora.tx sets a column index to 67,110,073: PyG's reader (pickle.load,
    then scipy's unchecked csr ``todense``) died with SIGSEGV. Run in a child process so that a regression
    shows as a failed test, not a dead pytest."""
    import subprocess
    import sys

    root, raw = _cora_copy(tmp_path)
    damaged = bytearray((raw / "ind.cora.tx").read_bytes())
    damaged[57263] ^= 1 << 2
    (raw / "ind.cora.tx").write_bytes(bytes(damaged))
    code = ("import sys\nfrom moezoo.errors import MoezooError\nfrom moezoo.tasks.graph import GraphData\n"
            "try:\n    GraphData(root=sys.argv[1], name='Cora').setup()\nexcept MoezooError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == (f"{raw / 'ind.cora.tx'}: the csr_matrix has column index 67110073 outside "
                                     "0..1432 (the file is damaged)")


def test_a_pickle_that_calls_outside_the_planetoid_format_is_refused_and_never_runs(tmp_path):
    import os
    import pickle

    class Trap:
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "ran"),)

    root, raw = _cora_copy(tmp_path)
    (raw / "ind.cora.graph").write_bytes(pickle.dumps(Trap(), protocol=2))
    with pytest.raises(MoezooError) as error:
        _setup(root=str(root), name="Cora")
    assert str(error.value) == (f"{raw / 'ind.cora.graph'}: not a readable Planetoid pickle (UnpicklingError: "
                                "refused pickled global posix.mkdir (a Planetoid file holds only numpy arrays, scipy "
                                "csr matrices and a dict of lists))")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("part,damage,match", [
    ("allx", "truncate", "ind.cora.allx: not a readable Planetoid pickle"),
    ("test.index", "text", "ind.cora.test.index: expected one non-negative integer node id per line"),
    ("ty", "labels", "ind.cora.ty: labels must be one-hot rows of 0/1"),
    ("graph", "node", "ind.cora.graph: node 2708 is beyond the 2708 nodes that have features"),
    # unsigned row pointers that decrease: their diff wraps round to ~4e9 rows' worth (the slow fuzz run's 32 GiB)
    ("x", "unsigned_indptr", r"ind.cora.x: the csr_matrix's indptr \(141 entries, 140 rows\) does not fit"),
])
def test_damaged_planetoid_files_are_one_line_errors_naming_the_file(tmp_path, part, damage, match):
    import pickle

    root, raw = _cora_copy(tmp_path)
    path = raw / f"ind.cora.{part}"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "text":
        path.write_text("1708\nseventeen\n")
    elif damage == "unsigned_indptr":
        features = pickle.loads(path.read_bytes(), encoding="latin1")
        indptr = features.indptr.astype(np.uint32)
        indptr[5] = indptr[6] + 3  # row 5 ends after row 6 does
        features.indptr = indptr
        path.write_bytes(pickle.dumps(features, protocol=2))
    elif damage == "labels":
        labels = pickle.loads(path.read_bytes(), encoding="latin1")
        labels[0, 0] = 3
        path.write_bytes(pickle.dumps(labels, protocol=2))
    else:
        graph = pickle.loads(path.read_bytes(), encoding="latin1")
        graph[0].append(2708)
        path.write_bytes(pickle.dumps(graph, protocol=2))
    with pytest.raises(MoezooError, match=match) as error:
        _setup(root=str(root), name="Cora")
    assert "\n" not in str(error.value) and str(path) in str(error.value)


# -- damaged heterophilous npz files (issue #15) -----------------------------------------------------------------------
@pytest.mark.parametrize("case,match", [
    ("not_zip", "not an npz archive (a zip of .npy arrays); it starts with b'this'"),
    ("object", "cannot read array 'node_features' (ValueError: Object arrays cannot be loaded when allow_pickle="),
    ("masks_1d", "train_masks must be [splits, nodes] booleans, got bool of shape [10]"),
    ("labels_range", "node_labels must be class ids 0..C-1 with every class present and C >= 2; found 2 distinct "
                     "values from 0 to 7"),
    ("labels_negative", "node_labels must be class ids 0..C-1"),
    ("labels_2d", "node_labels must be [nodes] integer class ids, got int64 of shape [10, 2]"),
    ("edges_3", "edges must have shape [edges, 2] (one row per edge), got [2, 3]"),
    ("empty_train", "train_masks[0] selects no node (split 0 needs train nodes)"),
    ("overlap", "the train, val and test masks of split 0 overlap"),
    ("features_inf", "node_features holds 1 values that are not finite in float32"),
])
def test_bad_heterophilous_npz_is_a_one_line_error_naming_the_file_and_key(tmp_path, case, match):
    path = tmp_path / "toy.npz"
    _npz(path)
    z = dict(np.load(path))
    if case == "not_zip":
        path.write_bytes(b"this is not a zip")
    else:
        if case == "object":
            z["node_features"] = z["node_features"].astype(object)
        elif case == "masks_1d":
            z["train_masks"] = z["train_masks"][0]
        elif case == "labels_range":
            z["node_labels"] = np.where(z["node_labels"] == 1, 7, 0)
        elif case == "labels_negative":
            z["node_labels"] = z["node_labels"] - 1
        elif case == "labels_2d":
            z["node_labels"] = np.eye(2, dtype=np.int64)[z["node_labels"]]
        elif case == "edges_3":
            z["edges"] = np.array([[0, 1, 2], [1, 2, 3]])
        elif case == "empty_train":
            z["train_masks"][0] = False
        elif case == "overlap":
            z["val_masks"][0] |= z["train_masks"][0]
        elif case == "features_inf":
            z["node_features"][0, 0] = np.inf
        np.savez(path, **z)
    with pytest.raises(MoezooError) as error:
        _setup(root=str(tmp_path), name="toy")
    assert str(error.value).startswith(f"{path}: ") and match in str(error.value), str(error.value)
    assert "\n" not in str(error.value)
