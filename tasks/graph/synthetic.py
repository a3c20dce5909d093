"""A generated stochastic-block graph in the heterophilous-benchmark npz layout, for scale tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_block_graph(path: Path, num_nodes: int, num_edges: int, features: int = 16, classes: int = 4,
                      inside: float = 0.8, seed: int = 0) -> None:
    """Write ``path`` (``.npz``, read by ``GraphData(root, name)``): ``classes`` blocks (a node's class is its block),
    ``num_edges`` random edges of which a fraction ``inside`` join two nodes of the same block (self-loops dropped),
    features = the class's random mean + Gaussian noise of twice its scale, one split: train/val/test 5/5/10 % of the
    nodes. Written with numpy in seconds for millions of nodes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, num_nodes)
    by_class = [np.flatnonzero(labels == c) for c in range(classes)]
    source = rng.integers(0, num_nodes, num_edges)
    target = rng.integers(0, num_nodes, num_edges)
    same = rng.random(num_edges) < inside
    for c in range(classes):  # an edge inside the block goes to a random node of the source's class
        pick = same & (labels[source] == c)
        target[pick] = by_class[c][rng.integers(0, by_class[c].size, int(pick.sum()))]
    keep = source != target
    x = rng.normal(size=(classes, features))[labels] + 2.0 * rng.normal(size=(num_nodes, features))
    order = rng.permutation(num_nodes)
    masks = np.zeros((3, 1, num_nodes), dtype=bool)
    for i, (low, high) in enumerate(((0, 0.05), (0.05, 0.10), (0.10, 0.20))):
        masks[i, 0, order[int(low * num_nodes):int(high * num_nodes)]] = True
    np.savez(path, node_features=x.astype(np.float32), node_labels=labels,
             edges=np.stack([source[keep], target[keep]], 1).astype(np.int32),
             train_masks=masks[0], val_masks=masks[1], test_masks=masks[2])
