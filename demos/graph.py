"""Graph demo: pick a node of Cora (or a random one) -> the prediction, the weak expert's confidence, which expert
decided, and the node's 2-hop neighbourhood drawn.

The graph is the one the model was trained on, the embedded Cora of ``GraphData`` (public split); the model runs
once, full-batch in eval mode, through the family's own ``predict_step`` (Mowst: the expected mixture
C p_weak + (1 - C) p_strong, or for ``inference: sampled`` the mean of its seeded draws), and its forward gives
each expert's own prediction. The routing comes from the core: Mowst's gate records C as a soft routing over the
weak (expert 0, weight C) and the strong expert (1, weight 1 - C), counted by split
(``routing_labels(model, {"split": ids})``), so ``load_by_label`` gives the weak share of each split and of the whole
graph for the header. A node is decided by the expert with the larger mixture weight: the weak one where C >= 0.5.
A plain ``NodeClassifier`` has one expert and no routing; the page says so.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from moezoo.errors import MoezooError
from moezoo.moe import load_by_label, routing_labels

from .skeleton import DemoModel, figure_image, guarded, header

HOPS = 2
MAX_DRAWN = 150  # a hub's 2-hop neighbourhood can hold thousands of nodes: draw the nearest ones only
SPLITS = ("train", "val", "test", "none")  # "none": in no split's mask (Cora's 1,068 unused nodes)
EXPERT_NAMES = {"mlp": "MLP", "gcn": "GCN", "sage": "GraphSAGE", "gat": "GAT", "gin": "GIN"}


def load_graph():
    """The embedded Cora as the family reads it (``GraphData()``: public split, row-normalised features), its name."""
    from moezoo.tasks.graph import GraphData

    graph = GraphData()
    graph.setup()
    return graph.data, graph.name


def check_sizes(model, data, name: str, source: str) -> None:
    """A model built for other feature or class counts than the graph's is refused, naming both."""
    want = (model.hparams.get("num_features"), model.hparams.get("num_classes"))
    have = (data.num_features, int(data.y.max()) + 1)
    if want != have:
        raise MoezooError(f"demo: {source} was built for {want[0]} node features and {want[1]} classes, but the "
                          f"demo's graph {name} has {have[0]} features and {have[1]} classes")


def class_names(num_classes: int) -> list[str]:
    """The class names (the family ships none for Cora: ``class i``)."""
    return [f"class {i}" for i in range(num_classes)]


def predict_graph(model, data) -> dict:
    """The model on the whole graph, once: ``probs`` [N, C] and ``pred`` [N] from its predict step; for Mowst also
    ``conf`` (C [N]), ``weak_probs`` / ``strong_probs`` [N, C], the expert names and the core's ``routing`` (the weak
    expert's share of the mixture weight per split and over the graph)."""
    device = next(model.parameters()).device
    data = data.to(device)
    split = torch.full((data.num_nodes,), SPLITS.index("none"), device=device)
    for i, stage in enumerate(SPLITS[:3]):
        split[getattr(data, f"{stage}_mask")] = i
    model.eval()
    routed = hasattr(model, "gate")  # Mowst / Mowst*: a weak and a strong expert mixed by C
    result = {"split": split.cpu(), "routed": routed}
    if not routed:
        with torch.no_grad():
            out = model.predict_step(data, 0)
        result.update(probs=out["prob"].cpu(), pred=out["pred"].cpu(), conf=None,
                      experts=(EXPERT_NAMES.get(getattr(model, "expert", ""), type(model).__name__),))
        return result
    load_by_label(model, reset=True)  # start from empty tables, whatever ran before
    with torch.no_grad(), routing_labels(model, {"split": split}):
        out = model.predict_step(data, 0)
    tables = next(iter(load_by_label(model, reset=True).values()))  # the gate's: [split, expert] gate mass
    with torch.no_grad():
        weak_logits, strong_logits, conf = model(data)
    by_split = tables["split"]["load"][:, 0].tolist()
    result.update(probs=out["prob"].cpu(), pred=out["pred"].cpu(), conf=out["confidence"].float().cpu(),
                  weak_probs=weak_logits.softmax(-1).cpu(), strong_probs=strong_logits.softmax(-1).cpu(),
                  experts=("MLP", EXPERT_NAMES.get(model.strong_kind, model.strong_kind)),
                  inference=model.inference, num_draws=model.num_draws, star=model.star,
                  routing={"graph": float(tables["*"]["load"][0, 0]),
                           **{stage: by_split[i] for i, stage in enumerate(SPLITS) if i < len(by_split)}})
    return result


