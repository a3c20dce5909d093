"""The diffusion family end to end: the CLI's fit/test with FID-cls, the image-folder format, FID, the cache."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from moezoo.cli import main
from moezoo.errors import MoezooError
from moezoo.tasks.dit.data import DiffusionImageData
from moezoo.tasks.dit.fid import frechet_distance, load_or_train_classifier

QUIET = ["--trainer.enable_progress_bar", "false"]
SMALL = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
         "--model.init_args.samples_per_class", "3", "--model.init_args.sample_steps", "2"]


def test_promoe_fits_writes_sample_grids_and_tests_with_fid_cls(tmp_path):
    main(["fit", "--task", "dit/promoe", "--trainer.default_root_dir", str(tmp_path), *SMALL, *QUIET])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test/fid_cls"] > 0 and 0 <= metrics["test/sample_acc"] <= 1
    # it learned: the untrained model predicts velocity 0 (adaLN-Zero), whose rectified-flow loss is
    # E|noise - x|^2 = 1 + E[x^2] on the test images (1.56); 3 steps bring it below (measured 1.52 for tc-moe)
    data = DiffusionImageData()
    data.setup("test")
    zero_velocity_loss = 1 + torch.cat([images for images, _ in data.test_dataloader()]).pow(2).mean().item()
    assert metrics["test/loss"] < zero_velocity_loss - 0.02, (metrics["test/loss"], zero_velocity_loss)
    assert "train/aux/routing_contrastive" in metrics or any("routing_contrastive" in k for k in metrics)
    assert (tmp_path / "samples" / "epoch_000.png").read_bytes()[:4] == b"\x89PNG"
    assert 0 <= metrics["test/routing/class_nmi"] <= 1 and 0 <= metrics["test/routing/timestep_nmi"] <= 1
    assert "val/routing/class_nmi" in metrics, "validation counts the routing by class"
    assert (tmp_path / "expert_load" / "test_by_timestep.png").is_file()
    assert (tmp_path / "expert_load" / "test_by_class.png").is_file()
    routing_by = json.loads((tmp_path / "routing_by_label.json").read_text())
    per_layer = [tables["class"]["nmi"] for tables in routing_by.values()]  # the logged number: mean over layers
    assert len(per_layer) == 2 and sum(per_layer) / 2 == pytest.approx(metrics["test/routing/class_nmi"], abs=1e-6)
    # the timestep sweep routes every test image once per bin: each bin holds the same number of assignments
    bins = routing_by["model.blocks.1.ffn"]["timestep"]["counts"]
    assert len(bins) == 10 and len({round(sum(row), 3) for row in bins}) == 1
    main(["test", "--task", "dit/promoe", "--trainer.default_root_dir", str(tmp_path), "--ckpt_path",
          metrics["best_model_path"], "--model.init_args.samples_per_class", "3",
          "--model.init_args.sample_steps", "2", *QUIET])
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again["test/fid_cls"] == pytest.approx(metrics["test/fid_cls"], rel=1e-4), "seeded sampling"


def test_frechet_distance_matches_the_scipy_formula():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(200, 5, generator=g), torch.randn(150, 5, generator=g) * 1.5 + 0.3
    mu_r, mu_f = real.double().mean(0).numpy(), fake.double().mean(0).numpy()
    cov_r, cov_f = np.cov(real.double().numpy().T), np.cov(fake.double().numpy().T)
    expected = ((mu_r - mu_f) ** 2).sum() + np.trace(cov_r + cov_f - 2 * linalg.sqrtm(cov_r @ cov_f).real)
    assert float(frechet_distance(real, fake)) == pytest.approx(expected, rel=1e-4)
    assert float(frechet_distance(real, real)) == pytest.approx(0.0, abs=1e-4)


def test_the_fid_classifier_is_trained_once_and_then_loaded_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEZOO_CACHE", str(tmp_path))
    data = DiffusionImageData(image_size=8)
    data.setup()
    first, acc = load_or_train_classifier(data)
    assert acc > 0.8 and len(list(tmp_path.glob("fid_cls_*.pt"))) == 1
    second, acc2 = load_or_train_classifier(data)
    assert acc2 == acc
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_image_folder_is_resized_to_rgb_in_minus_one_one_and_errors_are_clear(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = DiffusionImageData(root=str(tmp_path), image_size=12, batch_size=4)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 12, 12) and images.min() >= -1 and images.max() <= 1
    assert data.num_classes == 2 and data.channels == 3
    with pytest.raises(MoezooError, match="no such directory"):
        DiffusionImageData(root=str(tmp_path / "nope")).setup()
