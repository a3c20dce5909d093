"""A run killed mid-training resumes with --ckpt_path last and loses at most the unfinished epoch; a damaged last
checkpoint falls back to the newest readable one, and an explicit damaged one is a one-line error."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


def _truncate(checkpoint: Path) -> None:
    """Cut ``checkpoint`` to half its size, as a run killed while writing it (or a full disk) leaves it."""
    with checkpoint.open("r+b") as f:
        f.truncate(checkpoint.stat().st_size // 2)


@pytest.fixture(scope="module")
def _two_epoch_run(tmp_path_factory) -> Path:
    """A finished two-epoch run directory (best-*.ckpt and last.ckpt), written once for this module's tests."""
    run_dir = tmp_path_factory.mktemp("two-epochs")
    done = subprocess.run(_moezoo_fit(run_dir, "--trainer.max_epochs", "2"), capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return run_dir


@pytest.fixture
def two_epoch_run(_two_epoch_run, tmp_path) -> Path:
    """A copy of the two-epoch run for one test to damage."""
    run_dir = tmp_path / "run"
    shutil.copytree(_two_epoch_run, run_dir)
    return run_dir


def _resume(run_dir: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(_moezoo_fit(run_dir, *args), capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)


def _moezoo_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("moezoo: ")]


def test_a_damaged_last_checkpoint_resumes_from_the_newest_readable_one_with_a_warning(two_epoch_run):
    folder = two_epoch_run / "checkpoints"
    last, (best,) = folder / "last.ckpt", list(folder.glob("best-*.ckpt"))
    older = folder / "older.ckpt"  # readable, but older than best: not the one to resume from
    shutil.copy(best, older)
    os.utime(older, (time.time() - 3600, time.time() - 3600))
    os.utime(best, (time.time() - 60, time.time() - 60))
    saved = torch.load(best, weights_only=False)
    _truncate(last)

    resumed = _resume(two_epoch_run, "--trainer.max_epochs", str(saved["epoch"] + 2), "--ckpt_path", "last")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert "Traceback" not in resumed.stderr
    assert _moezoo_lines(resumed.stderr) == [
        f"moezoo: warning: checkpoint {last} is damaged (truncated or not a checkpoint: File is not a zip file); "
        f"resuming from {best}, the newest readable checkpoint"]
    assert f"Restoring states from the checkpoint path at {best}" in resumed.stdout + resumed.stderr
    final = torch.load(last, weights_only=False)  # rewritten whole by the resumed run
    assert final["epoch"] == saved["epoch"] + 1
    assert final["global_step"] == saved["global_step"] + STEPS_PER_EPOCH, "one more epoch after best's"


def test_no_readable_checkpoint_for_last_is_a_one_line_error_naming_the_folder(two_epoch_run):
    folder = two_epoch_run / "checkpoints"
    for checkpoint in folder.glob("*.ckpt"):
        _truncate(checkpoint)
    (folder / "empty.ckpt").write_bytes(b"")
    sizes = {p.name: p.stat().st_size for p in folder.glob("*.ckpt")}

    resumed = _resume(two_epoch_run, "--trainer.max_epochs", "4", "--ckpt_path", "last")
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    (line,) = _moezoo_lines(resumed.stderr)
    assert line.startswith(f"moezoo: error: ckpt_path last: no readable checkpoint in {folder}: ")
    assert all(name in line for name in ("last.ckpt", "best-epoch=", "empty.ckpt"))
    assert {p.name: p.stat().st_size for p in folder.glob("*.ckpt")} == sizes, "stopped before training"


def test_an_explicit_damaged_checkpoint_is_a_one_line_error_without_fallback(two_epoch_run):
    folder = two_epoch_run / "checkpoints"
    last = folder / "last.ckpt"
    _truncate(last)
    resumed = _resume(two_epoch_run, "--trainer.max_epochs", "4", "--ckpt_path", str(last))
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    assert resumed.stderr.strip().splitlines() == [
        f"moezoo: error: ckpt_path: cannot read checkpoint {last} "
        "(truncated or not a checkpoint: File is not a zip file)"]
    assert "Restoring states" not in resumed.stdout

    missing = folder / "nowhere.ckpt"
    resumed = _resume(two_epoch_run, "--ckpt_path", str(missing))
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines() == [f"moezoo: error: ckpt_path: no such checkpoint file: {missing}"]
