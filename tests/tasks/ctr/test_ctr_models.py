"""CTR models against their equations on small tensors: MMoE, PLE, HoME's mask and gates, AdaptDHM (the stacked expert
banks themselves are tested in tests/moe/test_experts.py)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from moezoo.kernels import grouped_mm, sort_by_expert
from moezoo.moe import GatedMixture, StackedMLP, aux_loss, load_by_label, routing_labels, routing_stats
from moezoo.moe.stats import normalized_mutual_information
from moezoo.tasks.ctr.adaptdhm import AdaptDHMNet, ClusterNetworks, DistributionAdaptation
from moezoo.tasks.ctr.home import FeatureGate, HoMENet, SelfGate
from moezoo.tasks.ctr.metrics import gauc
from moezoo.tasks.ctr.mmoe import MMoENet
from moezoo.tasks.ctr.ple import PLENet


def _expert(mlp: StackedMLP, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e of a StackedMLP computed alone (Linear layers, ReLU/Swish, eval-mode BN)."""
    act = {"relu": F.relu, "silu": F.silu}[mlp.activation]
    h = x
    for layer, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
        h = h @ w[e] + b[e, 0]
        if mlp.output_layer and layer == len(mlp.weights) - 1:
            return h
        if mlp.norms is not None:
            bn, width = mlp.norms[layer], w.shape[-1]
            sl = slice(e * width, (e + 1) * width)
            h = (h - bn.running_mean[sl]) / torch.sqrt(bn.running_var[sl] + bn.eps) * bn.weight[sl] + bn.bias[sl]
        h = act(h)
    return h


@pytest.mark.parametrize("net", [MMoENet, PLENet])
def test_an_old_config_with_activation_swish_builds_the_same_model_as_silu(net):
    v, domain = torch.randn(8, 6), torch.zeros(8, dtype=torch.long)
    outputs = []
    for name in ("swish", "silu"):
        torch.manual_seed(0)
        outputs.append(net(6, ["a", "b"], ["all"], activation=name, batch_norm=True).eval()(v, domain))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_home_experts_are_swish_of_batch_norm_per_expert():
    net = HoMENet(6, ["a", "b"], ["all"])
    for bank in (net.meta_experts, net.task_experts):
        assert bank.activation == "silu" and bank.norms is not None and not bank.output_layer


def _gate_weights(domain_gates, x, domain=0):
    router = list(domain_gates.domains.values())[domain].router
    return router(x).combine_weights()


def test_mmoe_is_each_tasks_softmax_mixture_of_shared_experts_through_its_tower():
    torch.manual_seed(0)
    net = MMoENet(6, ["a", "b"], ["all"], num_experts=3, expert_hidden=[4], tower_hidden=[5]).eval()
    v, domain = torch.randn(8, 6), torch.zeros(8, dtype=torch.long)
    experts = torch.stack([_expert(net.experts, e, v) for e in range(3)])
    for t, gate in enumerate(net.gates.values()):
        g = torch.softmax(v @ list(gate.domains.values())[0].router.gate.weight.t(), -1)
        mixed = torch.einsum("be,ebh->bh", g, experts)
        tower = net.towers.towers[t]
        torch.testing.assert_close(net(v, domain)[:, t], _expert(tower, 0, mixed).squeeze(-1))


@pytest.mark.parametrize("net", [MMoENet, PLENet, HoMENet])
def test_the_shared_experts_count_each_tasks_gate_mass_by_task(net):
    torch.manual_seed(0)
    net = net(6, ["a", "b", "c"], ["d0", "d1"]).eval()
    v, domain = torch.randn(12, 6), torch.tensor([0, 1, 1] * 4)
    with routing_labels(net, {"domain": domain}):
        net(v, domain)
    tables = load_by_label(net)
    names = {id(module): name for name, module in net.named_modules()}
    pools = {name: module.record for name, module in net.named_modules()
             if hasattr(module, "record") and not isinstance(module, GatedMixture)}
    assert pools, "the experts shared by the task gates count their usage by task"
    for pool_name, record in pools.items():
        expected = torch.zeros_like(tables[pool_name]["task"]["counts"])
        for gate in net.modules():
            if isinstance(gate, GatedMixture) and gate.pool is record:
                expected[gate.pool_labels["task"]] += tables[names[id(gate)]]["*"]["counts"][0]
        # each task's row: the gate mass of that task's gates over every domain (each sample goes through one)
        torch.testing.assert_close(tables[pool_name]["task"]["counts"], expected)
        torch.testing.assert_close(expected.sum(1), torch.full((3,), 12.0))
        assert tables[pool_name]["task"]["nmi"] == pytest.approx(normalized_mutual_information(expected))
    assert not any(name in routing_stats(net) for name in pools), "the pool keeps no last-forward statistics"
    assert aux_loss(net) == 0.0


