"""Acoustic variants end to end through the CLI: the generated default, bf16, and the shared DeepShip and FSDD audio."""

import json
import os
import subprocess
import sys

import pytest
import torch
from acoustic_audio import FSDD

from moezoo.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = ["--trainer.enable_progress_bar", "false"]
SMALL = ["--model.init_args.channels", "[8, 16, 16, 32]", *QUIET]
TINY_DATA = ["--data.synthetic_recordings_per_class", "4", "--data.synthetic_seconds", "4"]


def _metrics(root):
    return json.loads((root / "metrics.json").read_text())


def test_cmoe_fits_on_the_generated_default_with_load_by_class_and_tests_again_from_its_checkpoint(tmp_path):
    main(["fit", "--task", "acoustic/cmoe", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "2",
          *SMALL, *TINY_DATA])
    fit = _metrics(tmp_path)
    assert {"test/acc", "test/macro_f1", "test/recording_acc", "train/aux/balance"} <= fit.keys()
    assert fit["epochs"] == 2
    for name in ("Cargo", "Passengership", "Tanker", "Tug"):  # the core's load by label, named by class
        assert sum(fit[f"test/routing/head/class={name}/e{e}"] for e in range(8)) == pytest.approx(1.0)
    assert 0 <= fit["test/routing/class_nmi"] <= 1
    checkpoint = torch.load(fit["best_model_path"], map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    assert bool(state["frontend.norm.fitted"]) and state["frontend.norm.std"].min() > 0, \
        "the normalisation was fitted on the training split and travels in the checkpoint"
    assert checkpoint["hyper_parameters"]["class_names"] == ["Cargo", "Passengership", "Tanker", "Tug"]
    main(["test", "--task", "acoustic/cmoe", "--trainer.default_root_dir", str(tmp_path),
          "--ckpt_path", fit["best_model_path"], *SMALL, *TINY_DATA])
    assert _metrics(tmp_path)["test/acc"] == pytest.approx(fit["test/acc"], abs=1e-6)


@pytest.mark.parametrize("task,feature", [("acoustic/resnet", "mfcc"), ("acoustic/rcmoe", "lfcc")])
def test_variants_train_under_bf16_mixed_with_other_features(task, feature, tmp_path):
    main(["fit", "--task", task, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1",
          "--trainer.precision", "bf16-mixed", "--data.feature", feature, "--model.init_args.n_bins", "20",
          "--model.init_args.spec_augment", "true", *SMALL, *TINY_DATA])
    fit = _metrics(tmp_path)
    assert fit["global_step"] > 0 and 0 <= fit["test/acc"] <= 1
    hparams = next(tmp_path.glob("lightning_logs/version_*/hparams.yaml")).read_text()
    assert f"feature: {feature}" in hparams, "the data's feature is linked to the model"


def test_cmoe_trains_and_tests_on_the_shared_deepship_recordings_split_by_recording(deepship_tree, tmp_path):
    main(["fit", "--task", "acoustic/cmoe", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1",
          "--data.root", str(deepship_tree), "--data.sample_rate", "16000", "--data.window_seconds", "3",
          "--data.hop_seconds", "3", "--model.init_args.n_fft", "1024", "--model.init_args.hop_length", "512",
          *SMALL])
    fit = _metrics(tmp_path)
    assert {"test/routing/head/class=Passengership/e0", "test/routing/head/class=Tanker/e0"} <= fit.keys()
    assert 0 <= fit["test/recording_acc"] <= 1


@pytest.mark.skipif(not (FSDD / "manifest.csv").is_file(), reason="shared FSDD not present")
def test_resnet_trains_on_fsdd_split_by_speaker(tmp_path):
    main(["fit", "--task", "acoustic/resnet", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs",
          "1", "--trainer.limit_train_batches", "8", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches",
          "2", "--data.manifest", str(FSDD / "manifest.csv"), "--data.label_column", "digit", "--data.group_column",
          "speaker", "--data.window_seconds", "1", "--data.pad_short", "true", "--data.check_audio", "false", *SMALL])
    fit = _metrics(tmp_path)
    assert fit["global_step"] == 8 and "test/acc" in fit
    hparams = next(tmp_path.glob("lightning_logs/version_*/hparams.yaml")).read_text()
    assert "num_classes: 10" in hparams


@pytest.mark.parametrize("flags,message", [
    (["--data.feature", "cqt"], "error: data.feature (model.init_args.feature): 'cqt' is not one of mel"),
    (["--data.root", "{root}", "--data.window_seconds", "0.5"],
     "error: cannot read audio {root}/a/x.wav: Error opening"),
])
def test_bad_input_through_the_cli_is_one_line_with_exit_status_2(flags, message, tmp_path):
    from acoustic_audio import class_tree

    root = class_tree(tmp_path / "tree")
    (root / "a" / "x.wav").write_bytes(b"junk")
    done = subprocess.run([sys.executable, "-m", "moezoo.cli", "fit", "--task", "acoustic/cmoe",
                           "--trainer.default_root_dir", str(tmp_path / "run"),
                           *[f.format(root=root) for f in flags], *SMALL], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message.format(root=root) in errors[0], done.stderr
    assert "Traceback" not in done.stderr
