"""Mowst's confidence functions against their formulas on small tensors."""

import math

import pytest
import torch

from moezoo.tasks.graph.confidence import (
    DispersionConfidence,
    DispersionGate,
    LearnedConfidence,
    entropy_dispersion,
    variance_dispersion,
)

P = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.7, 0.1, 0.1, 0.1], [0.4, 0.4, 0.1, 0.1]])


def test_variance_dispersion_is_variance_over_the_one_hot_variance():
    n = 4
    one_hot_var = ((1 - 1 / n) ** 2 + (n - 1) * (1 / n) ** 2) / n
    expected = [((row - 1 / n) ** 2).mean().item() / one_hot_var for row in P]
    assert variance_dispersion(P).tolist() == pytest.approx(expected, abs=1e-6)
    assert variance_dispersion(P)[0] == pytest.approx(0.0) and variance_dispersion(P)[1] == pytest.approx(1.0)


def test_entropy_dispersion_is_one_minus_normalised_entropy():
    expected = [1 - sum(-p * math.log(p) for p in row.tolist() if p > 0) / math.log(4) for row in P]
    assert entropy_dispersion(P).tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("dispersion", ["variance", "entropy"])
def test_confidence_is_the_dispersion_raised_to_alpha(dispersion):
    base = DispersionConfidence(dispersion, alpha=1.0)(P)
    assert DispersionConfidence(dispersion, alpha=2.5)(P) == pytest.approx((base**2.5).tolist(), abs=1e-6)
    ranked = DispersionConfidence(dispersion)(P)
    assert ranked[1] > ranked[2] > ranked[0], "a sharper prediction is more confident"


@pytest.mark.parametrize("confidence", [DispersionConfidence("variance"), DispersionGate(8)])
def test_no_gradient_reaches_the_weak_expert_through_the_dispersions(confidence):
    # the official compute_confidence is @torch.no_grad: the weak expert cannot lower C to shed its loss
    logits = torch.randn(5, 3, requires_grad=True)
    c = confidence(logits.softmax(-1))
    assert c.grad_fn is None or torch.autograd.grad(c.sum(), logits, allow_unused=True)[0] is None


def test_learned_confidence_is_a_sigmoid_head_on_the_hidden_layer():
    head = LearnedConfidence(8)
    hidden = torch.randn(6, 8)
    expected = torch.sigmoid(hidden @ head.head.weight.t() + head.head.bias).squeeze(-1)
    assert torch.allclose(head(P[:1].expand(6, 4), hidden=hidden), expected)


def test_gate_is_sigmoid_of_the_official_gate_mlp_on_the_two_dispersions_and_features():
    torch.manual_seed(0)
    gate = DispersionGate(hidden_channels=8, in_features=3, num_layers=2, dropout=0.5).eval()
    with torch.no_grad():  # running statistics away from the (0, 1) defaults, so the eval-mode norm does something
        gate.mlp.norms[0].module.running_mean.uniform_(-1, 1)
        gate.mlp.norms[0].module.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3)
    features = torch.cat([torch.stack([variance_dispersion(P), entropy_dispersion(P)], -1), x], -1)
    first, last, norm = gate.mlp.lins[0], gate.mlp.lins[1], gate.mlp.norms[0].module
    h = (features @ first.weight.t() + first.bias - norm.running_mean) / (norm.running_var + norm.eps).sqrt()
    h = (h * norm.weight + norm.bias).relu()  # Linear, BatchNorm, ReLU (dropout off in eval), Linear: GateMLP
    expected = torch.sigmoid(h @ last.weight.t() + last.bias).squeeze(-1)
    assert torch.allclose(gate(P, x), expected, atol=1e-6)
    assert first.weight.shape == (8, 5)  # [D_var, D_ent, x]


def test_gate_output_is_a_probability_and_it_learns_while_the_weak_expert_gets_none():
    gate = DispersionGate(hidden_channels=8, in_features=3)
    logits = torch.randn(4, 4, requires_grad=True)
    c = gate(logits.softmax(-1), torch.randn(4, 3))
    assert c.shape == (4,) and ((0 < c) & (c < 1)).all()
    c.sum().backward()
    assert logits.grad is None, "the dispersion features carry no gradient to the weak expert"
    assert gate.mlp.lins[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown dispersion"):
        DispersionConfidence("kurtosis")
