"""Layer-wise inference (PyG's BasicGNN.inference, tasks/graph/layerwise.py): every expert's logits equal the
whole-graph pass's, GCN's cache is left alone, and ``--data.inference layerwise`` scores a run as full inference
does."""

import json

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.utils import to_undirected

from moezoo.cli import main
from moezoo.errors import MoezooError
from moezoo.tasks.graph import GraphData
from moezoo.tasks.graph.layerwise import layerwise_logits
from moezoo.tasks.graph.model import build_expert, expert_logits

pytestmark = pytest.mark.usefixtures("one_thread")


def _graph(n=257, edges=1200, f=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    edge_index = to_undirected(torch.randint(0, n, (2, edges), generator=g), num_nodes=n)
    # an isolated node and a hub: degree 0 and degree >> batch
    edge_index = torch.cat([edge_index[:, (edge_index != n - 1).all(0)],
                            torch.stack([torch.arange(1, 120), torch.zeros(119, dtype=torch.long)])], 1)
    return Data(x=torch.randn(n, f, generator=g), edge_index=edge_index, num_nodes=n)


@pytest.mark.parametrize("kind", ["mlp", "gcn", "sage", "gin", "gat"])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_layerwise_logits_equal_the_whole_graph_pass(kind, num_layers):
    data = _graph()
    torch.manual_seed(0)
    expert = build_expert(kind, 5, 16, 4, num_layers, 0.5).eval()
    with torch.no_grad():
        whole = expert(data.x) if kind == "mlp" else expert(data.x, data.edge_index)
    state = torch.get_rng_state()
    for batch_size in (1, 50, 1000):  # one node a batch, several, all of them
        assert torch.allclose(layerwise_logits(expert, data, batch_size), whole, atol=1e-5)
    assert torch.equal(torch.get_rng_state(), state)  # the loaders' seeds were drawn from a forked state


def test_gcn_layerwise_uses_the_whole_graph_degrees_and_keeps_the_cache():
    data = GraphData()
    data.setup()
    graph = data.data
    torch.manual_seed(0)
    expert = build_expert("gcn", graph.num_features, 16, 7, 2, 0.5).eval()
    with torch.no_grad():
        whole = expert_logits(expert, graph)  # caches the whole graph's normalised adj_t
    cached = [(conv._cached_edge_index, conv._cached_adj_t) for conv in expert.convs]  # torch sparse: the first
    assert all(c[0] is not None for c in cached)
    assert torch.allclose(layerwise_logits(expert, graph, 300), whole, atol=1e-6)
    loader = expert._layerwise_loader[1]  # built once per graph and batch size, as GCN caches its adjacency
    assert torch.equal(layerwise_logits(expert, graph, 300), layerwise_logits(expert, graph, 300))
    assert expert._layerwise_loader[1] is loader
    layerwise_logits(expert, graph, 200)
    assert expert._layerwise_loader[1] is not loader
    assert all(conv.normalize and (conv._cached_edge_index, conv._cached_adj_t) == c
               for conv, c in zip(expert.convs, cached))
    with torch.no_grad():
        assert torch.equal(expert_logits(expert, graph), whole)


def test_layerwise_needs_eval_mode():
    expert = build_expert("sage", 5, 8, 2, 2, 0.5).train()
    with pytest.raises(RuntimeError, match="eval mode"):
        layerwise_logits(expert, _graph(), 10)


def test_the_data_module_marks_only_the_evaluation_batches():
    dm = GraphData(inference="layerwise", inference_batch_size=256)
    dm.setup()
    assert next(iter(dm.val_dataloader())).layerwise_batch_size == 256
    assert next(iter(dm.test_dataloader())).layerwise_batch_size == 256
    assert "layerwise_batch_size" not in next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("kwargs, key", [({"inference": "sampled"}, "data.inference"),
                                         ({"inference_batch_size": 0}, "data.inference_batch_size")])
def test_bad_inference_options_are_one_line_errors(kwargs, key):
    with pytest.raises(MoezooError, match=key):
        GraphData(**kwargs)


@pytest.mark.parametrize("task", ["graph/gat", "graph/mowst-gcn"])
def test_a_run_scores_the_same_with_layerwise_and_full_inference(task, tmp_path):
    scores = {}
    for inference in ("full", "layerwise"):
        root = tmp_path / inference
        main(["fit", "--task", task, "--trainer.max_epochs", "3", "--data.inference", inference,
              "--data.inference_batch_size", "500", "--trainer.enable_progress_bar", "false",
              "--trainer.default_root_dir", str(root)])
        scores[inference] = json.loads((root / "metrics.json").read_text())
    for key in ("val/acc", "test/acc", "test/loss"):
        assert scores["layerwise"][key] == pytest.approx(scores["full"][key], abs=1e-5), key
