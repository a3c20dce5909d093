"""The EMA of the DiT's weights: the update rules, its use in validation / test / sampling, checkpoints and folders."""

import json
from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from moezoo.cli import main
from moezoo.errors import MoezooError
from moezoo.hub import export_checkpoint, load_checkpoint
from moezoo.tasks.dit import DiTTask, MoEDiT
from moezoo.tasks.dit.ema import WeightEMA

TINY = dict(routing="promoe", patch_size=2, hidden_size=16, depth=2, num_heads=2, num_experts=2)


def _task(**kwargs) -> DiTTask:
    task = DiTTask(transformer=partial(MoEDiT, **TINY), image_size=8, channels=1, num_classes=3, sample_steps=2,
                   **kwargs)
    task.configure_model()
    return task


def _nudge(module: torch.nn.Module, scale: float = 0.1) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("warmup", ["none", "num_updates", "power"])
def test_each_update_is_the_ema_formula_at_the_rules_decay(warmup):
    """ema <- d_t ema + (1 - d_t) theta; d_t = 0.9 (none), min(0.9, (1 + t) / (10 + t)) after a first copy
    (num_updates), min(0.9, 1 - (1 + t)^(-2/3)) after a first copy (power); t = the updates before this one - 1."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    ema = WeightEMA(layer, decay=0.9, warmup=warmup)
    expected = [p.detach().clone() for p in layer.parameters()]
    for update in range(1, 6):
        _nudge(layer)
        t = update - 1
        if warmup == "none":
            d = 0.9
        elif t == 0:
            d = 0.0  # diffusers' first update copies the weights
        elif warmup == "num_updates":
            d = min(0.9, (1 + t) / (10 + t))
        else:
            d = min(0.9, 1 - (1 + t) ** (-2 / 3))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, layer.parameters())]
        ema.update()
        for got, want in zip(ema.state_dict().values(), expected):
            torch.testing.assert_close(got, want)
    assert ema.steps == 5


def test_applied_swaps_the_averages_in_place_and_puts_the_trained_weights_back():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    ema = WeightEMA(layer, decay=0.5, warmup="none")
    _nudge(layer)
    ema.update()
    trained = [p.detach().clone() for p in layer.parameters()]
    tensors = [p for p in layer.parameters()]
    with ema.applied():
        for p, shadow in zip(layer.parameters(), ema.state_dict().values()):
            torch.testing.assert_close(p, shadow)
            assert not torch.equal(p, trained[0 if p.dim() == 2 else 1])
    assert all(a is b for a, b in zip(layer.parameters(), tensors)), "the optimizer's tensors stay the same"
    for p, t in zip(layer.parameters(), trained):
        assert torch.equal(p, t)


def test_sampling_with_the_ema_is_sampling_a_model_that_holds_the_ema_weights():
    torch.manual_seed(0)
    task = _task(ema_decay=0.5, ema_warmup="none")
    _nudge(task.model)
    task.ema.update()
    _nudge(task.model)  # the trained weights move on, the EMA lags
    labels = torch.tensor([0, 1, 2])
    with task.ema_weights():
        with_ema = task.sample(labels)
    raw = task.sample(labels)
    twin = _task()
    twin.model.load_state_dict({**task.model.state_dict(), **task.ema.state_dict()})
    torch.testing.assert_close(with_ema, twin.sample(labels))
    assert not torch.allclose(with_ema, raw)


class _WeightsSeen(L.Callback):
    def __init__(self):
        self.during = []

    def on_validation_batch_start(self, trainer, task, batch, batch_idx, dataloader_idx=0):
        self.during.append([p.detach().clone() for p in task.model.parameters()])


def test_validation_runs_on_the_ema_weights_and_training_resumes_on_the_trained_ones(tmp_path):
    torch.manual_seed(0)
    task = _task(ema_decay=0.5, ema_warmup="none")
    _nudge(task.model)
    task.ema.update()
    _nudge(task.model)
    trained = [p.detach().clone() for p in task.model.parameters()]
    seen = _WeightsSeen()
    data = DataLoader(TensorDataset(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[seen], default_root_dir=tmp_path)
    trainer.validate(task, data, verbose=False)
    for got, want in zip(seen.during[0], task.ema.state_dict().values()):
        torch.testing.assert_close(got, want)
    for p, t in zip(task.model.parameters(), trained):
        assert torch.equal(p, t), "the trained weights are back after validation"
    assert (tmp_path / "samples" / "epoch_000.png").is_file()


def test_weights_alone_start_the_ema_from_them_and_bad_options_are_refused():
    torch.manual_seed(0)
    source = _task()
    _nudge(source.model)
    task = _task(ema_decay=0.99)
    task.ema.update()
    task.load_state_dict(source.state_dict())  # a hub folder's weights: no EMA beside them
    assert task.ema.steps == 0
    for shadow, weight in zip(task.ema.state_dict().values(), source.model.parameters()):
        assert torch.equal(shadow, weight)
    with pytest.raises(MoezooError, match="ema_decay"):
        DiTTask(ema_decay=1.5)
    with pytest.raises(MoezooError, match="ema_warmup"):
        DiTTask(ema_decay=0.9, ema_warmup="linear")


def test_the_ema_survives_checkpoint_export_and_from_pretrained_under_bf16_mixed(tmp_path):
    """A bf16-mixed fit (CPU autocast): the checkpoint holds the float32 EMA beside the trained weights;
    load_checkpoint (export, the demo's --ckpt_path) gives it back; an exported folder holds the EMA weights as the
    model's weights, so its samples are the checkpoint's EMA samples."""
    main(["fit", "--task", "dit/promoe", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches",
          "1", "--model.init_args.samples_per_class", "2", "--model.init_args.sample_steps", "2",
          "--model.init_args.ema_warmup", "none", "--model.init_args.ema_decay", "0.5",
          "--trainer.precision", "bf16-mixed", "--trainer.enable_progress_bar", "false"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ckpt = torch.load(metrics["best_model_path"], map_location="cpu", weights_only=True)
    ema, steps = ckpt["ema"]["weights"], ckpt["ema"]["steps"]
    trained = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    assert steps == 3 and ema.keys() <= trained.keys() and not any(k.startswith("ema") for k in ckpt["state_dict"])
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in ema.values())
    assert [k for k in ema if not torch.equal(ema[k], trained[k])], "after 3 steps at 0.5 the EMA lags the weights"
    task = load_checkpoint(metrics["best_model_path"])
    assert task.ema.steps == 3
    for name, value in task.ema.state_dict().items():
        assert torch.equal(value, ema[name])
    folder = export_checkpoint(metrics["best_model_path"], tmp_path / "exported")
    loaded = DiTTask.from_pretrained(folder)
    for name, value in loaded.model.named_parameters():
        assert torch.equal(value, ema[name]), "the folder's weights are the EMA weights"
    labels = torch.tensor([1, 4])
    with task.ema_weights():
        expected = task.sample(labels)
    torch.testing.assert_close(loaded.sample(labels), expected)
    with loaded.ema_weights():  # its EMA started from those weights
        torch.testing.assert_close(loaded.sample(labels), expected)
