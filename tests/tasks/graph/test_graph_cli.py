"""Graph variants end to end through the CLI: fit, test from the checkpoint, and the heterophilous npz data."""

import json
from pathlib import Path

import pytest

from moezoo.cli import main
from moezoo.registry import list_tasks

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "graph"
QUIET = ["--trainer.enable_progress_bar", "false"]


def _metrics(root):
    return json.loads((root / "metrics.json").read_text())


def test_mowst_fits_on_embedded_cora_and_tests_again_from_its_checkpoint(tmp_path):
    main(["fit", "--task", "graph/mowst-gcn", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs",
          "20", "--model.init_args.phase_patience", "3", *QUIET])
    fit = _metrics(tmp_path)
    assert {"test/acc", "test/acc_sampled", "train/phase_is_weak"} <= fit.keys()
    # 20 epochs on Cora: the majority class is 0.32 of the test nodes, chance 1/7
    assert fit["test/acc"] > 0.5
    # the core's load by label: the weak expert's share (e0, mass of C) per class and degree bucket of test nodes
    weak, strong = fit["test/routing/gate/load_e0"], fit["test/routing/gate/load_e1"]
    assert 0 <= weak <= 1 and weak + strong == pytest.approx(1.0)
    per_class = [fit[f"test/routing/gate/class={c}/e0"] for c in range(7)]  # Cora's 7 classes
    assert min(per_class) - 1e-5 <= weak <= max(per_class) + 1e-5  # a mean of the per-class shares
    assert 0 <= fit["test/routing/class_nmi"] <= 1 and 0 <= fit["test/routing/degree_nmi"] <= 1
    assert "test/routing/gate/degree=0-1/e0" in fit and "test/routing/gate/degree=32+/e1" in fit
    main(["test", "--task", "graph/mowst-gcn", "--trainer.default_root_dir", str(tmp_path),
          "--ckpt_path", fit["best_model_path"], *QUIET])
    assert _metrics(tmp_path)["test/acc"] == pytest.approx(fit["test/acc"], abs=1e-6)


@pytest.mark.skipif(not (SHARED / "minesweeper.npz").is_file(), reason="shared data not present")
@pytest.mark.parametrize("task", [name for name in list_tasks() if name.startswith("graph/")])
def test_every_graph_variant_trains_on_the_shared_npz_with_roc_auc(task, tmp_path):
    main(["fit", "--task", task, "--data.root", str(SHARED), "--data.name", "minesweeper", "--data.split", "2",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "2", *QUIET])
    metrics = _metrics(tmp_path)
    assert 0.0 <= metrics["test/roc_auc"] <= 1.0
    assert "best-epoch" in metrics["best_model_path"]


@pytest.mark.parametrize("flags", [["--model.init_args.confidence", "learned"],
                                   ["--model.init_args.confidence", "entropy", "--model.init_args.alpha", "2"],
                                   ["--model.init_args.first_phase", "weak"],
                                   ["--model.init_args.gate_features", "true"]])
def test_mowst_options_train_through_the_cli(flags, tmp_path):
    main(["fit", "--task", "graph/mowst-sage", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs",
          "4", "--model.init_args.phase_patience", "1", *flags, *QUIET])
    assert 0.0 <= _metrics(tmp_path)["test/acc"] <= 1.0


def test_mowst_star_separate_loss_with_gate_features(tmp_path):
    main(["fit", "--task", "graph/mowst-star-gin", "--trainer.default_root_dir", str(tmp_path),
          "--trainer.max_epochs", "3", "--model.init_args.star_loss", "separate",
          "--model.init_args.gate_features", "true", *QUIET])
    assert 0.0 <= _metrics(tmp_path)["test/acc"] <= 1.0


@pytest.mark.skipif(not (SHARED / "Cora").is_dir(), reason="shared data not present")
def test_planetoid_root_through_the_cli(tmp_path):
    import shutil

    shutil.copytree(SHARED / "Cora", tmp_path / "graphs" / "Cora")  # a writable copy: nothing may be written there
    main(["fit", "--task", "graph/mowst-star-gcn", "--data.root", str(tmp_path / "graphs"), "--data.name", "Cora",
          "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_epochs", "2", *QUIET])
    assert "test/acc" in _metrics(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "graphs" / "Cora").iterdir()) == ["raw"]
