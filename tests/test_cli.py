"""End-to-end runs of the `moezoo` command: every registered variant, run directory contents, and user errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from moezoo.cli import main
from moezoo.registry import list_tasks

FAST = ["--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
        "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
        "--model.init_args.embed_dim", "32", "--model.init_args.depth", "2"]


def _run(tmp_path, *args):
    main([*args, "--trainer.default_root_dir", str(tmp_path)])
    return json.loads((tmp_path / "metrics.json").read_text())


def _moezoo(*args, cwd):
    """Run the console script in a subprocess (as a user would), returning (exit code, stdout, stderr)."""
    script = Path(sys.executable).with_name("moezoo")
    done = subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=240)
    return done.returncode, done.stdout, done.stderr


def test_tasks_lists_every_variant_with_its_description(capsys):
    main(["tasks"])
    out = capsys.readouterr().out
    for name, variant in list_tasks().items():
        assert name in out and variant.description and variant.description[:40] in out
    assert "image-classification" in out and "digits" in out


@pytest.mark.parametrize("task", sorted(list_tasks()))
def test_every_registered_variant_fits_through_the_cli(task, tmp_path):
    main(["fit", "--task", task, "--trainer.default_root_dir", str(tmp_path), "--trainer.fast_dev_run", "1",
          "--trainer.enable_progress_bar", "false"])
    assert (tmp_path / "metrics.json").exists()


def test_fit_writes_checkpoints_heatmap_and_metrics_then_tests_the_best_checkpoint(tmp_path):
    metrics = _run(tmp_path, "fit", "--task", "image-classification", *FAST)
    assert {"val/acc", "test/acc", "train/loss", "best_model_path"} <= metrics.keys()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert Path(metrics["best_model_path"]).name.startswith("best-") and Path(metrics["best_model_path"]).exists()
    png = (tmp_path / "expert_load" / "epoch_000.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert any(key.startswith("moe/net.blocks.1.mlp.moe/load_e") for key in metrics)


def test_test_and_validate_on_the_fitted_checkpoint_reproduce_fits_numbers(tmp_path):
    fit = _run(tmp_path, "fit", "--task", "image-classification", *FAST)
    tested = _run(tmp_path, "test", "--task", "image-classification", *FAST, "--ckpt_path", fit["best_model_path"])
    assert tested["test/acc"] == pytest.approx(fit["test/acc"], abs=1e-6)
    validated = _run(tmp_path, "validate", "--task", "image-classification", *FAST,
                     "--ckpt_path", fit["best_model_path"])
    assert validated["val/acc"] == pytest.approx(fit["best_model_score"], abs=1e-6)


def test_seed_everything_makes_a_run_reproducible(tmp_path):
    runs = [_run(tmp_path / str(i), "fit", "--task", "image-classification", *FAST, "--seed_everything", "7")
            for i in range(2)]
    for key in ("val/acc", "test/acc", "train/loss", "val/loss"):
        assert runs[0][key] == runs[1][key]


def test_user_config_and_flags_override_the_task_config(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("trainer:\n  max_epochs: 2\nmodel:\n  init_args:\n    moe:\n      k: 1\n")
    metrics = _run(tmp_path, "fit", "--task", "image-classification", *FAST, "--config", str(config))
    assert metrics["epochs"] == 2
    moe = torch.load(metrics["best_model_path"], weights_only=False)["hyper_parameters"]["moe"]
    assert (moe["k"] if isinstance(moe, dict) else moe.k) == 1


def test_print_config_shows_the_task_config(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--task", "image-classification", "--print_config"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: moezoo.tasks.image_classification.ImageClassifier" in out and "num_experts: 4" in out


def test_unknown_task_names_valid_tasks_and_the_closest(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--task", "image-clasification"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown task 'image-clasification'" in err and "Did you mean 'image-classification'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_config_key_is_rejected_by_name(tmp_path):
    code, _, err = _moezoo("fit", "--task", "image-classification", "--model.init_args.no_such_key", "3",
                           cwd=tmp_path)
    assert code == 2 and "no_such_key" in err and "Traceback" not in err


def _pngs(folder: Path, n: int, seed: int):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        pixels = (torch.rand(8, 8, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")


@pytest.fixture
def image_tree(tmp_path):
    root = tmp_path / "images"
    for c, name in enumerate(["cat", "dog", "fox"]):
        _pngs(root / name, 12, seed=c)
    return root


def test_image_folder_tree_trains_through_the_cli(image_tree, tmp_path):
    metrics = _run(tmp_path / "run", "fit", "--task", "image-classification", *FAST, "--data.root", str(image_tree),
                   "--model.init_args.num_classes", "3")
    assert 0.0 <= metrics["test/acc"] <= 1.0 and "val/acc" in metrics


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable", "num_classes"])
def test_bad_data_is_a_one_line_error_naming_the_path_or_key(case, image_tree, tmp_path):
    root, extra, expected = image_tree, [], None
    if case == "missing":
        root = tmp_path / "nowhere"
        expected = str(root)
    elif case == "empty":
        root = tmp_path / "empty"
        (root / "cat").mkdir(parents=True)
        expected = f"no images in {root}"
    elif case == "unreadable":
        bad = image_tree / "dog" / "bad.png"
        bad.write_bytes(b"this is not a png")
        expected = str(bad)
    else:
        expected = "model.init_args.num_classes=10"
    if case != "num_classes":
        extra = ["--model.init_args.num_classes", "3"]
    code, _, err = _moezoo("fit", "--task", "image-classification", "--data.root", str(root), *extra,
                           "--trainer.max_epochs", "1", cwd=tmp_path)
    assert code == 2
    assert expected in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("moezoo: error:")]) == 1
