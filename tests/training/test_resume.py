"""A run killed mid-training resumes with --ckpt_path last and loses at most the unfinished epoch."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

STEPS_PER_EPOCH = 4
ARGS = ["--task", "image-classification", "--trainer.enable_progress_bar", "false",
        "--trainer.limit_train_batches", str(STEPS_PER_EPOCH), "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1", "--model.init_args.embed_dim", "32", "--model.init_args.depth", "2"]


def _moezoo_fit(run_dir: Path, *args) -> list[str]:
    """The console script, as a user runs it."""
    return [str(Path(sys.executable).with_name("moezoo")), "fit", *ARGS, "--trainer.default_root_dir", str(run_dir),
            *args]


def _epoch_of(checkpoint: Path) -> int:
    """The epoch index saved in ``checkpoint``; -1 while there is none (Lightning replaces the file atomically)."""
    try:
        return torch.load(checkpoint, weights_only=False)["epoch"] if checkpoint.exists() else -1
    except (EOFError, RuntimeError, OSError):
        return -1


def test_killed_run_resumes_from_its_last_epoch(tmp_path):
    # one thread: the run's speed then does not depend on other processes sharing the cores
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_moezoo_fit(tmp_path, "--trainer.max_epochs", "500"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and _epoch_of(last) < 1:
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be killed"
        assert _epoch_of(last) >= 1, "no last.ckpt of a second epoch within 180 s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    saved = torch.load(last, weights_only=False)
    done_epochs = saved["epoch"] + 1  # `epoch` is the index of the last finished epoch
    assert saved["global_step"] == STEPS_PER_EPOCH * done_epochs
    # the heatmap of an epoch is drawn after its checkpoint is written: no finished epoch lacks its checkpoint
    drawn = sorted(int(p.stem.split("_")[1]) for p in (tmp_path / "expert_load").glob("epoch_*.png"))
    assert drawn and drawn[-1] <= saved["epoch"], (drawn, saved["epoch"])

    resumed = subprocess.run(_moezoo_fit(tmp_path, "--trainer.max_epochs", str(done_epochs + 2), "--ckpt_path", "last"),
                             capture_output=True, text=True, env=env, timeout=240)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in output
    final = torch.load(last, weights_only=False)
    assert final["epoch"] == done_epochs + 1
    assert final["global_step"] == saved["global_step"] + 2 * STEPS_PER_EPOCH, "two more epochs, none repeated"
    assert (tmp_path / "expert_load" / f"epoch_{done_epochs + 1:03d}.png").exists()