def test_multi_domain_samples_use_only_their_domains_gate_and_tower():
    torch.manual_seed(0)
    net = MMoENet(6, ["a"], ["d0", "d1"], num_experts=3).eval()
    v, domain = torch.randn(10, 6), torch.tensor([0, 1] * 5)
    before = net(v, domain)
    with torch.no_grad():
        net.gates["a"].domains["d1"].router.gate.weight.add_(1.0)
        net.towers.towers[0].weights[-1][1].add_(1.0)
    after = net(v, domain)
    torch.testing.assert_close(after[domain == 0], before[domain == 0])
    assert not torch.allclose(after[domain == 1], before[domain == 1])


def test_ple_task_gates_mix_only_shared_and_own_experts_and_shared_gate_mixes_all():
    torch.manual_seed(0)
    net = PLENet(6, ["a", "b", "c"], ["all"], num_levels=2, num_shared=2, num_specific=1)
    x = torch.randn(5, 6)
    assert net.allowed(1) == [0, 1, 3]
    for level in range(2):
        for t, gate in enumerate(net.task_gates[level].values()):
            w = _gate_weights(gate, x if level == 0 else torch.randn(5, 64))
            assert (w[:, [e for e in range(5) if e not in net.allowed(t)]] == 0).all()
            torch.testing.assert_close(w.sum(-1), torch.ones(5))
    assert (_gate_weights(net.shared_gates[0], x) > 0).all()


def test_ple_task_output_ignores_other_tasks_experts_at_the_last_level():
    torch.manual_seed(0)
    net = PLENet(6, ["a", "b"], ["all"], num_levels=1, num_shared=1, num_specific=1).eval()
    v, domain = torch.randn(4, 6), torch.zeros(4, dtype=torch.long)
    before = net(v, domain)
    with torch.no_grad():
        net.experts[0].weights[0][2].add_(1.0)  # task b's own expert
    after = net(v, domain)
    torch.testing.assert_close(after[:, 0], before[:, 0])
    assert not torch.allclose(after[:, 1], before[:, 1])


def test_home_hierarchy_mask_task_gates_see_shared_category_and_own_experts_only():
    torch.manual_seed(0)
    net = HoMENet(6, ["click", "like", "buy"], ["all"], categories=[["click", "like"], ["buy"]],
                  num_shared=1, num_category=2, num_task=1)
    # level 1: 1 shared + 2 per category = 5 experts; level 2 adds one per task: 8
    assert net.meta_allowed(0) == [0, 1, 2] and net.meta_allowed(1) == [0, 3, 4]
    assert net.task_allowed(0) == [0, 1, 2, 5] and net.task_allowed(1) == [0, 1, 2, 6]
    assert net.task_allowed(2) == [0, 3, 4, 7]
    v = torch.randn(9, 6)
    for c, gate in enumerate(net.meta_gates):
        w = _gate_weights(gate, v)
        assert (w[:, [e for e in range(5) if e not in net.meta_allowed(c)]] == 0).all()
    meta_output = torch.randn(9, 64)  # the task gates read their category's meta output
    for t, gate in enumerate(net.task_gates.values()):
        w = _gate_weights(gate, meta_output)
        assert (w[:, [e for e in range(8) if e not in net.task_allowed(t)]] == 0).all()
        assert (w[:, net.task_allowed(t)] > 0).all()


def test_home_task_logit_does_not_move_when_another_tasks_own_expert_changes():
    torch.manual_seed(0)
    net = HoMENet(6, ["click", "like", "buy"], ["all"], categories=[["click", "like"], ["buy"]],
                  num_shared=1, num_category=1, num_task=1).eval()
    v, domain = torch.randn(5, 6), torch.zeros(5, dtype=torch.long)
    before = net(v, domain)
    like_expert = net.own_experts(1)[0]
    with torch.no_grad():
        net.task_experts.weights[0][like_expert].add_(1.0)
    after = net(v, domain)
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]])
    assert not torch.allclose(after[:, 1], before[:, 1])


def test_feature_gate_is_centred_at_one_and_follows_its_formula():
    torch.manual_seed(0)
    gate = FeatureGate(3, 5, rank=2)
    x = torch.randn(4, 5)
    torch.testing.assert_close(gate(x), x.expand(3, 4, 5))  # 2 * sigmoid(0) = 1
    with torch.no_grad():
        gate.up.normal_()
    expected = torch.stack([x * 2 * torch.sigmoid(x @ gate.down[e] @ gate.up[e]) for e in range(3)])
    torch.testing.assert_close(gate(x), expected)
    assert ((gate(x) / x).abs() < 2).all()


