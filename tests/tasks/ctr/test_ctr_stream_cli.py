"""CTR data at scale through the CLI: `moezoo prepare` then `moezoo fit` / `moezoo test` on the prepared directory
(bf16-mixed too), and DDP fits on 2 CPU processes (gloo) whose ranks read disjoint training rows, streamed and in
memory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moezoo.cli import main
from moezoo.tasks.ctr.criteo_format import write_criteo_tsv

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__).resolve().parent
QUIET = ["--trainer.enable_progress_bar", "false"]
CRITEO = ["--data.preset", "criteo", "--data.hash_buckets", "1000"]


def _metrics(root: Path) -> dict:
    return json.loads((root / "metrics.json").read_text())


@pytest.fixture(scope="module")
def criteo(tmp_path_factory) -> tuple[Path, Path]:
    """A generated Criteo train.txt of 6,000 rows and its prepared directory (made through the CLI)."""
    root = tmp_path_factory.mktemp("criteo")
    source = write_criteo_tsv(root / "train.txt", 6000, seed=3)
    main(["prepare", "--task", "ctr/mmoe", "--data.path", str(source), *CRITEO, "--to", str(root / "prepared")])
    return source, root / "prepared"


def test_prepare_fit_and_test_through_the_cli(criteo, tmp_path, capsys):
    source, prepared = criteo
    assert json.loads((prepared / "prepared.json").read_text())["rows"] == {"train": 4200, "val": 600, "test": 1200}
    run = ["--task", "ctr/mmoe", "--data.path", str(prepared), *CRITEO, "--data.batch_size", "256",
           "--data.num_workers", "1", "--trainer.default_root_dir", str(tmp_path), *QUIET]
    main(["fit", *run, "--trainer.max_epochs", "2"])
    fit = _metrics(tmp_path)
    assert 0.0 < fit["test/auc_click"] < 1.0 and fit["test/logloss_click"] > 0
    main(["test", *run, "--ckpt_path", fit["best_model_path"]])
    assert _metrics(tmp_path)["test/auc_click"] == pytest.approx(fit["test/auc_click"], abs=1e-6)
    # the checkpoint carries the prepared encoders (a demo or an export encodes as training did)
    import torch

    state = torch.load(fit["best_model_path"], weights_only=False)["CTRData"]
    prepared_state = json.loads((prepared / "data.json").read_text())
    assert state.pop("source") == str(prepared) and prepared_state.pop("source") == str(source)
    assert state == prepared_state
    # the in-memory path on the same file, same flags: the same split sizes and encoders
    main(["fit", "--task", "ctr/mmoe", "--data.path", str(source), *CRITEO, "--data.batch_size", "256",
          "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "memory"), *QUIET])
    assert 0.0 < _metrics(tmp_path / "memory")["test/auc_click"] < 1.0


def test_bf16_mixed_fit_on_prepared_data(criteo, tmp_path):
    _, prepared = criteo
    main(["fit", "--task", "ctr/ple", "--data.path", str(prepared), *CRITEO, "--data.batch_size", "512",
          "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed", "--trainer.default_root_dir",
          str(tmp_path), *QUIET])
    metrics = _metrics(tmp_path)
    assert np.isfinite(metrics["test/logloss_click"]) and 0.0 < metrics["test/auc_click"] < 1.0


def test_a_prepared_directory_of_another_spec_is_one_line_through_the_cli(criteo, tmp_path, capsys):
    _, prepared = criteo
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--task", "ctr/mmoe", "--data.path", str(prepared), "--data.preset", "criteo",
              "--data.hash_buckets", "500", "--trainer.default_root_dir", str(tmp_path), *QUIET])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert "data.hash_buckets=1000" in err and str(prepared) in err
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--task", "ctr/mmoe", "--data.path", str(tmp_path / "missing.txt"), "--data.preset",
              "criteo", "--to", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "missing.txt" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--task", "image-classification/default", "--to", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "has no prepare(to)" in capsys.readouterr().err


SPEC = ["--data.labels", "[y]", "--data.categorical", "[c]", "--data.numeric", "[x, i]"]


def _ddp_fit(run: Path, data_path: Path) -> dict[int, list[float]]:
    """`python -m moezoo fit` on 2 gloo processes, 1 epoch; {rank: the row numbers (standardised) it trained on}."""
    callbacks = json.dumps([{"class_path": "ctr_rank_rows.RankRows", "init_args": {"out": str(run / "rows")}}])
    argv = [sys.executable, "-m", "moezoo", "fit", "--task", "ctr/mmoe", "--data.path", str(data_path), *SPEC,
            "--data.batch_size", "59", "--trainer.strategy", "ddp", "--trainer.devices", "2",
            "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(run),
            "--trainer.callbacks", callbacks, *QUIET]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE),
                                                                                os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=500, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    state = json.loads((run / "metrics.json").read_text())
    assert 0.0 < state["test/auc_y"] < 1.0  # the test after fit ran on both processes
    return {rank: json.loads((run / "rows" / f"rank{rank}.json").read_text())["0"] for rank in (0, 1)}


def test_ddp_on_two_processes_reads_disjoint_training_rows(tmp_path):
    """Streamed: 351 rows per rank (the epoch's rows split by rank). In memory: Lightning's sampler wrapper deals
    the 12 batches of 59 rows out to the ranks (an odd number of batches would repeat one to even them)."""
    rng = np.random.default_rng(0)
    rows = 1003  # 702 training rows (the split both paths share)
    source = tmp_path / "rows.csv"
    pd.DataFrame({"c": rng.integers(0, 5, rows).astype(str), "x": rng.standard_normal(rows), "i": np.arange(rows),
                  "y": rng.integers(0, 2, rows)}).to_csv(source, index=False)
    main(["prepare", "--task", "ctr/mmoe", "--data.path", str(source), *SPEC, "--to", str(tmp_path / "prepared")])
    state = json.loads((tmp_path / "prepared" / "data.json").read_text())
    mean, std = state["numeric_stats"]["i"]
    for name, path in (("streamed", tmp_path / "prepared"), ("memory", source)):
        seen = _ddp_fit(tmp_path / name, path)
        ranks = [np.rint(np.array(seen[r]) * std + mean).astype(int).tolist() for r in (0, 1)]
        assert all(len(set(r)) == len(r) for r in ranks), name  # no row twice within a rank
        assert not set(ranks[0]) & set(ranks[1]), name  # nor on both ranks
        assert len(ranks[0]) + len(ranks[1]) == 702, name  # every training row once in the epoch
        if name == "streamed":
            assert len(ranks[0]) == len(ranks[1]) == 351
