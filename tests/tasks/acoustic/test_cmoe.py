"""CMoE against the official code's equations on small tensors; the front end, normalisation and precision."""

import pytest
import torch
import torch.nn.functional as F

from moezoo.moe import aux_loss, moe_layers
from moezoo.tasks.acoustic import AcousticClassifier, cmoe_head
from moezoo.tasks.acoustic.features import FrequencyNorm, SpectralFrontend
from moezoo.tasks.acoustic.model import recording_accuracy

SMALL = dict(channels=(8, 16, 16, 32), n_fft=256, hop_length=128, n_bins=16)


def _heads(head):
    """Each expert's weights [E, d, C] and biases [E, C] (one linear layer per expert)."""
    return head.experts.weights[0], head.experts.biases[0]


def test_cmoe_logits_come_from_the_argmax_expert_alone_when_the_score_does_not_gate_the_output():
    torch.manual_seed(0)
    head = cmoe_head(12, 5, 4, score="sigmoid", gate_output=False).train()
    r = torch.randn(16, 12)
    logits = head(r)
    scores = torch.sigmoid(r @ head.router.gate.weight.t())
    chosen = scores.argmax(-1)
    w, b = _heads(head)
    expected = torch.stack([r[i] @ w[chosen[i]] + b[chosen[i]] for i in range(16)])
    assert torch.allclose(logits, expected, atol=1e-5)
    # L = 0.01 * E * f . P with P the mean of the raw sigmoid scores (official ResNet_MoE_loadbalance)
    f = F.one_hot(chosen, 4).float().mean(0)
    assert aux_loss(head).item() == pytest.approx(0.01 * 4 * float(f @ scores.detach().mean(0)), rel=1e-5)
    # the router learns from the balance loss only: the task loss sends it no gradient
    F.cross_entropy(head(r), torch.zeros(16, dtype=torch.long)).backward()
    assert head.router.gate.weight.grad is None or head.router.gate.weight.grad.abs().max() == 0
    aux_loss(head)


def test_gated_cmoe_scales_the_chosen_heads_logits_by_its_score_and_rcmoe_adds_the_shared_head():
    torch.manual_seed(1)
    r = torch.randn(10, 12)
    gated = cmoe_head(12, 3, 4, score="softmax", gate_output=True).eval()
    scores = torch.softmax(r @ gated.router.gate.weight.t(), -1)
    top, chosen = scores.max(-1)
    w, b = _heads(gated)
    expected = torch.stack([top[i] * (r[i] @ w[chosen[i]] + b[chosen[i]]) for i in range(10)])
    assert torch.allclose(gated(r), expected, atol=1e-5)
    gated(r).sum().backward()
    assert gated.router.gate.weight.grad.abs().sum() > 0, "gated: the task loss trains the router"
    residual = cmoe_head(12, 3, 4, residual=True).eval()
    scores = torch.sigmoid(r @ residual.router.gate.weight.t())
    chosen = scores.argmax(-1)
    w, b = _heads(residual)
    shared = residual.shared_experts(r)
    expected = torch.stack([r[i] @ w[chosen[i]] + b[chosen[i]] for i in range(10)]) + shared
    assert torch.allclose(residual(r), expected, atol=1e-5)


def test_mlp_experts_and_the_linear_score():
    head = cmoe_head(12, 3, 4, score="linear", expert_hidden=7)
    assert [tuple(w.shape) for w in head.experts.weights] == [(4, 12, 7), (4, 7, 3)]
    assert head(torch.randn(5, 12)).shape == (5, 3)


@pytest.mark.parametrize("feature,bins", [("mel", 16), ("stft", 129), ("mfcc", 16), ("lfcc", 16)])
def test_every_feature_gives_a_map_of_its_bins(feature, bins):
    frontend = SpectralFrontend(feature, 8000, n_fft=256, hop_length=128, n_bins=16)
    maps = frontend(torch.randn(3, 8000))
    assert maps.shape == (3, 1, bins, 63) and torch.isfinite(maps).all()


def test_frequency_norm_uses_the_statistics_of_the_maps_it_is_fitted_on():
    norm = FrequencyNorm(4)
    x = torch.randn(6, 4, 10) * torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None] + torch.arange(4.0)[:, None]
    assert torch.equal(norm(x), x), "the identity until fitted"
    norm.fit([x[:2], x[2:]])
    flat = x.transpose(0, 1).reshape(4, -1)
    assert torch.allclose(norm.mean, flat.mean(1), atol=1e-5)
    assert torch.allclose(norm.std, flat.std(1, unbiased=False), atol=1e-5)
    assert bool(norm.fitted) and "mean" in norm.state_dict() and "fitted" in norm.state_dict()
    normed = norm(x).transpose(0, 1).reshape(4, -1)
    assert torch.allclose(normed.mean(1), torch.zeros(4), atol=1e-5)


def test_the_classifier_is_resnet18_shaped_with_one_moe_head_and_reports_the_chosen_expert():
    model = AcousticClassifier(num_classes=3, head="cmoe", num_experts=4, **SMALL)
    full = AcousticClassifier(num_classes=3, head="linear")
    assert full.backbone.num_features == 512 and len(full.backbone.layer1) == 2, "ResNet-18: 2-2-2-2 BasicBlocks"
    assert full.backbone.conv1.in_channels == 1
    assert [name for name, _ in moe_layers(model)] == ["head"]
    out = model.classify(torch.randn(5, 8000))
    assert out["prob"].shape == (5, 3) and torch.allclose(out["prob"].sum(-1), torch.ones(5))
    assert out["expert"].shape == (5,) and torch.equal(out["expert"], out["scores"].argmax(-1))


def test_a_training_step_under_bf16_autocast_on_cpu():
    model = AcousticClassifier(num_classes=2, head="rcmoe", num_experts=4, spec_augment=True, **SMALL).train()
    wave, labels = torch.randn(4, 8000), torch.tensor([0, 1, 0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(wave).float(), labels) + aux_loss(model)
    loss.backward()
    assert torch.isfinite(loss) and model.head.router.gate.weight.grad is not None


def test_recording_accuracy_sums_window_log_probabilities_per_recording():
    groups = torch.tensor([0, 0, 0, 1, 1])
    labels = torch.tensor([1, 1, 1, 0, 0])
    logp = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]]).log()
    # recording 0: windows vote 0, 1, 1 -> sum favours 1 (right); recording 1: 0.6*0.1 < 0.4*0.9 -> 1 (wrong)
    assert recording_accuracy(groups, logp, labels) == 0.5