def node_id(value, num_nodes: int, name: str) -> int:
    """``value`` (the page's node id) as a node of the graph, or a MoezooError saying why not."""
    valid = f"{name} has {num_nodes} nodes (0-{num_nodes - 1})"
    if value is None or (isinstance(value, str) and not value.strip()):
        raise MoezooError(f"no node id: type one (0-{num_nodes - 1}) or press Random node")
    if isinstance(value, bool):
        raise MoezooError(f"node {value} is not a node id: {valid}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MoezooError(f"node {value!r} is not a number: {valid}") from None
    if not math.isfinite(number) or not number.is_integer():
        raise MoezooError(f"node {value} does not exist: {valid}")
    if not 0 <= number < num_nodes:
        raise MoezooError(f"node {int(number)} does not exist: {valid}")
    return int(number)


def decided_by(result: dict, conf: float | None) -> str:
    """Which expert decides a node: the one with the larger mixture weight (weak where C >= 0.5), or the only one."""
    if conf is None:
        return f"{result['experts'][0]} (the only expert)"
    weak, strong = result["experts"]
    return f"weak ({weak})" if conf >= 0.5 else f"strong ({strong})"


def neighbourhood(data, node: int, hops: int = HOPS, cap: int = MAX_DRAWN):
    """The ``hops``-hop neighbourhood of ``node`` (``k_hop_subgraph``): (the nodes drawn, nearest first: the node,
    then by hop and id, at most ``cap``; their hop distances; how many nodes it holds at each hop 0..``hops``)."""
    from torch_geometric.utils import k_hop_subgraph

    edge_index = data.edge_index.cpu()
    hop = torch.full((data.num_nodes,), hops + 1, dtype=torch.long)
    for h in range(hops, 0, -1):  # the smallest hop that reaches a node is its distance
        hop[k_hop_subgraph(node, h, edge_index, num_nodes=data.num_nodes)[0]] = h
    hop[node] = 0
    within = torch.nonzero(hop <= hops).flatten()
    order = within[torch.argsort(hop[within] * data.num_nodes + within)]  # by hop, then by id: the node first
    drawn = order[:cap]
    return drawn, hop[drawn], torch.bincount(hop[within], minlength=hops + 1).tolist()


def _layout(num_nodes: int, edges: torch.Tensor, hops: torch.Tensor) -> torch.Tensor:
    """Positions [n, 2] of the drawn nodes (node 0 is the chosen one, at the centre): networkx's seeded spring layout,
    or without networkx rings by hop distance."""
    try:
        import networkx as nx
    except ImportError:
        positions = torch.zeros(num_nodes, 2)
        for h in range(1, int(hops.max()) + 1 if num_nodes else 1):
            ring = torch.nonzero(hops == h).flatten()
            angle = torch.arange(len(ring)) * (2 * torch.pi / max(len(ring), 1))
            positions[ring] = h * torch.stack([angle.cos(), angle.sin()], -1)
        return positions
    graph = nx.Graph()
    graph.add_nodes_from(range(num_nodes))
    graph.add_edges_from(edges.t().tolist())
    layout = nx.spring_layout(graph, seed=0, pos={0: (0.0, 0.0)} if num_nodes > 1 else None,
                              fixed=[0] if num_nodes > 1 else None, iterations=100)
    return torch.from_numpy(np.array([layout[i] for i in range(num_nodes)], dtype=np.float32))


def neighbourhood_figure(result: dict, data, node: int, name: str):
    """The node's 2-hop neighbourhood: nodes coloured by predicted class, squares where the weak expert decides, the
    chosen node ringed; at most ``MAX_DRAWN`` nodes (the title says when the neighbourhood holds more)."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from torch_geometric.utils import subgraph

    drawn, hops, by_hop = neighbourhood(data, node)
    edges = subgraph(drawn, data.edge_index.cpu(), relabel_nodes=True, num_nodes=data.num_nodes)[0]
    edges = edges[:, edges[0] < edges[1]]  # each undirected edge once
    xy = _layout(len(drawn), edges, hops).numpy()
    classes = class_names(result["probs"].shape[-1])
    pred = result["pred"][drawn]
    weak = (result["conf"][drawn] >= 0.5) if result["conf"] is not None else torch.zeros(len(drawn), dtype=torch.bool)
    colours = [_colour(int(c)) for c in pred]
    size = 140 if len(drawn) <= 40 else 60

    figure = Figure(figsize=(8.6, 6.2), dpi=100, layout="constrained")
    ax = figure.subplots()
    ax.add_collection(LineCollection(xy[edges.t().numpy()], colors="0.6", linewidths=0.8, alpha=0.6, zorder=1))
    for is_weak, marker in ((False, "o"), (True, "s")):
        pick = (weak == is_weak).nonzero().flatten().tolist()
        if pick:
            ax.scatter(xy[pick, 0], xy[pick, 1], s=size, c=[colours[i] for i in pick], marker=marker,
                       edgecolors="black" if is_weak else "white", linewidths=1.5 if is_weak else 0.6, zorder=2)
    ax.scatter(xy[:1, 0], xy[:1, 1], s=size * 3.2, facecolors="none", edgecolors="black", linewidths=2.2, zorder=3)
    ax.annotate(f"node {node}", xy[0], xytext=(10, 10), textcoords="offset points", fontsize=10, weight="bold",
                zorder=4, bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.5", "alpha": 0.85})
    ax.set_aspect("equal", adjustable="datalim")
    ax.margins(0.06)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    total, counts = sum(by_hop), " + ".join(map(str, by_hop))
    drawn_line = ("all drawn" if len(drawn) == total else f"the {len(drawn)} nearest drawn (a hub: more would not "
                  "be readable)")
    ax.set_title(f"{name}: the {HOPS}-hop neighbourhood of node {node}, {total} nodes ({counts} by hop)\n"
                 f"{drawn_line}; coloured by predicted class", fontsize=10)
    present = sorted(set(pred.tolist()))
    handles = [Line2D([], [], marker="o", ls="", color=_colour(c), markersize=8, label=f"predicted {classes[c]}")
               for c in present]
    handles.append(Line2D([], [], marker="o", ls="", mfc="none", mec="black", mew=2, markersize=12,
                          label=f"node {node} (chosen)"))
    if result["conf"] is not None:
        weak_name, strong_name = result["experts"]
        handles += [Line2D([], [], marker="o", ls="", color="0.55", markersize=9,
                           label=f"strong ({strong_name}) decides: {int((~weak).sum())}"),
                    Line2D([], [], marker="s", ls="", color="0.55", mec="black", mew=1.5, markersize=8,
                           label=f"weak ({weak_name}) decides: {int(weak.sum())}")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return figure_image(figure)


def _colour(index: int):
    from matplotlib import colormaps

    return colormaps["tab10"](index % 10)


def _top(probs: torch.Tensor, classes: list[str]) -> dict:
    top = int(probs.argmax())
    return {"class": classes[top], "probability": round(float(probs[top]), 4)}


def node_report(result: dict, data, node: int) -> dict:
    """What the page shows of one node (JSON-able): the prediction, the true class and split, C, the expert that
    decided, each expert's own top class, and the node's direct neighbours."""
    classes = class_names(result["probs"].shape[-1])
    conf = None if result["conf"] is None else float(result["conf"][node])
    report = {"node": node, **{f"predicted_{k}": v for k, v in _top(result["probs"][node], classes).items()},
              "true": classes[int(data.y[node])], "split": SPLITS[int(result["split"][node])],
              "degree": int(data.degree[node]) if "degree" in data else None,
              "confidence": conf, "decided_by": decided_by(result, conf)}
    if conf is not None:
        report["weak"] = _top(result["weak_probs"][node], classes)
        report["strong"] = _top(result["strong_probs"][node], classes)
    drawn, hops, by_hop = neighbourhood(data, node)
    report["neighbourhood"] = {"hops": HOPS, "nodes": sum(by_hop), "by_hop": by_hop, "drawn": len(drawn),
                               "weak_decides": None if conf is None else int((result["conf"][drawn] >= 0.5).sum())}
    report["neighbours"] = [
        {"node": int(v), "predicted": classes[int(result["pred"][v])], "true": classes[int(data.y[v])],
         **({} if conf is None else {"confidence": float(result["conf"][v]),
                                     "decided_by": decided_by(result, float(result["conf"][v]))})}
        for v in drawn[hops == 1].tolist()]
    return report


def details(result: dict, report: dict) -> str:
    """The node's facts as a Markdown table."""
    rows = [("predicted (the mixture)" if result["routed"] else "predicted",
             f"**{report['predicted_class']}** ({report['predicted_probability']:.1%})"),
            ("true label", f"{report['true']} ({report['split']} split)" if report["split"] != "none"
             else f"{report['true']} (in no split: unused in training and evaluation)")]
    if result["routed"]:
        c = report["confidence"]
        weak, strong = result["experts"]
        rows += [("weak expert's confidence C", f"{c:.4f}"),
                 ("decided by", f"**{report['decided_by']}**: mixture weights C = {c:.3f} (weak) vs 1 - C = "
                                f"{1 - c:.3f} (strong)"),
                 (f"weak expert ({weak}) alone", f"{report['weak']['class']} ({report['weak']['probability']:.1%})"),
                 (f"strong expert ({strong}) alone",
                  f"{report['strong']['class']} ({report['strong']['probability']:.1%})")]
    else:
        rows += [("routing", f"none: a single {result['experts'][0]} expert decides every node")]
    by_hop = report["neighbourhood"]["by_hop"]
    rows.append(("neighbours", f"{by_hop[1]} direct, {sum(by_hop) - 1} within {HOPS} hops"))
    return f"| node {report['node']} | |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in rows)


def routing_summary(result: dict, num_nodes: int) -> str:
    """The header's routing line: the weak expert's share (the core's load by split) and the nodes it decides."""
    if not result["routed"]:
        return f"A single {result['experts'][0]} expert: no routing, no confidence, nothing to decide between."
    weak, strong = result["experts"]
    share = result["routing"]
    splits = ", ".join(f"{s} {share[s]:.2%}" for s in SPLITS[:3] if s in share)
    decides = int((result["conf"] >= 0.5).sum())
    how = ("Expected inference: the mixture C p_weak + (1 - C) p_strong" if result["inference"] == "expected" else
           f"Sampled inference: the weak expert drawn with probability C, shown as the mean of "
           f"{result['num_draws']} seeded draws")
    return (f"Routing over the whole graph (the core's load by split): the weak expert ({weak}) carries "
            f"**{share['graph']:.2%}** of the mixture weight ({splits}) and decides **{decides} of {num_nodes}** "
            f"nodes (C >= 0.5); the strong one ({strong}) the rest. {how}.")


def random_node(seed, num_nodes: int, name: str):
    """A node drawn with ``random.Random(seed)`` and a status line."""
    if seed is None:
        raise MoezooError("no seed: type a whole number, then press Random node")
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise MoezooError(f"seed {seed!r} is not a whole number") from None
    node = random.Random(seed).randrange(num_nodes)
    return node, f"Node {node} of {name}, picked with seed {seed}: press **Predict**."


def build(shown: DemoModel):
    import gradio as gr

    model = shown.model
    data, name = load_graph()
    check_sizes(model, data, name, shown.source)
    result = predict_graph(model, data)
    classes = class_names(result["probs"].shape[-1])
    num_nodes = data.num_nodes
    if result["routed"]:
        weak, strong = result["experts"]
        title = f"{'Mowst*' if result['star'] else 'Mowst'}-{strong} node classifier on {name}"
        what = (f"Pick a node of {name} ({num_nodes} papers, {len(classes)} classes) by id or at random, then "
                f"**Predict**: the class probabilities of the mixture, the weak expert's ({weak}) confidence C, "
                f"which expert decided (the weak one where C >= 0.5, else the strong {strong}), each expert's own "
                f"prediction, and the node's {HOPS}-hop neighbourhood.")
    else:
        title = f"{result['experts'][0]} node classifier on {name}"
        what = (f"Pick a node of {name} ({num_nodes} papers, {len(classes)} classes) by id or at random, then "
                f"**Predict**: the class probabilities and the node's {HOPS}-hop neighbourhood.")

    def answer(value):
        node = node_id(value, num_nodes, name)
        report = node_report(result, data, node)
        probs = {classes[i]: float(p) for i, p in enumerate(result["probs"][node])}
        where = f"{report['split']} split" if report["split"] != "none" else "in no split"
        status = (f"Node {node}: predicted **{report['predicted_class']}** ({report['predicted_probability']:.1%}), "
                  f"true {report['true']} ({where}); ")
        status += (f"decided by the {report['decided_by']} expert (C = {report['confidence']:.3f})."
                   if result["routed"] else f"one {result['experts'][0]} expert, no routing.")
        return probs, details(result, report), neighbourhood_figure(result, data, node, name), report, status

    def pick_node(value):
        return random_node(value, num_nodes, name)

    with gr.Blocks(title="moezoo: Mowst on graphs") as app:
        gr.Markdown(header(title, shown, what) + "\n\n" + routing_summary(result, num_nodes))
        with gr.Row():
            with gr.Column(scale=2):
                node = gr.Number(label=f"node id (0-{num_nodes - 1})", value=0, precision=0, elem_id="node-id")
                with gr.Row():
                    seed = gr.Number(label="seed", value=0, precision=0, elem_id="seed")
                    pick = gr.Button("Random node", elem_id="random-node")
                run = gr.Button("Predict", variant="primary", elem_id="predict")
                status = gr.Markdown(elem_id="status")
                label = gr.Label(label="class probabilities" + (" (the mixture)" if result["routed"] else ""),
                                 num_top_classes=min(7, len(classes)), elem_id="probs")
                facts = gr.Markdown(elem_id="details")
            with gr.Column(scale=3):
                drawing = gr.Image(label=f"{HOPS}-hop neighbourhood", show_label=False, elem_id="neighbourhood",
                                   interactive=False, format="png")  # the figure's own title names it
        table = gr.JSON(label="the node, its neighbourhood and its direct neighbours", elem_id="node-table")
        outputs = [label, facts, drawing, table, status]
        run.click(guarded(answer, len(outputs)), node, outputs, api_name="predict")
        pick.click(guarded(pick_node, 2), seed, [node, status], api_name="random_node")
    return app
