"""Latent diffusion through a diffusers AutoencoderKL, the Inception FID, and the expert-specialisation tables."""

import json
from functools import partial
from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from scipy import linalg

from moezoo.cli import main
from moezoo.errors import MoezooError
from moezoo.moe import load_by_label
from moezoo.tasks.dit import MoEDiT
from moezoo.tasks.dit.fid import FeatureClassifier, fid_cls, frechet_distance, inception_fid
from moezoo.tasks.dit.specialisation import route_over_timesteps

QUIET = ["--trainer.enable_progress_bar", "false"]
SMALL = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
         "--trainer.limit_test_batches", "1", "--model.init_args.samples_per_class", "2",
         "--model.init_args.sample_steps", "2", "--model.init_args.timestep_bins", "2"]


def tiny_vae(path):
    """A randomly initialised one-channel AutoencoderKL (16x16 -> 4 x 8x8 latents), saved like a hub download."""
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=8, sample_size=16, scaling_factor=0.5)
    vae.save_pretrained(path)
    return vae


def test_latent_dit_trains_on_the_vaes_latents_and_decodes_its_samples(tmp_path):
    vae = tiny_vae(tmp_path / "vae")
    run = tmp_path / "run"
    weights = random_inception_weights(tmp_path / "inception.pth")
    main(["fit", "--task", "dit/tc-moe", "--model.init_args.vae", str(tmp_path / "vae"),
          "--model.init_args.inception_weights", str(weights), "--trainer.default_root_dir", str(run), *SMALL,
          *QUIET])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/fid_cls"] > 0 and metrics["test/fid_inception"] > 0
    checkpoint = torch.load(metrics["best_model_path"], weights_only=False)
    assert not any(k.startswith("vae.") for k in checkpoint["state_dict"]), "the frozen VAE stays out of checkpoints"
    from moezoo.tasks.dit import DiTTask, MoEDiT

    task = DiTTask(partial(MoEDiT, routing="token_choice", hidden_size=32, depth=2, num_heads=2),
                   vae=str(tmp_path / "vae"), image_size=16, channels=1, num_classes=10)
    task.configure_model()
    assert task.model.config.in_channels == 4 and task.model.config.sample_size == 8
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    expected = vae.encode(images).latent_dist.mode() * 0.5
    torch.testing.assert_close(task.vae.encode(images).latent_dist.mode() * 0.5, expected)
    labels = torch.tensor([1, 2])
    assert task.sample(labels).shape == (2, 1, 16, 16), "the pipeline decodes latents back to images"


def test_a_path_that_is_not_a_vae_is_a_one_line_error(tmp_path):
    from moezoo.tasks.dit.task import load_vae

    with pytest.raises(MoezooError, match="model.vae: .* is not a diffusers AutoencoderKL folder"):
        load_vae(str(tmp_path))


def random_inception_weights(path):
    """Weights made here (nothing can be downloaded): a random InceptionV3 in torch-fidelity's state-dict format."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(0)
    with mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", return_value={}), \
            mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"):
        extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in extractor.modules():  # its own init gives ~0 features everywhere
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    torch.save(extractor.state_dict(), path)
    return path


def test_inception_fid_uses_the_given_weights_and_is_zero_between_a_set_and_itself(tmp_path):
    weights = random_inception_weights(tmp_path / "inception.pth")
    real = torch.rand(6, 1, 16, 16)
    fake = (real + 0.5 * torch.rand(6, 1, 16, 16)).clamp(0, 1)
    assert inception_fid(real, real, weights) == pytest.approx(0.0, abs=1e-2)
    assert inception_fid(real, fake, weights) > 1e-3
    with pytest.raises(MoezooError, match="model.inception_weights: .*missing.pth is not a file"):
        from moezoo.tasks.dit import DiTTask

        DiTTask(inception_weights=str(tmp_path / "missing.pth"))


def _scipy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """The FID formula with scipy's matrix square root (the reference implementations' way)."""
    cov_r, cov_f = np.cov(real.T), np.cov(fake.T)
    return float(((real.mean(0) - fake.mean(0)) ** 2).sum() + np.trace(cov_r + cov_f)
                 - 2 * np.trace(linalg.sqrtm(cov_r @ cov_f).real))


def test_fid_cls_runs_the_classifier_inside_torchmetrics_and_matches_the_scipy_formula_on_its_features():
    torch.manual_seed(0)
    classifier = FeatureClassifier(1, 10).eval()
    real = torch.rand(400, 1, 8, 8) * 2 - 1
    fake = torch.rand(300, 1, 8, 8) * 0.4 + 0.5  # brighter than real
    with torch.no_grad():
        features = [classifier.features(x).double().numpy() for x in (real, fake)]
    expected = _scipy_fid(*features)
    assert expected > 1e-3, "the two sets differ in feature space"
    assert float(fid_cls(classifier, real, fake)) == pytest.approx(expected, rel=1e-3)
    assert float(frechet_distance(*map(torch.from_numpy, features))) == pytest.approx(expected, rel=1e-3)
    assert float(fid_cls(classifier, real, real)) == pytest.approx(0.0, abs=1e-4)


def test_load_tables_count_every_assignment_by_timestep_bin_and_by_class():
    torch.manual_seed(0)
    model = MoEDiT(sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=3,
                   routing="token_choice", num_experts=4, top_k=2)
    images, labels = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 2, 1])
    route_over_timesteps(model, images, labels, objective="rectified_flow", bins=3, batch_size=2)
    (table,) = load_by_label(model).values()
    assignments = 5 * 16 * 2  # images x tokens x k, per timestep bin
    by_timestep, by_class = table["timestep"]["counts"], table["class"]["counts"]
    assert by_timestep.shape == (3, 4) and (by_timestep.sum(1) == assignments).all()
    assert by_class.shape == (3, 4)
    assert by_class.sum(1).tolist() == [3 * 32, 3 * 64, 3 * 64]  # bins x images of the class x 32
    assert 0 <= table["class"]["nmi"] <= 1
    assert model.training, "the model's mode is restored"


def test_size_presets_give_the_dit_s_shape():
    from moezoo.tasks.dit import DiTTask, MoEDiT

    task = DiTTask(partial(MoEDiT, routing="promoe", size="S", num_experts=4), image_size=16, channels=1,
                   num_classes=10)
    task.configure_model()  # built from its own arguments: no trainer, no data module
    config = task.model.config
    assert (config.hidden_size, config.depth, config.num_heads) == (384, 12, 6)
