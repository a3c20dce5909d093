"""The graph demo: its per-node read-out against the model, its neighbourhood, its node-id checks, gradio_client and
the browser."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from moezoo.demos import DemoModel, build_demo
from moezoo.demos.graph import build, decided_by, load_graph, neighbourhood, node_id, node_report, predict_graph
from moezoo.errors import MoezooError

pytestmark = pytest.mark.usefixtures("one_thread")

HUB = 1358  # Cora's node of highest degree (168): 426 nodes within 2 hops


@pytest.fixture(scope="module")
def demo():
    return build_demo("graph/mowst-gcn")


@pytest.fixture(scope="module")
def cora():
    return load_graph()


def test_a_node_gets_the_models_own_expected_mixture_its_confidence_and_experts(demo, cora):
    model, (data, _) = demo[1].model, cora
    with torch.no_grad():
        expected, _, conf = model.predictions(data)  # the family's full-graph evaluation
        weak_logits, strong_logits, _ = model(data)
    result = predict_graph(model, data)
    assert torch.equal(result["pred"], expected.argmax(-1))
    for node in (0, 5, 633, 1000, HUB, 2707):
        report = node_report(result, data, node)
        assert report["predicted_class"] == f"class {int(expected[node].argmax())}"
        assert report["predicted_probability"] == pytest.approx(float(expected[node].max()), abs=1e-4)
        assert 0.0 <= report["confidence"] <= 1.0 and report["confidence"] == pytest.approx(float(conf[node]))
        assert report["decided_by"] == ("weak (MLP)" if conf[node] >= 0.5 else "strong (GCN)")
        assert report["weak"]["class"] == f"class {int(weak_logits[node].argmax())}"
        assert report["strong"]["class"] == f"class {int(strong_logits[node].argmax())}"
        assert report["true"] == f"class {int(data.y[node])}"
    splits = [node_report(result, data, node)["split"] for node in (0, 633, 1000, 2707)]
    assert splits == ["train", "val", "none", "test"]  # the public split: 0-139, 140-639, 1708-2707
    assert result["routing"]["graph"] == pytest.approx(float(conf.mean()), rel=1e-4)


def test_the_expert_that_decides_follows_c_and_the_core_counts_the_weak_share(cora):
    from moezoo.tasks.graph import Mowst

    data, _ = cora
    torch.manual_seed(0)
    model = Mowst(confidence="learned", num_features=data.num_features, num_classes=7).eval()
    with torch.no_grad():
        model.gate.head.weight.mul_(200)  # an untrained learned C spread around 0.5: both experts decide some nodes
    result = predict_graph(model, data)
    conf = result["conf"]
    weak = conf >= 0.5
    assert 0 < int(weak.sum()) < data.num_nodes and ((conf >= 0) & (conf <= 1)).all()
    assert [decided_by(result, float(c)) for c in conf] == ["weak (MLP)" if w else "strong (GCN)" for w in weak]
    for node in (int(weak.nonzero()[0]), int((~weak).nonzero()[0])):
        assert node_report(result, data, node)["decided_by"] == decided_by(result, float(conf[node]))
    for stage in ("train", "val", "test"):
        assert result["routing"][stage] == pytest.approx(float(conf[getattr(data, f"{stage}_mask")].mean()), rel=1e-4)


def test_mowst_star_with_sampled_inference_shows_the_mean_of_its_draws(cora):
    from moezoo.tasks.graph import Mowst

    data, _ = cora
    torch.manual_seed(0)
    model = Mowst(star=True, inference="sampled", num_draws=5, num_features=data.num_features, num_classes=7).eval()
    result = predict_graph(model, data)
    with torch.no_grad():
        _, draws, conf = model.predictions(data)
    assert torch.allclose(result["probs"], torch.stack(list(draws)).mean(0)) and torch.allclose(result["conf"], conf)
    report = node_report(result, data, 5)
    assert report["decided_by"] == decided_by(result, float(conf[5])) and report["strong"]["class"].startswith("class")


def test_a_plain_node_classifier_has_no_routing_and_other_sizes_are_refused(cora):
    import gradio as gr

    from moezoo.tasks.graph import NodeClassifier

    data, _ = cora
    model = NodeClassifier(expert="gcn", num_features=data.num_features, num_classes=7).eval()
    result = predict_graph(model, data)
    report = node_report(result, data, 5)
    assert result["conf"] is None and report["confidence"] is None and report["decided_by"] == "GCN (the only expert)"
    assert "weak" not in report and torch.equal(result["pred"], model(data).argmax(-1))
    app = build(DemoModel(model, "graph/gcn", "checkpoint gcn.ckpt"))
    page_header = next(b.value for b in app.blocks.values() if isinstance(b, gr.Markdown))
    assert "GCN node classifier on Cora" in page_header and "A single GCN expert: no routing" in page_header
    other = NodeClassifier(expert="mlp", num_features=10, num_classes=3).eval()
    with pytest.raises(MoezooError, match="built for 10 node features and 3 classes, but the demo's graph Cora has "
                                          "1433 features and 7 classes"):
        build(DemoModel(other, "graph/mlp", "checkpoint other.ckpt"))


def test_the_neighbourhood_is_the_2_hop_subgraph_or_its_nearest_150(cora):
    from torch_geometric.utils import k_hop_subgraph

    data, _ = cora
    for node in (5, 100):
        drawn, hops, by_hop = neighbourhood(data, node)
        assert sorted(drawn.tolist()) == k_hop_subgraph(node, 2, data.edge_index, num_nodes=data.num_nodes)[0].tolist()
        ring = set(k_hop_subgraph(node, 1, data.edge_index, num_nodes=data.num_nodes)[0].tolist()) - {node}
        assert set(drawn[hops == 1].tolist()) == ring and drawn[0] == node and sum(by_hop) == len(drawn)
    drawn, hops, by_hop = neighbourhood(data, HUB)
    everything = set(k_hop_subgraph(HUB, 2, data.edge_index, num_nodes=data.num_nodes)[0].tolist())
    assert len(drawn) == 150 and sum(by_hop) == len(everything) == 426 and by_hop[:2] == [1, 168]
    assert set(drawn.tolist()) <= everything and drawn[0] == HUB and (hops[1:] == 1).all()  # the nearest first


@pytest.mark.parametrize("value, reason", [
    (9999, r"node 9999 does not exist: Cora has 2708 nodes \(0-2707\)"),
    (2708, "node 2708 does not exist"),
    (-1, "node -1 does not exist"),
    (2.5, "node 2.5 does not exist"),
    (float("nan"), "node nan does not exist"),
    ("five", "node 'five' is not a number"),
    (True, "not a node id"),
    (None, "no node id"),
])
def test_bad_node_ids_are_rejected_with_the_reason(value, reason):
    with pytest.raises(MoezooError, match=reason):
        node_id(value, 2708, "Cora")


def test_the_app_through_gradio_client(demo, serve):
    from gradio_client import Client

    client = Client(serve(demo[0]), verbose=False)
    node, status = client.predict(7, api_name="/random_node")
    assert node == random.Random(7).randrange(2708) and f"Node {node} of Cora, picked with seed 7" in status
    probs, details, drawing, table, status = client.predict(node, api_name="/predict")
    assert table["node"] == node and probs["label"] == table["predicted_class"]
    assert status.startswith(f"Node {node}: predicted **{table['predicted_class']}**")
    assert "decided by the strong (GCN) expert" in status and "| decided by | **strong (GCN)**" in details
    assert table["neighbourhood"]["drawn"] == sum(table["neighbourhood"]["by_hop"])
    assert np.asarray(Image.open(drawing)).ndim == 3
    *cleared, status = client.predict(9999, api_name="/predict")
    assert status == "**Rejected:** node 9999 does not exist: Cora has 2708 nodes (0-2707)"
    assert all(value is None for value in cleared[1:])


def test_the_page_in_a_browser(demo, serve, page, tmp_path):
    page.goto(serve(demo[0]))
    page.get_by_text("the weak expert (MLP) carries").wait_for()
    page.locator("#node-id input").fill(str(HUB))
    page.locator("#predict").click()
    page.locator("#status").get_by_text(f"Node {HUB}: predicted class 2").wait_for()
    page.locator("#neighbourhood img").wait_for()
    # after the label: the top class, then its bar
    assert page.locator("#probs").inner_text().splitlines()[1:4] == ["class 2", "class 2", "100%"]
    facts = page.locator("#details").inner_text()
    assert "decided by\tstrong (GCN)" in facts and "168 direct, 425 within 2 hops" in facts
    page.screenshot(path=tmp_path / "graph.png", full_page=True)
    page.locator("#node-id input").fill("9999")
    page.locator("#predict").click()
    page.locator("#status").get_by_text("Rejected: node 9999 does not exist: Cora has 2708 nodes (0-2707)").wait_for()
    page.screenshot(path=tmp_path / "graph-rejected.png", full_page=True)
