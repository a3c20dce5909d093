"""Layer-wise inference: every node's logits of a GNN in bounded memory, by PyG's ``BasicGNN.inference``.

A whole-graph pass holds each layer's messages at once: GAT's attention and messages are [edges, heads x hidden]
(ogbn-products' 124M directed edges x 64 floats: 32 GB), and the normalised adjacency of GCN is a second copy of
the edges. Layer-wise inference (PyG's ``BasicGNN.inference``, the pattern of PyG's ``ogbn_products_sage`` example)
computes layer ``l`` for all nodes, ``batch_size`` target nodes at a time, each on its full one-hop in-neighbourhood
(a ``NeighborLoader`` with ``num_neighbors=[-1]``), from layer ``l - 1``'s outputs of every node; only one layer's
[nodes, hidden] outputs and one batch's subgraph are held. The result equals the whole-graph pass (up to float
summation order) for every expert:

- GraphSAGE, GIN, GAT aggregate over a target's in-edges only (GAT adds each target's self-loop and softmaxes over
  its in-edges), all of which a full one-hop neighbourhood holds.
- GCN's symmetric normalisation 1 / sqrt(d_i d_j) needs the degree of every source ``j``, which a subgraph does not
  have (its non-target nodes have no in-edges there). The loader therefore samples a graph that already carries the
  whole graph's normalised weights (``gcn_norm`` with self-loops, the same rule GCNConv applies to ``adj_t``), and
  each layer runs with ``normalize`` off on the batch's weighted adjacency (a torch sparse ``adj_t``, the same
  sparse matmul as the whole-graph path); the cached whole-graph adjacency is neither used nor changed.
- The MLP has no neighbourhood: it runs on ``batch_size`` nodes at a time.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch_geometric.data import Data
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import GCN, MLP

from .sampling import neighbor_loader


@contextmanager
def _prenormalised(expert):
    """GCN's layers with ``normalize`` off: they multiply by the weights the batch brings (``gcn_norm``'s)."""
    layers = [m for m in expert.modules() if hasattr(m, "normalize") and hasattr(m, "_cached_adj_t")]
    kept = [layer.normalize for layer in layers]
    for layer in layers:
        layer.normalize = False
    try:
        yield
    finally:
        for layer, normalize in zip(layers, kept):
            layer.normalize = normalize


def _weighted_adj_t(batch: Data) -> Data:
    """A sampled batch's transposed adjacency with its edges' normalised weights (a torch sparse CSR ``adj_t``)."""
    n = batch.num_nodes
    adj_t = torch.sparse_coo_tensor(torch.stack([batch.edge_index[1], batch.edge_index[0]]), batch.edge_weight,
                                    (n, n)).coalesce().to_sparse_csr()
    return Data(x=batch.x, adj_t=adj_t, n_id=batch.n_id, batch_size=batch.batch_size, num_nodes=n)


def inference_graph(expert, data: Data) -> Data:
    """What the layer-wise loader samples for ``expert``: ``x`` and ``edge_index``, and for GCN the self-looped
    edges with the whole graph's normalised weights (``edge_weight``)."""
    if isinstance(expert, GCN):
        edge_index, edge_weight = gcn_norm(data.edge_index, None, data.num_nodes, add_self_loops=True)
        return Data(x=data.x, edge_index=edge_index, edge_weight=edge_weight, num_nodes=data.num_nodes)
    return Data(x=data.x, edge_index=data.edge_index, num_nodes=data.num_nodes)


def _loader(expert, data: Data, batch_size: int):
    """The full one-hop loader over every node of ``data`` for ``expert``, built once per graph and batch size and
    kept on the expert (as GCN keeps its normalised adjacency: one graph, transductive), so that each evaluation does
    not renormalise and re-sort the graph's edges. The graph is recognised by its ``edge_index`` tensor itself (kept
    with the loader, so it stays alive and is never mistaken for another)."""
    kept = getattr(expert, "_layerwise_loader", None)
    key = (data.edge_index, batch_size)
    if kept is None or kept[0][0] is not data.edge_index or kept[0][1] != batch_size:
        graph = inference_graph(expert, data)
        graph.x = graph.x.float()
        kept = key, neighbor_loader(graph, None, [-1], batch_size, shuffle=False,
                                    transform=_weighted_adj_t if isinstance(expert, GCN) else None)
        expert._layerwise_loader = kept
    return kept[1]


@torch.no_grad()
def layerwise_logits(expert, data: Data, batch_size: int) -> torch.Tensor:
    """Logits of every node of ``data`` (a whole graph), ``batch_size`` target nodes at a time (module docstring).

    Runs in float32 outside autocast (the sparse matmul of GCN has no bfloat16 CPU kernel) on ``data.x``'s device;
    ``expert`` must be in eval mode. The global random state is left as it was (the loader's iterator draws its
    base seed from it), so a run's training draws do not depend on how it evaluates.
    """
    if expert.training:
        raise RuntimeError("layer-wise inference runs the expert in eval mode (expert.eval())")
    with torch.random.fork_rng(devices=[]), torch.autocast(data.x.device.type, enabled=False):
        if isinstance(expert, MLP):
            x = data.x.float()
            return torch.cat([expert(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        loader = _loader(expert, data, batch_size)
        with _prenormalised(expert) if isinstance(expert, GCN) else nullcontext():
            return expert.inference(loader, device=data.x.device, embedding_device=data.x.device)
