"""Sampled mini-batches: the neighbour sampler, the seed rows the experts and the routing statistics read, the data
module's train loaders (one process and split over processes), and evaluation on the whole graph after sampled
training."""

from types import SimpleNamespace

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.utils import degree, to_undirected

from moezoo.errors import MoezooError
from moezoo.tasks.graph import GraphData, Mowst, NodeClassifier
from moezoo.tasks.graph.model import expert_logits
from moezoo.tasks.graph.sampling import neighbor_loader, sample_neighbors, seed_rows


def _graph(n=300, edges=1500, f=6, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    edge_index = to_undirected(torch.randint(0, n, (2, edges), generator=g), num_nodes=n)
    masks = torch.zeros(3, n, dtype=torch.bool)
    masks[torch.arange(n) % 3, torch.arange(n)] = True
    data = Data(x=torch.randn(n, f, generator=g), edge_index=edge_index, y=torch.randint(0, c, (n,), generator=g),
                train_mask=masks[0], val_mask=masks[1], test_mask=masks[2])
    data.degree = degree(edge_index[1], n)
    return data


def _one_batch(data, seeds, num_neighbors):
    return next(iter(neighbor_loader(data, seeds, num_neighbors, len(seeds), shuffle=False)))


def test_each_seed_gets_min_of_fanout_and_degree_distinct_real_in_edges():
    data = _graph()
    seeds = torch.arange(0, 60)
    batch = _one_batch(data, seeds, [4, 3])
    assert batch.batch_size == 60 and torch.equal(batch.n_id[:60], seeds)  # seeds first, in order
    edges = set(map(tuple, data.edge_index.t().tolist()))
    sampled = batch.n_id[batch.edge_index]  # global ids of each sampled (source, target)
    assert all(tuple(e) in edges for e in sampled.t().tolist())
    assert torch.equal(data.edge_index[:, batch.e_id], sampled)  # e_id: the edges' ids in the whole graph
    assert sampled.t().unique(dim=0).shape[0] == sampled.shape[1]  # without replacement: no edge twice
    hop1 = batch.num_sampled_nodes[1]
    for local in range(60 + hop1):  # seeds get 4, the nodes found at hop 1 get 3
        fanout = 4 if local < 60 else 3
        assert int((batch.edge_index[1] == local).sum()) == min(fanout, int(data.degree[batch.n_id[local]]))
    # hop-2 nodes are leaves: nothing is sampled for them
    assert int((batch.edge_index[1] >= 60 + hop1).sum()) == 0
    assert len(set(batch.n_id.tolist())) == batch.n_id.numel()  # each node once


def test_minus_one_takes_the_whole_neighbourhood_and_draws_are_uniform():
    data = _graph()
    batch = _one_batch(data, torch.arange(10), [-1])
    for local in range(10):
        assert int((batch.edge_index[1] == local).sum()) == int(data.degree[local])
    # a node with 4 in-neighbours, 2 drawn: each neighbour in about half of 4000 draws
    colptr = torch.tensor([0, 4, 4, 4, 4, 4])
    row = torch.tensor([1, 2, 3, 4])
    torch.manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(4000):
        out = sample_neighbors(colptr, row, torch.tensor([0]), [2])
        assert out.row.numel() == 2 and out.row.unique().numel() == 2
        counts.index_add_(0, out.node[out.row], torch.ones(2))
    assert torch.allclose(counts[1:] / 4000, torch.full((4,), 0.5), atol=0.04)  # 4 standard deviations


def test_gnn_on_full_neighbourhood_subgraph_gives_the_whole_graph_rows_of_its_seeds():
    """SAGE (mean) and GIN (sum) on a 2-hop subgraph with every in-edge give the seeds' whole-graph logits; the MLP
    sees only the seeds. GCN normalises by the subgraph's degrees (PyG's behaviour on sampled batches)."""
    data = _graph()
    seeds = torch.tensor([5, 17, 40, 41, 299])
    batch = _one_batch(data, seeds, [-1, -1])
    for kind in ("sage", "gin", "mlp"):
        model = NodeClassifier(expert=kind, num_features=6, num_classes=3).eval()
        with torch.no_grad():
            whole, sampled = expert_logits(model.net, data)[seeds], expert_logits(model.net, batch)
        assert sampled.shape == (5, 3)
        torch.testing.assert_close(sampled, whole, rtol=1e-4, atol=1e-5)


def test_sampled_training_leaves_gcn_cache_and_evaluation_on_the_whole_graph_as_full_batch():
    """A GCN caches the whole graph's normalised adjacency; sampled steps must neither use nor overwrite it, so
    evaluation after sampled training scores every node as a fresh full-batch model with the same weights does."""
    torch.manual_seed(0)
    data = _graph()
    model = Mowst(strong="gcn", num_features=6, num_classes=3)
    model.log = lambda *a, **k: None
    model.eval()
    before = model.predictions(data)[0]  # fills GCN's cache from the whole graph
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for batch in neighbor_loader(data, data.train_mask.nonzero().view(-1), [5, 5], 32, shuffle=True):
        weak_logits, strong_logits, conf = model(batch)
        assert weak_logits.shape == strong_logits.shape == (batch.batch_size, 3) and conf.shape == (batch.batch_size,)
        y = seed_rows(batch, "y")
        loss = torch.nn.functional.cross_entropy(strong_logits, y) + torch.nn.functional.cross_entropy(weak_logits, y)
        opt.zero_grad(), loss.backward(), opt.step()
    model.eval()
    fresh = Mowst(strong="gcn", num_features=6, num_classes=3)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    after, fresh_probs = model.predictions(data)[0], fresh.predictions(data)[0]
    assert not torch.allclose(after, before)  # it did train
    torch.testing.assert_close(after, fresh_probs)


def test_mowst_alternating_step_on_a_sampled_batch_reads_the_seeds_only():
    data = _graph()
    model = Mowst(strong="sage", num_features=6, num_classes=3, first_phase="strong")
    weak_opt = torch.optim.SGD([*model.weak.parameters(), *model.gate.parameters()], lr=0.1)
    strong_opt = torch.optim.SGD(model.strong.parameters(), lr=0.1)
    model.optimizers = lambda: (weak_opt, strong_opt)
    model.manual_backward = lambda loss: loss.backward()
    model.log = lambda *a, **k: None
    batch = _one_batch(data, torch.arange(0, 300, 3)[:40], [3, 3])  # 40 train seeds (node ids = 0 mod 3)
    seen = {}
    model.weak.register_forward_hook(lambda m, args, out: seen.update(weak_rows=args[0].shape[0]))
    for phase in ("strong", "weak"):
        model.phase["name"] = phase
        before = {name: p.clone() for name, p in model.named_parameters()}
        model.training_step(batch, 0)
        moved = {name.split(".")[0] for name, p in model.named_parameters() if not torch.equal(before[name], p)}
        assert moved == ({"strong"} if phase == "strong" else {"weak"} | ({"gate"} & moved))
    assert seen["weak_rows"] == 40  # the MLP expert ran on the seeds' features only


def test_routing_labels_of_a_sampled_batch_are_its_seeds():
    data = _graph()
    batch = _one_batch(data, torch.tensor([3, 4, 5, 6]), [3, 3])
    model = NodeClassifier(expert="gcn", num_features=6, num_classes=3)
    labels = model.routing_labels(batch, "train")
    assert labels["class"].shape == labels["degree"].shape == (4,)
    y = data.y[[3, 4, 5, 6]]
    assert labels["class"].tolist() == [int(y[0]), -1, -1, int(y[3])]  # train nodes are 0 mod 3
    assert labels["degree"][0] >= 0 and labels["degree"][1] == -1


def _dm(**kwargs):
    dm = GraphData(**kwargs)
    dm.setup()
    return dm


def test_neighbor_loader_visits_every_train_node_once_per_epoch():
    dm = _dm(sampler="neighbor", batch_size=32, num_neighbors=[5, 5])
    seen = torch.cat([b.n_id[:b.batch_size] for b in dm.train_dataloader()])
    train = dm.data.train_mask.nonzero().view(-1)
    assert seen.numel() == train.numel() == 140 and torch.equal(seen.sort().values, train)
    val = next(iter(dm.val_dataloader()))
    assert "batch_size" not in val and val.num_nodes == 2708 and "adj_t" in val  # evaluation: the whole graph


@pytest.mark.parametrize("sampler", ["neighbor", "full"])
def test_two_processes_split_the_train_nodes_without_overlap(sampler):
    dm = _dm(sampler=sampler, batch_size=16)
    train = set(dm.data.train_mask.nonzero().view(-1).tolist())
    shares = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        loader = dm.train_dataloader()
        if sampler == "neighbor":
            loader.sampler.set_epoch(3)
        shares.append([s for b in loader for s in
                       (b.n_id[:b.batch_size] if "n_id" in b else b.train_mask.nonzero().view(-1)).tolist()])
    assert len(shares[0]) == len(shares[1]) == 70  # 140 train nodes, even
    assert not set(shares[0]) & set(shares[1]) and set(shares[0]) | set(shares[1]) == train
    dm.trainer = None
    assert int(dm.data.train_mask.sum()) == 140  # the whole graph's mask untouched


@pytest.mark.parametrize("kwargs, key", [({"sampler": "random"}, "data.sampler"),
                                         ({"num_neighbors": []}, "data.num_neighbors"),
                                         ({"num_neighbors": [10, -2]}, "data.num_neighbors"),
                                         ({"batch_size": 0}, "data.batch_size")])
def test_bad_sampling_options_are_one_line_errors(kwargs, key):
    with pytest.raises(MoezooError, match=key):
        GraphData(**kwargs)
