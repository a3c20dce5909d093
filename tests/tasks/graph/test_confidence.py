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


def test_confidence_is_differentiable_in_the_prediction():
    logits = torch.randn(5, 3, requires_grad=True)
    DispersionConfidence("variance")(logits.softmax(-1)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_learned_confidence_is_a_sigmoid_head_on_the_hidden_layer():
    head = LearnedConfidence(8)
    hidden = torch.randn(6, 8)
    expected = torch.sigmoid(hidden @ head.head.weight.t() + head.head.bias).squeeze(-1)
    assert torch.allclose(head(P[:1].expand(6, 4), hidden), expected)


def test_mowst_star_gate_sees_dispersions_without_gradient_and_optionally_features():
    gate = DispersionGate(hidden_channels=8, in_features=3)
    logits = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(4, 3)
    c = gate(logits.softmax(-1), x)
    assert c.shape == (4,) and ((0 < c) & (c < 1)).all()
    c.sum().backward()
    assert logits.grad is None, "the dispersion features carry no gradient to the weak expert"
    assert gate.mlp[0].weight.shape == (8, 5)
    with pytest.raises(ValueError, match="unknown dispersion"):
        DispersionConfidence("kurtosis")
