"""Mowst's losses and training phases against the paper's formulas."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Data

from moezoo.tasks.graph import Mowst, NodeClassifier
from moezoo.tasks.graph.confidence import DispersionGate
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


def _manual_optimisation_outside_a_trainer(model):
    """What Lightning gives Mowst's manual optimisation: its two optimisers (SGD here), backward, logging."""
    weak_opt = torch.optim.SGD([*model.weak.parameters(), *model.gate.parameters()], lr=0.1)
    strong_opt = torch.optim.SGD(model.strong.parameters(), lr=0.1)
    model.optimizers = lambda: (weak_opt, strong_opt)
    model.manual_backward = lambda loss: loss.backward()
    model.log = lambda *a, **k: None


def test_alternating_step_trains_only_the_phase_expert():
    model = Mowst(strong="gcn", num_features=5, num_classes=3, first_phase="weak")
    data = _toy()
    _manual_optimisation_outside_a_trainer(model)
    weak_side = torch.nn.ModuleList([model.weak, model.gate])  # the official optimizer1: MLP and gate together
    for phase, moving, still in (("weak", weak_side, model.strong), ("strong", model.strong, weak_side)):
        model.phase["name"] = phase
        before_moving = [p.clone() for p in moving.parameters()]
        before_still = [p.clone() for p in still.parameters()]
        before_gate = [p.clone() for p in model.gate.parameters()]
        model.training_step(data, 0)
        assert any(not torch.equal(a, b) for a, b in zip(before_moving, moving.parameters()))
        gate_moved = any(not torch.equal(a, b) for a, b in zip(before_gate, model.gate.parameters()))
        assert gate_moved == (phase == "weak"), "the gate trains in the weak phase only"
        assert all(torch.equal(a, b) for a, b in zip(before_still, still.parameters()))
    assert isinstance(model.gate, DispersionGate), "the default confidence is the official gate"


def test_weak_expert_gradient_comes_only_from_its_confidence_weighted_loss():
    # C is a function of the MLP's prediction, but the dispersions carry no gradient: d loss / d MLP equals the
    # gradient of mean(C.detach() * CE(weak)), the MLP cannot lower its loss by flattening its predictions
    for confidence in ("gate", "variance"):
        model = Mowst(strong="gcn", num_features=5, num_classes=3, confidence=confidence).eval()
        data = _toy()
        mask, y = data.train_mask, data.y[data.train_mask]
        weak_logits, strong_logits, conf = model(data)
        grads = torch.autograd.grad(mowst_loss(conf[mask], weak_logits[mask], strong_logits[mask].detach(), y),
                                    list(model.weak.parameters()), retain_graph=True)
        weighted = (conf[mask].detach() * F.cross_entropy(weak_logits[mask], y, reduction="none")).mean()
        reference = torch.autograd.grad(weighted, list(model.weak.parameters()))
        assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads, reference))


class _Trainer:
    sanity_checking = False
    should_stop = False


def _stamped_model(**kwargs):
    model = Mowst(strong="gcn", num_features=5, num_classes=3, **kwargs)
    model._trainer = _Trainer()
    return model


def _stamp(model, value):
    """Stand-in for an epoch of training: every weight of the experts and the gate becomes ``value``."""
    with torch.no_grad():
        for p in [*model.weak.parameters(), *model.strong.parameters(), *model.gate.parameters()]:
            p.fill_(value)


def _stamps(model):
    return {float(p.detach().flatten()[0]) for p in [*model.weak.parameters(), *model.strong.parameters(),
                                            *model.gate.parameters()]}


def _epoch(model, epoch, score):
    _stamp(model, epoch)
    model._val_score = score
    model.on_validation_epoch_end()


