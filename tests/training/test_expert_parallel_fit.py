"""`moezoo fit --trainer.strategy expert_parallel` in 2 gloo processes (the command a user types, Lightning's launcher
starting the second process) against 1 process on the same global batches: the same loss curve and weights, and
checkpoints that move between the layouts both ways (fit resumed with 2 processes from a 1-process checkpoint, and
with 1 from a 2-process one, optimizer state included)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

GLOBAL_BATCH = 64
COMMON = ["--task", "image-classification/default", "--trainer.accelerator", "cpu",
          "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "1",
          "--trainer.limit_test_batches", "1", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar",
          "false", "--model.init_args.embed_dim", "32", "--model.init_args.depth", "2",
          "--model.init_args.warmup_epochs", "0",
          # exact comparison: no random augmentation (each rank would draw its own) and no balance loss (each rank
          # balances its own half, as under plain DDP)
          "--data.init_args.augment", "false", "--model.init_args.moe.balance_loss_weight", "0",
          "--trainer.logger", "lightning.pytorch.loggers.CSVLogger"]


def fit(run: Path, processes: int, epochs: int, *extra: str, expert_parallel: int | None = None) -> dict:
    """`python -m moezoo fit ...` with ``processes`` processes of GLOBAL_BATCH / processes samples each, the experts
    over all of them (or over ``expert_parallel`` of them)."""
    strategy = ["--trainer.strategy", "expert_parallel"] if expert_parallel is None else [
        "--trainer.strategy", "moezoo.training.ExpertParallelStrategy",
        "--trainer.strategy.expert_parallel_size", str(expert_parallel)]
    argv = [sys.executable, "-m", "moezoo", "fit", *COMMON, *strategy, "--trainer.devices", str(processes),
            "--data.init_args.batch_size", str(GLOBAL_BATCH // processes), "--trainer.max_epochs", str(epochs),
            "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((run / "metrics.json").read_text())


def train_losses(run: Path) -> list[float]:
    rows = list(csv.DictReader(next(run.glob("lightning_logs/version_*/metrics.csv")).open()))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")["state_dict"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ep-fit")
    fit(root / "one", 1, 2)
    fit(root / "two", 2, 2)
    fit(root / "four", 4, 2, expert_parallel=2)  # mesh (2, 2): each expert on 2 ranks, reduced between them
    fit(root / "two-bf16", 2, 1, "--trainer.precision", "bf16-mixed")  # bf16 rows through the all-to-alls
    # and back: each layout resumes the other's checkpoint for a third epoch
    fit(root / "two-from-one", 2, 3, "--ckpt_path", str(root / "one" / "checkpoints" / "last.ckpt"))
    fit(root / "one-from-two", 1, 3, "--ckpt_path", str(root / "two" / "checkpoints" / "last.ckpt"))
    return {p.name: p for p in root.iterdir()}


def test_two_processes_follow_the_one_process_loss_curve(runs):
    one, two = train_losses(runs["one"]), train_losses(runs["two"])
    assert len(one) == len(two) == 12
    # the losses logged with 2 processes are the mean over both ranks' halves of the same global batch
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-4, atol=1e-4)


def test_four_processes_with_two_expert_replicas_follow_it_too(runs):
    """4 processes, experts split over 2 and replicated twice: the expert gradients are reduced over the replicas."""
    one, four = train_losses(runs["one"]), train_losses(runs["four"])
    torch.testing.assert_close(torch.tensor(four), torch.tensor(one), rtol=1e-4, atol=1e-4)
    a, b = weights(runs["one"]), weights(runs["four"])
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=2e-4)


def test_two_processes_train_under_bf16_autocast(runs):
    one, bf16 = train_losses(runs["one"])[:6], train_losses(runs["two-bf16"])
    assert len(bf16) == 6 and all(torch.isfinite(torch.tensor(bf16)))
    torch.testing.assert_close(torch.tensor(bf16), torch.tensor(one), rtol=0.02, atol=0.02)  # bf16's precision


def test_expert_parallel_size_must_divide_the_processes(tmp_path):
    argv = [sys.executable, "-m", "moezoo", "fit", *COMMON, "--trainer.strategy",
            "moezoo.training.ExpertParallelStrategy", "--trainer.strategy.expert_parallel_size", "3",
            "--trainer.devices", "2", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2
    assert "expert_parallel_size=3 must divide the 2 processes" in done.stderr
    assert "Traceback" not in done.stderr


def test_two_process_checkpoint_holds_every_expert_and_matches(runs):
    one, two = weights(runs["one"]), weights(runs["two"])
    assert one.keys() == two.keys()
    experts = [k for k in one if ".experts." in k]
    assert experts and all(two[k].shape == one[k].shape for k in experts)  # gathered: [E, ...], not [E / 2, ...]
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=2e-4)
    optimizer = torch.load(runs["two"] / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"][0]
    shapes = {tuple(s["exp_avg"].shape) for s in optimizer["state"].values()}
    assert tuple(one[experts[0]].shape) in shapes  # the optimizer state is gathered too


def test_checkpoints_move_between_layouts(runs):
    """2 epochs with one layout then 1 with the other, both ways: the same weights (model and optimizer state
    restored across layouts), and the 2-process run's test after fit ran."""
    a, b = weights(runs["two-from-one"]), weights(runs["one-from-two"])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=2e-4)
    metrics = json.loads((runs["two-from-one"] / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and "test/acc" in metrics
