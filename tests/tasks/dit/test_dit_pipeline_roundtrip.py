"""MoEDiTPipeline follows diffusers' pipeline conventions: an optional VAE that saves, loads and moves with the
pipeline, per-sample generators, and the "pt" / "np" / "pil" output types."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image

from moezoo.tasks.dit import MoEDiT, MoEDiTPipeline

LATENT = dict(sample_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10,
              num_experts=4, moe_every=2, class_dropout_prob=0.0)
PIXEL = {**LATENT, "sample_size": 8, "in_channels": 1}


def _tiny_vae() -> AutoencoderKL:
    """A random one-channel AutoencoderKL: 8x8 images <-> 4 x 4x4 latents."""
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=8, sample_size=8, scaling_factor=0.5).eval()


def _model(config: dict, routing: str = "token_choice") -> MoEDiT:
    """A tiny MoEDiT with weights moved off their zero init, so its samples depend on the labels and the noise."""
    torch.manual_seed(1)
    model = MoEDiT(routing=routing, **config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _pipeline(with_vae: bool, scheduler=None) -> MoEDiTPipeline:
    pipe = MoEDiTPipeline(transformer=_model(LATENT if with_vae else PIXEL),
                          scheduler=scheduler or FlowMatchEulerDiscreteScheduler(),
                          vae=_tiny_vae() if with_vae else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(pipe, labels, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed) if isinstance(seed, int) else seed
    return pipe(labels, guidance_scale=1.5, num_inference_steps=3, generator=generator, **kwargs).images


@pytest.mark.parametrize("with_vae", [True, False], ids=["with-vae", "without-vae"])
def test_a_saved_pipeline_loads_back_and_samples_the_same_images(with_vae, tmp_path):
    pipe = _pipeline(with_vae)
    before = _sample(pipe, [1, 2])
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["vae"] == (["diffusers", "AutoencoderKL"] if with_vae else [None, None])
    assert (tmp_path / "vae").is_dir() == with_vae

    loaded = MoEDiTPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.transformer, MoEDiT)
    if with_vae:
        assert isinstance(loaded.vae, AutoencoderKL) and loaded.vae.config.scaling_factor == 0.5
    else:
        assert loaded.vae is None, "an absent VAE loads as None, not as its [None, None] config entry"
    assert set(loaded.components) == {"transformer", "scheduler", "vae"}
    after = _sample(loaded, [1, 2])
    assert after.shape == (2, 1, 8, 8)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert not torch.equal(after[0], after[1]), "two labels, two images"


def test_moving_the_pipeline_to_a_dtype_moves_its_vae_too():
    pipe = _pipeline(with_vae=True)
    pipe.to(torch.float64)
    assert pipe.transformer.dtype == torch.float64 and pipe.vae.dtype == torch.float64
    images = _sample(pipe, [3])
    assert images.dtype == torch.float64 and images.shape == (1, 1, 8, 8)
    pipe.to(dtype=torch.bfloat16)
    assert pipe.vae.dtype == torch.bfloat16 and pipe.transformer.dtype == torch.bfloat16
    pipe.to("cpu")
    assert pipe.vae.device.type == "cpu"


@pytest.mark.parametrize("scheduler", [FlowMatchEulerDiscreteScheduler, DDPMScheduler], ids=["flow", "ddpm"])
@pytest.mark.parametrize("with_vae", [True, False], ids=["with-vae", "without-vae"])
def test_one_generator_per_sample_gives_each_sample_its_single_sample_image(scheduler, with_vae):
    pipe = _pipeline(with_vae, scheduler())
    labels, seeds = [4, 4, 7], [10, 11, 12]
    batch = _sample(pipe, labels, [torch.Generator().manual_seed(s) for s in seeds])
    for i, (label, seed) in enumerate(zip(labels, seeds)):
        alone = _sample(pipe, [label], seed)  # DDPM also draws its per-step noise from the generator
        torch.testing.assert_close(batch[i:i + 1], alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1]), "the same label with another generator is another image"


def test_a_generator_list_of_the_wrong_length_is_a_clear_error():
    pipe = _pipeline(with_vae=False)
    with pytest.raises(ValueError, match="a list of 2 generators for 3 class labels"):
        _sample(pipe, [1, 2, 3], [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])


def test_output_types_are_the_same_images_as_tensor_array_and_pil():
    pipe = _pipeline(with_vae=False)
    tensor = _sample(pipe, [1, 2])
    array = _sample(pipe, [1, 2], output_type="np")
    assert isinstance(array, np.ndarray) and array.shape == (2, 8, 8, 1) and array.dtype == np.float32
    np.testing.assert_array_equal(array, tensor.permute(0, 2, 3, 1).numpy())
    pils = _sample(pipe, [1, 2], output_type="pil")
    assert len(pils) == 2 and all(isinstance(p, Image.Image) and p.size == (8, 8) and p.mode == "L" for p in pils)
    np.testing.assert_array_equal(np.asarray(pils[0]), (array[0, ..., 0] * 255).round().astype(np.uint8))
    images, = pipe([1], num_inference_steps=1, return_dict=False)
    assert images.shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="output_type 'latent'; valid: pt, np, pil"):
        _sample(pipe, [1], output_type="latent")
