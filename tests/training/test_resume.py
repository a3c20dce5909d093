"""A run killed mid-training resumes with --ckpt_path last and loses at most the unfinished epoch."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ARGS = ["--task", "image-classification", "--trainer.enable_progress_bar", "false",
        "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
        "--model.init_args.embed_dim", "32", "--model.init_args.depth", "2"]


def _moezoo(*args):
    return [str(Path(sys.executable).with_name("moezoo")), "fit", *ARGS, *args]


def test_killed_run_resumes_from_its_last_epoch(tmp_path):
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_moezoo("--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "500"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if last.exists() and torch.load(last, weights_only=False)["epoch"] >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = torch.load(last, weights_only=False)
    done_epochs = saved["epoch"] + 1  # `epoch` is the index of the last finished epoch
    assert saved["global_step"] == 4 * done_epochs

    resumed = subprocess.run(
        _moezoo("--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", str(done_epochs + 2),
                "--ckpt_path", "last"),
        capture_output=True, text=True, env=env, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Restoring states from the checkpoint path at" in resumed.stderr + resumed.stdout
    final = torch.load(last, weights_only=False)
    assert final["epoch"] == done_epochs + 1
    assert final["global_step"] == 4 * (done_epochs + 2), "two more epochs, none repeated"
