"""End-to-end runs of the `moezoo` command: every registered variant, run directory contents, and user errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from moezoo.cli import main
from moezoo.registry import list_tasks

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
        "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
        "--model.init_args.embed_dim", "32", "--model.init_args.depth", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _run(run_dir: Path, *args) -> dict:
    """`moezoo ARGS --trainer.default_root_dir RUN_DIR` in this process; the run's metrics.json."""
    main([*args, "--trainer.default_root_dir", str(run_dir)])
    return json.loads((run_dir / "metrics.json").read_text())


def _user_error(capfd, monkeypatch, *args) -> str:
    """`moezoo ARGS` in this process, expected to stop on a user error: its stderr."""
    monkeypatch.setattr(sys, "argv", ["moezoo"])
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    assert exit_.value.code == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("moezoo: error:")]


def _moezoo(*args, cwd):
    """Run the console script in a subprocess (as a user would), returning (exit code, stdout, stderr)."""
    script = Path(sys.executable).with_name("moezoo")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    return done.returncode, done.stdout, done.stderr


def test_tasks_lists_every_variant_with_its_description(capsys):
    main(["tasks"])
    lines = capsys.readouterr().out.splitlines()
    listed = dict(line.split(None, 1) for line in lines)
    assert listed == {name: variant.description for name, variant in list_tasks().items()}
    assert "image-classification" in listed and "digits" in listed["image-classification"]
    assert all(listed.values()), "every packaged YAML starts with a description comment"


# variants that start from another run's weights: their family's CLI test trains that run first
STARTS_FROM = {"vl/moe-llava": "upcycles a vl/dense checkpoint (tests/tasks/vision_language/test_vl_cli.py)",
               "mobility/movegcl-continual": "extends a mobility/movegcl checkpoint "
                                             "(tests/tasks/mobility/test_mobility_continual.py)"}


@pytest.mark.parametrize("task", sorted(list_tasks()))
def test_every_registered_variant_fits_through_the_cli(task, tmp_path):
    if task in STARTS_FROM:
        pytest.skip(STARTS_FROM[task])
    metrics = _run(tmp_path, "fit", "--task", task, "--trainer.fast_dev_run", "1",
                   "--trainer.enable_progress_bar", "false")
    assert metrics["global_step"] == 1


def test_fit_without_checkpointing_writes_no_checkpoint_and_tests_the_final_weights(tmp_path):
    # moezoo adds its ModelCheckpoint callbacks only when the user has not turned checkpointing off (Lightning
    # refuses enable_checkpointing=False next to a ModelCheckpoint)
    metrics = _run(tmp_path, "fit", "--task", "image-classification", *FAST, "--trainer.enable_checkpointing", "false")
    assert metrics["global_step"] == 3 and "test/acc" in metrics
    assert "best_model_path" not in metrics and not (tmp_path / "checkpoints").exists()


def test_fit_writes_checkpoints_heatmap_and_metrics_then_tests_the_best_checkpoint(tmp_path):
    metrics = _run(tmp_path, "fit", "--task", "image-classification", *FAST)
    assert {"val/acc", "test/acc", "train/loss", "best_model_path"} <= metrics.keys()
    assert metrics["epochs"] == 1 and metrics["global_step"] == 3
    assert 0 < metrics["train_seconds_per_step"] < 60
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    best = Path(metrics["best_model_path"])
    assert best.parent == tmp_path / "checkpoints" and best.name.startswith("best-") and best.is_file()
    png = (tmp_path / "expert_load" / "epoch_000.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 2000
    assert any(key.startswith("moe/net.blocks.1.mlp.moe/load_e") for key in metrics)
    assert (tmp_path / "lightning_logs").is_dir()
    # the core's load by label: the test images' classes over the experts of every MoE layer
    layer = "test/routing/net.blocks.1.mlp.moe"
    by_class = [[metrics[f"{layer}/class={c}/e{e}"] for e in range(4)] for c in range(10)]
    assert all(sum(row) == pytest.approx(1.0) for row in by_class)
    assert 0 <= metrics["test/routing/class_nmi"] == metrics[f"{layer}/class_nmi"] <= 1
    saved = json.loads((tmp_path / "routing_by_label.json").read_text())["net.blocks.1.mlp.moe"]
    assert saved["class"]["nmi"] == pytest.approx(metrics["test/routing/class_nmi"])
    assert (tmp_path / "expert_load" / "test_by_class.png").read_bytes()[:8] == PNG_MAGIC
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "lightning_logs").glob("version_*")))).Reload()
    assert "val/routing/class_nmi" in events.Tags()["scalars"], "logged to TensorBoard each validation epoch"