def test_phase_end_restores_the_phase_best_weights_or_reverts_to_the_phase_start():
    model = _stamped_model(first_phase="weak", phase_patience=2, round_patience=1)
    _stamp(model, -1.0)
    model.on_train_start()  # the weights the first phase starts from
    for epoch, score in enumerate([0.5, 0.6, 0.55, 0.55]):
        _epoch(model, epoch, score)
    assert model.phase["name"] == "weak" and _stamps(model) == {3.0}, "2 epochs without improvement: not yet"
    _epoch(model, 4, 0.55)  # a 3rd epoch without improvement (more than the patience) ends the phase
    assert model.phase["name"] == "strong" and model.phase["kept"] == 0.6
    assert _stamps(model) == {1.0}, "the phase's best epoch (0.6 > nothing kept) is restored"
    for epoch, score in zip(range(5, 9), [0.58, 0.5, 0.5, 0.5]):
        _epoch(model, epoch, score)
    assert model.phase["name"] == "weak" and model.phase["kept"] == 0.6
    assert _stamps(model) == {1.0}, "its best 0.58 is below the kept 0.6: all weights revert to the phase's start"

    fresh = _stamped_model()
    _stamp(fresh, -1.0)
    fresh.on_train_start()
    _epoch(fresh, 0, 0.0)
    fresh.phase["since"] = fresh.phase_patience  # the next epoch without improvement ends the phase
    _epoch(fresh, 1, 0.0)
    assert _stamps(fresh) == {0.0}, "one snapshot holds the weak expert, the strong one and the gate"


def test_rounds_are_counted_and_training_stops_after_round_patience_rounds_without_improvement():
    model = _stamped_model(first_phase="weak", phase_patience=2, round_patience=1)
    model.on_train_start()
    names, scores = [], [0.5, 0.6, 0.55, 0.55, 0.55] + [0.58, 0.5, 0.5, 0.5] + [0.4] * 40
    for epoch, score in enumerate(scores):
        _epoch(model, epoch, score)
        names.append(model.phase["name"])
        if model._trainer.should_stop:
            break
    assert names[:5] == ["weak"] * 4 + ["strong"], "the paper's order (first_phase: weak): the weak expert first"
    # round 1 (epochs 0-8) keeps 0.6; rounds 2 (9-16) and 3 (17-24) bring nothing better: more than 1 -> stop
    assert model._trainer.should_stop and len(names) == 25
    assert model.phase["rounds"] == 3 and model.phase["rounds_without"] == 2 and model.phase["round_best"] == 0.6
    assert _stamps(model) == {1.0}, "training ends on the best weights"


def test_strong_first_is_the_default_and_the_schedule_survives_a_checkpoint():
    model = _stamped_model(phase_patience=0)
    assert model.phase["name"] == "strong"
    model.on_train_start()
    _epoch(model, 0, 0.3)
    _epoch(model, 1, 0.2)
    assert model.phase["name"] == "weak" and _stamps(model) == {0.0}
    checkpoint = {}
    model.on_save_checkpoint(checkpoint)
    resumed = _stamped_model(phase_patience=0)
    resumed.on_load_checkpoint(checkpoint)
    resumed.on_train_start()  # a resumed run keeps the saved phase start
    assert resumed.phase == model.phase
    _stamp(resumed, 7.0)
    resumed._end_phase()  # nothing better than the kept 0.3 in this phase: revert to its start
    assert _stamps(resumed) == {0.0}


def test_sampled_inference_uses_the_weak_expert_with_probability_c():
    model = Mowst(strong="gcn", num_features=5, num_classes=3, num_draws=400).eval()
    data = _toy()
    expected, draws, conf = model.predictions(data)
    draws = list(draws)  # yielded one at a time
    assert len(draws) == 400 and all(torch.equal(a, b) for a, b in zip(draws, model.predictions(data)[1]))  # seeded
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
    with pytest.raises(ValueError, match="pretrain='all'"):
        Mowst(star=True, pretrain="all")
    with pytest.raises(ValueError, match="pretrain_epochs=-1"):
        Mowst(pretrain="both", pretrain_epochs=-1)


def test_mowst_pretraining_steps_train_one_expert_alone_with_its_own_optimiser():
    # the official pretrain_both: vanilla_train_test_wrapper(model1, optimizer1), then (model2, optimizer2)
    model = Mowst(strong="gcn", num_features=5, num_classes=3, pretrain="both")
    data = _toy()
    _manual_optimisation_outside_a_trainer(model)
    for phase, moving in (("pretrain-weak", model.weak), ("pretrain-strong", model.strong)):
        model.phase["name"] = phase
        model.eval()  # no dropout: the returned loss is the expert's cross-entropy, recomputed
        before = {n: [p.clone() for p in m.parameters()] for n, m in (("weak", model.weak),
                                                                      ("strong", model.strong), ("gate", model.gate))}
        logits = moving(data.x) if moving is model.weak else moving(data.x, data.edge_index)
        expected = F.cross_entropy(logits[data.train_mask], data.y[data.train_mask]).item()
        loss = model.training_step(data, 0)
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        for name, params in before.items():
            moved = any(not torch.equal(a, b) for a, b in zip(params, getattr(model, name).parameters()))
            assert moved == (getattr(model, name) is moving), (phase, name)


