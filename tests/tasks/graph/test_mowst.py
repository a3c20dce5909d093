"""Mowst's losses and training phases against the paper's formulas."""

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Data

from moezoo.tasks.graph import Mowst, NodeClassifier
from moezoo.tasks.graph.mowst import mixture, mixture_loss, mowst_loss


def _toy(n=12, f=5, c=3):
    g = torch.Generator().manual_seed(0)
    edge_index = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
    edge_index = torch.cat([edge_index, edge_index.flip(0)], 1)
    masks = torch.zeros(3, n, dtype=torch.bool)
    masks[torch.arange(n) % 3, torch.arange(n)] = True
    data = Data(x=torch.randn(n, f, generator=g), edge_index=edge_index, y=torch.arange(n) % c,
                train_mask=masks[0], val_mask=masks[1], test_mask=masks[2])
    data.degree = torch.full((n,), 2.0)
    return data


def test_mowst_loss_is_confidence_weighted_sum_of_expert_losses():
    conf = torch.tensor([0.0, 1.0, 0.3])
    weak, strong = torch.randn(3, 4), torch.randn(3, 4)
    y = torch.tensor([1, 2, 3])
    ce_w, ce_s = F.cross_entropy(weak, y, reduction="none"), F.cross_entropy(strong, y, reduction="none")
    expected = torch.stack([ce_s[0], ce_w[1], 0.3 * ce_w[2] + 0.7 * ce_s[2]]).mean()
    assert mowst_loss(conf, weak, strong, y) == pytest.approx(expected.item(), rel=1e-6)


def test_mixture_loss_is_the_cross_entropy_of_the_expected_prediction():
    conf = torch.tensor([0.2, 0.9])
    weak, strong = torch.randn(2, 3), torch.randn(2, 3)
    y = torch.tensor([0, 2])
    p = conf[:, None] * weak.softmax(-1) + (1 - conf[:, None]) * strong.softmax(-1)
    assert torch.allclose(mixture(conf, weak.softmax(-1), strong.softmax(-1)), p)
    assert mixture_loss(conf, weak, strong, y) == pytest.approx(-p[[0, 1], y].log().mean().item(), rel=1e-6)


def test_alternating_step_trains_only_the_phase_expert():
    model = Mowst(strong="gcn", num_features=5, num_classes=3, first_phase="weak")
    data = _toy()
    weak_opt = torch.optim.SGD([*model.weak.parameters(), *model.gate.parameters()], lr=0.1)
    strong_opt = torch.optim.SGD(model.strong.parameters(), lr=0.1)
    model.optimizers = lambda: (weak_opt, strong_opt)
    model.manual_backward = lambda loss: loss.backward()
    model.log = lambda *a, **k: None
    for phase, moving, still in (("weak", model.weak, model.strong), ("strong", model.strong, model.weak)):
        model.phase["name"] = phase
        before_moving = [p.clone() for p in moving.parameters()]
        before_still = [p.clone() for p in still.parameters()]
        model.training_step(data, 0)
        assert any(not torch.equal(a, b) for a, b in zip(before_moving, moving.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(before_still, still.parameters()))


def test_phase_switches_after_patience_and_stops_after_round_patience():
    model = Mowst(strong="gcn", num_features=5, num_classes=3, phase_patience=2, round_patience=1)

    class Trainer:
        sanity_checking = False
        should_stop = False

    model._trainer = Trainer()
    names = []
    for score in [0.5, 0.5, 0.5] + [0.4] * 12:
        model._val_score = score
        model.on_validation_epoch_end()
        names.append(model.phase["name"])
        if model._trainer.should_stop:
            break
    assert names[:3] == ["strong", "strong", "weak"], "strong first, weak after 2 epochs without improvement"
    # round 1 (strong, weak) sets the best score; round 2 brings nothing better: stop when it ends
    assert model._trainer.should_stop and len(names) == 12


def test_sampled_inference_uses_the_weak_expert_with_probability_c():
    model = Mowst(strong="gcn", num_features=5, num_classes=3, num_draws=400).eval()
    data = _toy()
    expected, draws, conf = model.predictions(data)
    weak = model.weak(data.x).softmax(-1)
    share = torch.stack([torch.isclose(d, weak).all(-1).float() for d in draws]).mean(0)
    assert torch.allclose(share, conf, atol=0.08)
    assert torch.allclose(torch.stack(draws).mean(0), expected, atol=0.08)


def test_experts_are_pyg_models_and_unknown_names_are_rejected():
    from torch_geometric.nn.models import GCN, MLP

    model = Mowst(strong="gcn", num_features=5, num_classes=3)
    assert isinstance(model.weak, MLP) and isinstance(model.strong, GCN)
    with pytest.raises(ValueError, match="model.init_args.strong='gcm'"):
        Mowst(strong="gcm")
    with pytest.raises(ValueError, match="unknown expert 'gnn'"):
        NodeClassifier(expert="gnn")


def test_mowst_star_pretraining_trains_only_the_chosen_expert_on_its_own_loss():
    model = Mowst(strong="gcn", star=True, pretrain="strong", pretrain_epochs=2, num_features=5, num_classes=3)
    model.eval()  # no dropout, so the loss can be recomputed
    model.log = lambda *a, **k: None
    data = _toy()
    loss = model.training_step(data, 0)  # current_epoch is 0 outside a trainer
    strong_logits = model.strong(data.x, data.edge_index)
    assert loss.item() == pytest.approx(F.cross_entropy(strong_logits[data.train_mask], data.y[data.train_mask]).item())
    loss.backward()
    assert all(p.grad is None for p in [*model.weak.parameters(), *model.gate.parameters()])
    assert any(p.grad is not None for p in model.strong.parameters())
    with pytest.raises(ValueError, match="pretrain='both'"):
        Mowst(star=True, pretrain="both")