def test_self_gate_is_a_softmax_over_several_own_experts_and_a_sigmoid_for_one():
    torch.manual_seed(0)
    gate = SelfGate(4, [1, 3])
    x, outputs = torch.randn(6, 4), torch.randn(5, 6, 2)
    w = torch.softmax(gate.gate(x), dim=-1)
    torch.testing.assert_close(gate(x, outputs), w[:, :1] * outputs[1] + w[:, 1:] * outputs[3])
    torch.testing.assert_close(gate.weights(x).sum(-1), torch.ones(6))
    single = SelfGate(4, [2])
    torch.testing.assert_close(single(x, outputs), torch.sigmoid(single.gate(x)) * outputs[2])


def test_home_task_gates_read_their_categorys_meta_output_and_the_global_output_has_no_self_gate():
    torch.manual_seed(0)
    net = HoMENet(6, ["click", "like", "buy"], ["all"], categories=[["click", "like"], ["buy"]],
                  num_shared=1, num_category=2, num_task=1, expert_hidden=[8]).eval()
    assert net.global_self_gate is None
    seen = {}
    for t, gate in enumerate(net.task_gates.values()):
        gate.register_forward_pre_hook(lambda module, args, t=t: seen.__setitem__(t, args[0].detach().clone()))
    meta = []
    for c in range(2):
        net.meta_gates[c].register_forward_hook(lambda module, args, out, c=c: meta.append((c, out.detach())))
    v, domain = torch.randn(5, 6), torch.zeros(5, dtype=torch.long)
    net(v, domain)
    h1 = net.meta_experts(net.meta_feature_gate(v))
    expected = {c: out + net.meta_self_gates[c](v, h1) for c, out in meta}
    for t, c in enumerate(net.category_of):
        assert seen[t].shape == (5, 8)
        torch.testing.assert_close(seen[t], expected[c])
    earlier = HoMENet(6, ["click", "buy"], ["all"], task_gate_input="features", global_self_gate=True)
    assert earlier.global_self_gate is not None
    assert next(iter(earlier.task_gates.values())).domains["all"].router.gate.in_features == 6


def test_dynamic_routing_follows_its_equations_and_updates_centres_by_momentum():
    torch.manual_seed(0)
    module = DistributionAdaptation(4, num_clusters=3, iterations=2, momentum=0.9, temperature=0.5).train()
    start = module.centres.clone()
    v = torch.randn(10, 4)
    u = F.normalize(v, dim=-1)
    c = start
    for _ in range(2):
        a = torch.softmax(u @ c.t() / 0.5, -1)
        c = F.normalize(a.t() @ u, dim=-1)
    a = torch.softmax(u @ c.t() / 0.5, -1)
    cluster = module(v)
    assert torch.equal(cluster, a.argmax(-1))
    torch.testing.assert_close(module.centres, F.normalize(0.9 * start + 0.1 * c, dim=-1))
    torch.testing.assert_close(module.centres.norm(dim=-1), torch.ones(3))


def test_adaptdhm_centres_are_unit_norm_buffers_without_gradient_and_frozen_in_eval():
    torch.manual_seed(0)
    net = AdaptDHMNet(6, ["a", "b"], ["all"], num_clusters=3)
    centres = net.adaptation.centres
    assert "adaptation.centres" in net.state_dict() and not centres.requires_grad
    assert all(p is not centres for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    domain = torch.zeros(16, dtype=torch.long)
    for _ in range(5):
        opt.zero_grad()
        net(torch.randn(16, 6), domain).sum().backward()
        opt.step()
    torch.testing.assert_close(net.adaptation.centres.norm(dim=-1), torch.ones(3))
    net.eval()
    frozen = net.adaptation.centres.clone()
    v = torch.randn(16, 6)
    cluster = net.adaptation(v)
    assert torch.equal(net.adaptation.centres, frozen)
    assert torch.equal(cluster, (F.normalize(v, dim=-1) @ frozen.t()).argmax(-1))
    assert net.to(torch.float64).adaptation.centres.dtype == torch.float64


def test_cluster_networks_use_shared_times_specific_weights_per_cluster():
    torch.manual_seed(0)
    nets = ClusterNetworks(3, 5, [4], 2)
    with torch.no_grad():
        for p in nets.parameters():
            p.normal_()
    bank = nets.bank
    v, cluster = torch.randn(9, 5), torch.tensor([2, 0, 1, 1, 2, 0, 0, 2, 1])
    out = nets(v, cluster)
    for b in range(9):
        k = cluster[b]
        h = v[b] @ (bank.shared_weights[0] * bank.weights[0][k])
        h = F.relu(h + bank.shared_biases[0] + bank.biases[0][k])
        h = h @ (bank.shared_weights[1] * bank.weights[1][k])
        torch.testing.assert_close(out[b], h + bank.shared_biases[1] + bank.biases[1][k])


class _ClusterNetworksBeforeTheCoreBank(torch.nn.Module):
    """ClusterNetworks as it was before it ran through the core routed bank (its own grouped_mm calls)."""

    def __init__(self, num_clusters, in_dim, hidden, out_dim, dropout=0.0):
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        self.num_clusters = num_clusters
        self.shared_weights = torch.nn.ParameterList(torch.nn.Parameter(torch.empty(i, o))
                                                     for i, o in zip(dims, dims[1:]))
        self.shared_biases = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(o)) for o in dims[1:])
        self.cluster_weights = torch.nn.ParameterList(torch.nn.Parameter(torch.ones(num_clusters, i, o))
                                                      for i, o in zip(dims, dims[1:]))
        self.cluster_biases = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(num_clusters, o))
                                                     for o in dims[1:])
        for w in self.shared_weights:
            torch.nn.init.xavier_uniform_(w)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, v, cluster):
        order, offsets = sort_by_expert(cluster, self.num_clusters)
        rows = cluster[order]
        h = v[order]
        last = len(self.shared_weights) - 1
        for layer in range(last + 1):
            weight = self.shared_weights[layer] * self.cluster_weights[layer]
            bias = self.shared_biases[layer] + self.cluster_biases[layer][rows]
            h = grouped_mm(h, weight, offsets) + bias
            if layer < last:
                h = self.dropout(F.relu(h))
        return h.new_empty(h.shape).index_copy(0, order, h)


