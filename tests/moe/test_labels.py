"""Routing load by label: counts per label value, their NMI, and labels that never restrict experts."""

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from moezoo.moe import (
    GatedMixture,
    GroupedMLP,
    MoE,
    SoftRouter,
    TopKRouter,
    load_by_label,
    normalized_mutual_information,
    routing_labels,
)


def _layer(dim=4, experts=4, k=1):
    torch.manual_seed(0)
    return MoE(dim, TopKRouter(dim, experts, k=k), GroupedMLP(experts, dim, 8)).eval()


def test_per_sample_labels_count_every_token_of_the_sample_under_its_label():
    layer = _layer()
    x = torch.randn(3, 5, 4)  # 3 samples of 5 tokens
    label = torch.tensor([2, 0, 2])
    with routing_labels(layer, {"class": label}):
        layer(x)
    experts = layer.router(x.reshape(-1, 4)).expert_index  # k = 1: one expert per token, in token order
    expected = torch.zeros(3, 4)
    for token, expert in enumerate(experts.tolist()):
        expected[label[token // 5], expert] += 1
    table = load_by_label(layer)[""]
    assert torch.equal(table["class"]["counts"], expected)
    assert torch.equal(table["*"]["counts"], expected.sum(0, keepdim=True))
    assert torch.allclose(table["class"]["load"][[0, 2]].sum(-1), torch.ones(2))
    assert table["class"]["load"][1].sum() == 0, "a value never seen has no load"


def test_per_token_labels_and_negative_ids_not_counted():
    layer = _layer(k=2)
    x = torch.randn(6, 4)
    modality = torch.tensor([0, 0, 1, 1, -1, -1])  # the last two tokens are not counted
    with routing_labels(layer, {"modality": modality}):
        layer(x)
    counts = load_by_label(layer)[""]["modality"]["counts"]
    assert counts.sum() == 4 * 2, "two assignments for each of the four counted tokens"
    routing = layer.router(x)
    for m in (0, 1):
        mine = modality[routing.token_index] == m
        assert torch.equal(counts[m], torch.bincount(routing.expert_index[mine], minlength=4).float())


def test_labels_do_not_restrict_experts_or_change_outputs():
    layer = _layer(k=2)
    x = torch.randn(2, 3, 4)
    plain = layer(x)
    assert layer.record.by_label == {}, "a forward without labels counts nothing by label"
    with routing_labels(layer, {"class": torch.tensor([0, 1])}):
        labelled = layer(x)
    assert torch.equal(plain, labelled)
    assert layer.record.labels is None, "the labels are gone after the block"


def test_nested_blocks_add_labels_and_restore_the_outer_ones():
    layer = _layer()
    outer, inner = torch.tensor([0, 1]), torch.tensor([3, 3])
    with routing_labels(layer, {"class": outer}):
        with routing_labels(layer, {"timestep": inner}):
            assert set(layer.record.labels) == {"class", "timestep"}
            layer(torch.randn(2, 2, 4))
        assert set(layer.record.labels) == {"class"}
    tables = load_by_label(layer)[""]
    assert tables["timestep"]["counts"][3].sum() == 4 and tables["timestep"]["counts"][:3].sum() == 0


def test_reset_starts_a_new_tally():
    layer = _layer()
    with routing_labels(layer, {"class": torch.tensor([0])}):
        layer(torch.randn(1, 3, 4))
    assert load_by_label(layer, reset=True)
    assert load_by_label(layer) == {}


def test_soft_gates_count_gate_mass_by_label():
    torch.manual_seed(0)
    mixture = GatedMixture(SoftRouter(5, 3)).eval()
    gate_input, outputs = torch.randn(4, 5), torch.randn(3, 4, 2)
    domain = torch.tensor([0, 1, 1, 0])
    with routing_labels(mixture, {"domain": domain}):
        mixture(gate_input, outputs)
    probs = torch.softmax(mixture.router.gate(gate_input), -1)
    counts = load_by_label(mixture)[""]["domain"]["counts"]
    assert torch.allclose(counts, torch.stack([probs[domain == d].sum(0) for d in (0, 1)]), atol=1e-6)


def test_explicit_labels_of_a_forward_win_over_attached_ones():
    layer = _layer()
    routing = layer.router(torch.randn(4, 4))
    with routing_labels(layer, {"class": torch.zeros(4, dtype=torch.long)}):
        layer.record.add(routing, training=False, labels={"class": torch.tensor([1, 1, 1, 1])})
    counts = load_by_label(layer)[""]["class"]["counts"]
    assert counts[0].sum() == 0 and counts[1].sum() == 4


def test_a_label_that_does_not_fit_the_tokens_is_skipped():
    layer = _layer()
    with routing_labels(layer, {"class": torch.tensor([0, 1, 0])}):  # 3 ids for 4 tokens
        layer(torch.randn(4, 4))
    tables = load_by_label(layer)[""]
    assert "class" not in tables and tables["*"]["counts"].sum() == 4


@pytest.mark.parametrize("seed", range(4))
def test_nmi_of_the_count_table_equals_scikit_learns_on_the_pairs(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 300)
    experts = (labels + rng.integers(0, 2, 300) * rng.integers(0, 5, 300)) % 5  # partly decided by the label
    table = torch.zeros(4, 5)
    np.add.at(table.numpy(), (labels, experts), 1)
    expected = normalized_mutual_info_score(labels, experts)  # arithmetic normalisation
    assert normalized_mutual_information(table) == pytest.approx(expected, abs=1e-9)


def test_nmi_is_one_when_the_label_decides_the_expert_and_zero_when_independent():
    assert normalized_mutual_information(torch.eye(3) * 7) == pytest.approx(1.0)
    assert normalized_mutual_information(torch.ones(3, 4)) == pytest.approx(0.0, abs=1e-12)
    assert normalized_mutual_information(torch.tensor([[5.0, 0.0]])) == 0.0, "a constant label carries nothing"
    soft = torch.tensor([[0.75, 0.25], [0.25, 0.75]])
    assert normalized_mutual_information(soft) == pytest.approx(normalized_mutual_information(soft * 4), abs=1e-6)