def test_pretraining_early_stops_on_the_expert_loss_restores_its_best_then_the_next_phase_starts():
    model = _stamped_model(pretrain="both", first_phase="weak", phase_patience=1)
    assert model.pretraining() == "weak"
    _stamp(model, -1.0)
    model.on_train_start()
    for epoch, score in enumerate([-1.0, -0.5, -0.7]):  # minus the weak expert's validation loss
        _epoch(model, epoch, score)
    assert model.pretraining() == "weak", "one epoch without improvement is within the patience"
    _epoch(model, 3, -0.6)
    assert model.pretraining() == "strong" and _stamps(model) == {1.0}, "the best pre-training epoch is restored"
    for epoch, score in zip(range(4, 7), [-0.9, -0.95, -0.92]):
        _epoch(model, epoch, score)
    assert model.pretraining() is None and model.phase["name"] == "weak" and _stamps(model) == {4.0}
    assert model.phase["kept"] == -math.inf and model.phase["rounds"] == 0, "the mixture starts with nothing kept"
    _epoch(model, 7, 0.3)  # the alternation's first phase starts from the pre-trained weights
    _epoch(model, 8, 0.2)
    _epoch(model, 9, 0.2)
    assert model.phase["name"] == "strong" and model.phase["kept"] == 0.3 and _stamps(model) == {7.0}

    fixed = _stamped_model(pretrain="strong", pretrain_epochs=2, star=True)
    assert fixed.pretraining() == "strong"
    _epoch(fixed, 0, -0.1)
    _epoch(fixed, 1, -0.9)
    assert fixed.pretraining() is None and _stamps(fixed) == {1.0}, "fixed epochs keep the last weights"


def test_a_pretraining_cli_fit_reaches_the_alternation(tmp_path):
    import json

    from moezoo.cli import main as moezoo

    out = tmp_path / "run"
    moezoo(["fit", "--task", "graph/mowst-gcn", "--trainer.max_epochs", "12", "--trainer.default_root_dir", str(out),
            "--trainer.enable_progress_bar", "false", "--model.init_args.pretrain", "both",
            "--model.init_args.pretrain_epochs", "3"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 12 and 0.0 <= metrics["test/acc"] <= 1.0
    model = Mowst.load_from_checkpoint(out / "checkpoints" / "last.ckpt")
    assert model.pretraining() is None and model.phase["name"] == "strong", "3 + 3 pre-training epochs, then the GNN"
    (best,) = (out / "checkpoints").glob("best-*.ckpt")
    assert int(best.stem.split("=")[1]) >= 6, f"{best.name}: the best checkpoint is a mixture epoch (0-5 pre-train)"


def test_the_best_checkpoint_forgets_the_pretraining_epochs_when_the_mixture_starts(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    kept = tmp_path / "best-epoch=002.ckpt"
    kept.write_text("a pre-training epoch")
    best, last = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max"), ModelCheckpoint(dirpath=tmp_path)
    best.best_k_models, best.best_model_path, best.kth_best_model_path = {str(kept): torch.tensor(0.9)}, str(kept), \
        str(kept)
    best.best_model_score = best.kth_value = torch.tensor(0.9)
    removed = []
    model = _stamped_model(pretrain="weak", pretrain_epochs=1)
    model._trainer.checkpoint_callbacks = [best, last]
    model._trainer.strategy = type("Strategy", (), {"remove_checkpoint": lambda self, path: removed.append(path)})()
    _epoch(model, 1.0, 0.9)  # the one pre-training epoch ends: that epoch's checkpoint is saved after this hook
    assert model.pretraining() is None and best.best_k_models, "nothing is forgotten before the mixture's first epoch"
    model.on_train_epoch_start()
    assert removed == [str(kept)] and best.best_k_models == {} and best.best_model_path == ""
    assert best.best_model_score is None and float(best.kth_value) == -math.inf
    assert best.check_monitor_top_k(model._trainer, torch.tensor(0.1)), "any mixture epoch is now the best so far"
    model.on_train_epoch_start()
    assert removed == [str(kept)], "only once"


def test_a_fit_that_ends_in_pretraining_says_the_mixture_never_trained():
    model = _stamped_model(pretrain="both", pretrain_epochs=5, star=True)
    model._trainer.current_epoch = 299
    with pytest.warns(UserWarning, match="training ended during pretrain-weak .* the mixture never trained"):
        model.on_train_end()