def test_test_and_validate_on_the_fitted_checkpoint_reproduce_fits_numbers(tmp_path):
    fit = _run(tmp_path / "fit", "fit", "--task", "image-classification", *FAST)
    best = fit["best_model_path"]
    # fresh run directories, so that metrics.json holds only what `test` / `validate` wrote
    tested = _run(tmp_path / "test", "test", "--task", "image-classification", *FAST, "--ckpt_path", best)
    assert tested["test/acc"] == pytest.approx(fit["test/acc"], abs=1e-6)
    assert "val/acc" not in tested
    validated = _run(tmp_path / "validate", "validate", "--task", "image-classification", *FAST, "--ckpt_path", best,
                     "--model.init_args.lr", "0.0123")
    assert validated["val/acc"] == pytest.approx(fit["best_model_score"], abs=1e-6)
    assert "test/acc" not in validated
    # the checkpoint's hyperparameters replace the task config's, but a --model flag typed here still wins
    hparams = (tmp_path / "validate" / "lightning_logs" / "version_0" / "hparams.yaml").read_text()
    assert "lr: 0.0123" in hparams and "embed_dim: 32" in hparams


def test_seed_everything_makes_a_run_reproducible(tmp_path):
    runs = [_run(tmp_path / str(i), "fit", "--task", "image-classification", *FAST, "--seed_everything", seed)
            for i, seed in enumerate(["7", "7", "8"])]
    for key in ("val/acc", "test/acc", "train/loss", "val/loss"):
        assert runs[0][key] == runs[1][key], key
    assert runs[2]["train/loss"] != runs[0]["train/loss"], "the flag sets the seed (the task config's is 0)"


