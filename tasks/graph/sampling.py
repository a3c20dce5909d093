"""Sampled mini-batches of a large graph: PyG's ``NeighborLoader`` over seed nodes, and the seed rows of a batch.

A sampled batch (PyG's convention) is the subgraph around ``batch_size`` seed nodes, the seeds first: rows
``[:batch.batch_size]`` of ``x``, ``y``, the masks and ``degree`` are the seeds', the other rows their sampled
neighbours (``num_neighbors[h]`` in-neighbours per node at hop ``h``), ``n_id`` the subgraph's global node ids. A
GNN runs on the whole subgraph and its first ``batch_size`` output rows are the seeds'; an MLP needs only the seeds'
features. ``seed_rows`` hides the difference from the models: on a whole-graph batch it returns the whole tensor.

The sampling step is PyG's own (``pyg-lib`` or ``torch-sparse``) when one of them is installed. Neither is on PyPI
for torch 2.11 (pyg-lib ships its wheels elsewhere, torch-sparse only as a 2023 source archive), and without them
PyG's ``NeighborSampler`` raises ``ImportError``; ``TorchNeighborSampler`` then samples with the torch operations
below, with the same output (``SamplerOutput``: directional subgraph, sampling without replacement, new nodes of
each hop in a block after the previous hop's) so the rest of PyG's loader (``filter_data``, ``n_id``,
``batch_size``) is unchanged.
"""

from __future__ import annotations

import warnings

import torch
import torch_geometric.typing
from torch_geometric.data import Data
from torch_geometric.loader import NeighborLoader
from torch_geometric.sampler import NeighborSampler, SamplerOutput

PYG_SAMPLER = torch_geometric.typing.WITH_PYG_LIB or torch_geometric.typing.WITH_TORCH_SPARSE


def is_sampled(data) -> bool:
    """Whether ``data`` is a sampled subgraph (seeds first, ``batch_size`` of them) rather than the whole graph."""
    return "batch_size" in data and "n_id" in data


def seed_rows(data, key: str) -> torch.Tensor:
    """``data[key]`` of the seed nodes of a sampled batch (its first ``batch_size`` rows); of all nodes otherwise."""
    value = data[key]
    return value[:data.batch_size] if is_sampled(data) else value


def sample_neighbors(colptr: torch.Tensor, row: torch.Tensor, seed: torch.Tensor,
                     num_neighbors: list[int]) -> SamplerOutput:
    """Directional neighbour sampling on a CSC graph (``colptr``, ``row``: the sources of each target's edges).

    Hop ``h`` gives each node found at hop ``h - 1`` (the seeds at hop 0) ``min(num_neighbors[h], in-degree)`` of its
    in-edges, drawn uniformly without replacement (all of them for ``-1``); the edges' sources not seen before become
    new nodes, numbered after all earlier ones. Returns local ``row`` (source) and ``col`` (target) indices, the
    global ``node`` ids (seeds first), and ``edge``, the sampled edges' positions in the CSC order.
    """
    nodes = seed.to(torch.long)
    known, known_local = nodes.sort()  # the global ids seen so far, sorted, and their local ids
    frontier = torch.arange(nodes.numel())
    rows, cols, edges = [], [], []
    num_nodes, num_edges = [nodes.numel()], []
    for fanout in num_neighbors:
        start = colptr[nodes[frontier]]
        deg = colptr[nodes[frontier] + 1] - start
        first = deg.cumsum(0) - deg  # where each frontier node's edges begin in the flat list
        segment = torch.repeat_interleave(torch.arange(frontier.numel()), deg)
        offset = torch.arange(segment.numel()) - first[segment]
        if fanout == 0:
            segment, offset = segment[:0], offset[:0]
        elif 0 < fanout < (int(deg.max()) if deg.numel() else 0):
            # a random order inside each node's edges (the integer part keeps the nodes in order), keep the first k
            order = torch.argsort(segment.double() + torch.rand(segment.numel(), dtype=torch.float64))
            keep = order[offset < fanout]  # offset of the i-th sorted entry is its rank inside its node's edges
            segment, offset = segment[keep], offset[keep]
        edge = start[segment] + offset
        source = row[edge]
        pos = torch.searchsorted(known, source).clamp_(max=max(known.numel() - 1, 0))
        found = known[pos] == source
        new = torch.unique(source[~found])  # sorted
        new_local = nodes.numel() + torch.arange(new.numel())
        source_local = torch.empty_like(source)
        source_local[found] = known_local[pos[found]]
        source_local[~found] = new_local[torch.searchsorted(new, source[~found])]
        nodes = torch.cat([nodes, new])
        known, order = torch.cat([known, new]).sort()
        known_local = torch.cat([known_local, new_local])[order]
        rows.append(source_local), cols.append(frontier[segment]), edges.append(edge)
        num_nodes.append(new.numel()), num_edges.append(edge.numel())
        frontier = new_local
    cat = (lambda parts: torch.cat(parts)) if rows else (lambda parts: torch.empty(0, dtype=torch.long))
    return SamplerOutput(node=nodes, row=cat(rows), col=cat(cols), edge=cat(edges),
                         num_sampled_nodes=num_nodes, num_sampled_edges=num_edges)


class TorchNeighborSampler(NeighborSampler):
    """PyG's ``NeighborSampler`` whose homogeneous sampling step falls back to ``sample_neighbors`` when neither
    pyg-lib nor torch-sparse is installed (PyG's own step is used when one is)."""

    def __init__(self, data: Data, num_neighbors: list[int]):
        with warnings.catch_warnings():  # "NeighborSampler without pyg-lib is deprecated": the fallback is ours
            warnings.filterwarnings("ignore", message=".*without a 'pyg-lib' installation")
            super().__init__(data, num_neighbors=num_neighbors)

    def _sample(self, seed, seed_time=None, **kwargs):
        if PYG_SAMPLER or isinstance(seed, dict) or seed_time is not None:
            return super()._sample(seed, seed_time, **kwargs)
        return sample_neighbors(self.colptr, self.row, seed, self.num_neighbors.get_mapped_values())


def neighbor_loader(data: Data, seeds: torch.Tensor | None, num_neighbors: list[int], batch_size: int, *,
                    shuffle: bool, sampler=None, num_workers: int = 0, transform=None) -> NeighborLoader:
    """PyG's ``NeighborLoader`` over ``seeds`` (global node ids; None: every node) with ``TorchNeighborSampler``.

    ``sampler`` (e.g. a ``DistributedSampler`` over ``range(len(seeds))``) replaces the loader's own order;
    ``transform`` is applied to each batch (PyG's loader argument).
    """
    return NeighborLoader(data, num_neighbors=list(num_neighbors), input_nodes=seeds, batch_size=batch_size,
                          shuffle=shuffle and sampler is None, sampler=sampler, num_workers=num_workers,
                          persistent_workers=num_workers > 0, transform=transform,
                          neighbor_sampler=TorchNeighborSampler(data, list(num_neighbors)))
