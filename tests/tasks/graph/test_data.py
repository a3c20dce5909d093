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
