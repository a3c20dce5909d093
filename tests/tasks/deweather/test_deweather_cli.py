"""Deweathering variants end to end through the CLI: the synthesised default, bf16, and the shared real pairs."""

import json
from pathlib import Path

import pytest
import torch

from moezoo.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "weather"
QUIET = ["--trainer.enable_progress_bar", "false"]
SMALL = ["--model.init_args.channels", "4", "--model.init_args.dim", "32", "--model.init_args.num_heads", "2", *QUIET]
TINY_DATA = ["--data.train_samples", "24", "--data.eval_size", "48", "--data.eval_variants", "1",
             "--data.batch_size", "8"]


def _metrics(root):
    return json.loads((root / "metrics.json").read_text())


def test_mofme_uar_fits_on_the_synthesised_default_with_quality_and_load_by_weather_and_tests_again(tmp_path):
    main(["fit", "--task", "deweather/mofme-uar", "--trainer.default_root_dir", str(tmp_path),
          "--trainer.max_epochs", "2", *SMALL, *TINY_DATA])
    fit = _metrics(tmp_path)
    for weather in ("rain", "snow", "haze"):
        assert {f"test/psnr_{weather}", f"test/ssim_{weather}", f"test/input_psnr_{weather}"} <= fit.keys()
        load = [fit[f"test/routing/restorer.blocks.1.ffn.moe/weather={weather}/e{e}"] for e in range(4)]
        assert sum(load) == pytest.approx(1.0)  # the core's load by label, named by weather type
    assert fit["epochs"] == 2 and 0 <= fit["test/routing/weather_nmi"] <= 1
    assert fit["test/psnr"] > 5 and 0 < fit["test/ssim"] <= 1
    assert sorted(p.name for p in (tmp_path / "triptychs").glob("*.png")) == ["epoch_000.png", "epoch_001.png"]
    checkpoint = torch.load(fit["best_model_path"], map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["weather_names"] == ["rain", "snow", "haze"]
    assert checkpoint["hyper_parameters"]["router"] == "uncertainty"
    main(["test", "--task", "deweather/mofme-uar", "--trainer.default_root_dir", str(tmp_path),
          "--ckpt_path", fit["best_model_path"], *SMALL, *TINY_DATA])
    assert _metrics(tmp_path)["test/psnr"] == pytest.approx(fit["test/psnr"], abs=1e-4)  # eval is deterministic


@pytest.mark.parametrize("task", ["deweather/dense", "deweather/moe", "deweather/mofme"])
def test_variants_train_under_bf16_mixed(task, tmp_path):
    main(["fit", "--task", task, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1",
          "--trainer.precision", "bf16-mixed", *SMALL, *TINY_DATA])
    fit = _metrics(tmp_path)
    assert fit["global_step"] == 3 and fit["test/psnr"] > 5
    assert ("test/routing/weather_nmi" in fit) == (task != "deweather/dense")


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared weather pairs not present")
def test_a_model_trained_on_the_synthesiser_is_evaluated_on_the_shared_real_pairs_per_weather(tmp_path):
    main(["fit", "--task", "deweather/mofme", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1",
          *SMALL, *TINY_DATA])
    best = _metrics(tmp_path)["best_model_path"]
    real = tmp_path / "real"
    main(["test", "--task", "deweather/mofme", "--ckpt_path", best, "--data.test", str(SHARED),
          "--trainer.default_root_dir", str(real), *SMALL, *TINY_DATA])
    tested = _metrics(real)
    for weather in ("rain", "raindrop", "haze"):  # the real pairs' weather types, named from their folders
        assert tested[f"test/psnr_{weather}"] > 5 and f"test/input_psnr_{weather}" in tested
    assert "test/psnr_snow" not in tested  # no real snow pairs


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared weather pairs not present")
def test_mofme_trains_on_real_pair_folders_with_a_held_out_validation_share(tmp_path):
    main(["fit", "--task", "deweather/mofme", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1",
          "--data.train", str(SHARED / "haze"), "--data.val_fraction", "0.25", "--data.crop_size", "48", *SMALL])
    fit = _metrics(tmp_path)
    assert fit["global_step"] == 1 and "val/psnr_haze" in fit and not any(k.startswith("test/") for k in fit)