@pytest.mark.parametrize("training", [False, True])
def test_cluster_networks_through_the_core_bank_equal_the_old_ones_in_init_output_and_gradients(training):
    torch.manual_seed(0)
    old = _ClusterNetworksBeforeTheCoreBank(4, 6, [5, 3], 2, dropout=0.3).train(training)
    torch.manual_seed(0)
    new = ClusterNetworks(4, 6, [5, 3], 2, dropout=0.3).train(training)
    pairs = [(new.bank.shared_weights, old.shared_weights), (new.bank.weights, old.cluster_weights),
             (new.bank.shared_biases, old.shared_biases), (new.bank.biases, old.cluster_biases)]
    for new_params, old_params in pairs:  # the same init, from the same random draws
        for a, b in zip(new_params, old_params, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        for p in old.parameters():
            p.normal_()
    new.load_state_dict(old.state_dict())  # an old checkpoint loads under the new names
    v = torch.randn(11, 6)
    cluster = torch.tensor([3, 0, 0, 1, 3, 0, 1, 1, 3, 0, 3])  # cluster 2 is empty
    torch.manual_seed(1)
    out_old = old(v, cluster)
    torch.manual_seed(1)
    out_new = new(v, cluster)
    torch.testing.assert_close(out_new, out_old, rtol=0, atol=0)
    out_old.square().sum().backward()
    out_new.square().sum().backward()
    for new_params, old_params in pairs:
        for a, b in zip(new_params, old_params, strict=True):
            torch.testing.assert_close(a.grad, b.grad)


def test_gauc_is_the_impression_weighted_mean_of_per_user_auc_over_users_with_both_classes():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 6, 200)
    labels = (rng.random(200) < 0.4).astype(float)
    labels[users == 5] = 1.0  # one class only: left out
    preds = np.round(rng.random(200), 1)  # ties
    total, weight = 0.0, 0
    for u in range(5):
        m = users == u
        total += m.sum() * roc_auc_score(labels[m], preds[m])
        weight += m.sum()
    got = gauc(torch.tensor(preds), torch.tensor(labels), torch.tensor(users))
    assert float(got) == pytest.approx(total / weight)


def _centre_update_rank(rank, world, port, results):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial centres on both ranks, as DDP's broadcast makes them
        module = DistributionAdaptation(4, num_clusters=3, iterations=2, momentum=0.9).train()
        start = module.centres.clone()
        v = torch.randn(12, 4, generator=torch.Generator().manual_seed(rank + 1))
        _, refined = module.route(F.normalize(v, dim=-1))
        module(v)
        results[rank] = (start.tolist(), refined.tolist(), module.centres.tolist())
    finally:
        dist.destroy_process_group()


def test_adaptdhm_centre_update_is_averaged_over_data_parallel_ranks():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_centre_update_rank, args=(2, port, results), nprocs=2, join=True)
    start = torch.tensor(results[0][0])
    mean_refined = (torch.tensor(results[0][1]) + torch.tensor(results[1][1])) / 2
    expected = F.normalize(0.9 * start + 0.1 * mean_refined, dim=-1)
    torch.testing.assert_close(torch.tensor(results[0][2]), expected)
    torch.testing.assert_close(torch.tensor(results[1][2]), expected)
    assert not torch.allclose(torch.tensor(results[0][1]), torch.tensor(results[1][1])), "ranks saw different data"