def test_user_config_overrides_the_task_config_and_later_flags_override_it(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("trainer:\n  max_epochs: 2\n  limit_train_batches: 3\n"
                      "model:\n  init_args:\n    moe:\n      k: 1\n")
    metrics = _run(tmp_path / "run", "fit", "--task", "image-classification", *FAST, "--config", str(config),
                   "--trainer.limit_train_batches", "2")
    assert metrics["epochs"] == 2, "max_epochs from the user's config (the task config says 100, the flag before 1)"
    assert metrics["global_step"] == 2 * 2, "limit_train_batches from the flag after the config"
    moe = torch.load(metrics["best_model_path"], weights_only=False)["hyper_parameters"]["moe"]
    assert (moe["k"] if isinstance(moe, dict) else moe.k) == 1


def test_print_config_shows_the_task_config(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--task", "image-classification", "--print_config"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: moezoo.tasks.image_classification.ImageClassifier" in out
    assert "class_path: moezoo.tasks.image_classification.ImageClassificationData" in out
    assert "num_experts: 4" in out


def test_unknown_task_names_valid_tasks_and_the_closest(capfd, monkeypatch):
    err = _user_error(capfd, monkeypatch, "fit", "--task", "image-clasification")
    assert _error_lines(err) == [err.strip()], "one line, nothing else"
    assert "unknown task 'image-clasification'" in err and "Did you mean 'image-classification'" in err
    assert all(name in err for name in list_tasks())


def test_unknown_config_key_is_rejected_by_name(capfd, monkeypatch, tmp_path):
    err = _user_error(capfd, monkeypatch, "fit", "--task", "image-classification",
                      "--trainer.default_root_dir", str(tmp_path), "--model.init_args.no_such_key", "3")
    assert "no_such_key" in err
    assert not (tmp_path / "checkpoints").exists(), "rejected before training"


def _pngs(folder: Path, n: int, seed: int):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        pixels = (torch.rand(8, 8, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")


@pytest.fixture
def image_tree(tmp_path):
    """An ImageFolder tree: 3 classes of 10 random 8x8 grey PNGs."""
    root = tmp_path / "images"
    for c, name in enumerate(["cat", "dog", "fox"]):
        _pngs(root / name, 10, seed=c)
    return root


def test_image_folder_tree_trains_through_the_cli_with_its_sizes_linked_to_the_model(image_tree, tmp_path):
    metrics = _run(tmp_path / "run", "fit", "--task", "image-classification", *FAST, "--data.root", str(image_tree),
                   "--data.image_size", "12")
    assert 0.0 <= metrics["val/acc"] <= 1.0 and 0.0 <= metrics["test/acc"] <= 1.0
    hparams = torch.load(metrics["best_model_path"], weights_only=False)["hyper_parameters"]
    assert (hparams["num_classes"], hparams["img_size"]) == (3, 12), "from the data (the task config says 10, 8)"
    assert [k for k in metrics if k.startswith("test/routing/net.blocks.1.mlp.moe/class=")], "load by class"


def test_missing_data_root_is_a_one_line_error_from_the_console_script(tmp_path):
    root = tmp_path / "nowhere"
    code, _, err = _moezoo("fit", "--task", "image-classification", "--data.root", str(root),
                           "--trainer.default_root_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert _error_lines(err) == [f"moezoo: error: data.root: no such directory: {root}"]


@pytest.mark.parametrize("case", ["empty", "unreadable", "unreadable_in_worker"])
def test_bad_data_is_a_one_line_error_naming_the_path_or_key(case, image_tree, tmp_path, capfd, monkeypatch):
    root, extra = image_tree, []
    if case == "empty":
        root = tmp_path / "empty"
        (root / "cat").mkdir(parents=True)
        (root / "dog").mkdir()
        (root / "dog" / "notes.txt").write_text("not an image")
        expected = f"no images in {root}"
    elif case.startswith("unreadable"):
        bad = image_tree / "dog" / "bad.png"
        bad.write_bytes(b"this is not a png")
        expected = f"cannot read image {bad}"
        if case == "unreadable_in_worker":  # found while loading, in a DataLoader worker process
            extra += ["--data.init_args.check_images", "false", "--data.init_args.num_workers", "1",
                      "--data.init_args.batch_size", "64"]
    err = _user_error(capfd, monkeypatch, "fit", "--task", "image-classification", *FAST, "--data.root", str(root),
                      *extra, "--trainer.default_root_dir", str(tmp_path / "run"))
    lines = _error_lines(err)
    assert len(lines) == 1 and expected in lines[0], err[-3000:]


@pytest.mark.parametrize("task,flag,value", [("image-classification", "--model.init_args.moe.router", "switch"),
                                             ("graph/mowst-gcn", "--model.init_args.strong", "gcm")])
def test_a_value_outside_its_choices_is_rejected_naming_the_key(task, flag, value, tmp_path, capfd, monkeypatch):
    err = _user_error(capfd, monkeypatch, "fit", "--task", task, flag, value,
                      "--trainer.default_root_dir", str(tmp_path))
    assert flag.rsplit(".", 1)[1] in err and value in err


def test_a_run_prints_no_litlogger_advert(tmp_path):
    code, out, err = _moezoo("fit", "--task", "graph/mlp", "--trainer.fast_dev_run", "1",
                             "--trainer.default_root_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert "litlogger" not in out + err and "GPU available" in out + err, "Lightning's own lines still print"


@pytest.mark.parametrize("flags,key,expected", [
    (["--model.init_args.moee.k", "1"], "model.init_args.moee.k", "did you mean model.init_args.moe.k?"),
    (["--model.moee.k", "1"], "model.init_args.moee.k", "did you mean model.init_args.moe.k?"),
    (["--model.lrr", "1"], "model.init_args.lrr", "did you mean model.init_args.lr?"),
    (["--model.init_args.moe.kk", "1"], "model.init_args.moe.kk", "did you mean model.init_args.moe.k?"),
    (["--data.init_args.batch_sise", "3"], "data.init_args.batch_sise", "did you mean data.init_args.batch_size?"),
    (["--data.batch_sise", "3"], "data.init_args.batch_sise", "did you mean data.init_args.batch_size?"),
    (["--trainr.max_epochs", "3"], "trainr.max_epochs", "did you mean trainer.max_epochs?"),
    (["--data.batch_size", "abc"], "data.init_args.batch_size", "expected int, got 'abc'"),
    (["--trainer.max_epochs", "x"], "trainer.max_epochs", "expected int or null, got 'x'"),
    (["--model.init_args.moe.router", "topk"], "model.init_args.moe.router",
     "expected one of 'top_k', 'expert_choice', 'top_p', got 'topk'; did you mean 'top_k'?"),
    (["--data.batch_size", "0"], "data.init_args.batch_size", "must be a positive integer, got 0"),
    (["--data.num_workers", "-1"], "data.init_args.num_workers", "got -1"),
    (["--model.init_args.lr", "-1"], "model.init_args.lr", "must be a positive number, got -1.0"),
    (["--model.weight_decay", "-0.1"], "model.init_args.weight_decay", "must be a number >= 0, got -0.1"),
    (["--data.image_size", "0"], "data.init_args.image_size", "must be a positive integer, got 0"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_misspelt_key_or_wrong_value_is_one_line_naming_the_key_and_what_is_valid(flags, key, expected, tmp_path):
    code, out, err = _moezoo("fit", "--task", "image-classification", *flags,
                             "--trainer.default_root_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert code == 2, err[-3000:]
    assert len(err.strip().splitlines()) <= 3 and "Traceback" not in err and "usage:" not in err, err[-3000:]
    (line,) = _error_lines(err)
    assert line.startswith(f"moezoo: error: {key}: ") and expected in line, line
    if "did you mean" in expected and "'" not in expected:  # an unknown key: the valid ones and where to look
        assert "valid: " in line and "--help" in line or ".help " in line, line
    assert not (tmp_path / "run" / "checkpoints").exists(), "rejected before training"


def test_arguments_a_class_rejects_are_one_line_naming_the_class_and_its_reason(tmp_path):
    code, _, err = _moezoo("fit", "--task", "image-classification", "--model.init_args.embed_dim", "30",
                           "--trainer.default_root_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert _error_lines(err) == ["moezoo: error: ImageClassifier rejected its arguments: dim should be divisible by "
                                 "num_heads"]


def test_an_unknown_key_lists_the_classes_arguments_and_its_help(tmp_path):
    code, _, err = _moezoo("fit", "--task", "image-classification", "--data.init_args.batch_sise", "3", cwd=tmp_path)
    assert code == 2
    (line,) = _error_lines(err)
    valid = line.split("valid: ", 1)[1].split(" (see ", 1)[0].split(", ")
    assert {"root", "batch_size", "num_workers", "image_size"} <= set(valid)
    assert line.endswith("(see `moezoo fit --data.help moezoo.tasks.image_classification.ImageClassificationData`)")
    code, _, err = _moezoo("fit", "--task", "image-classification", "--ckpt_pth", "x", cwd=tmp_path)
    assert code == 2
    (line,) = _error_lines(err)
    assert "did you mean ckpt_path?" in line and line.endswith("(see `moezoo fit --help`)")
    assert {"trainer", "model", "data", "ckpt_path"} <= set(line.split("valid: ", 1)[1].split(" (see ")[0].split(", "))


def test_a_misspelt_key_in_a_config_file_is_named_like_a_flag(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("trainer:\n  max_epoch: 3\n")
    code, _, err = _moezoo("fit", "--task", "image-classification", "--config", str(config), cwd=tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err[-3000:]
    assert err.startswith("moezoo: error: trainer.max_epoch: unknown option; did you mean trainer.max_epochs?")
