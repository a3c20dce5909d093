"""MoEDiTPipeline: class-conditional sampling with classifier-free guidance, a diffusers ``DiffusionPipeline``.

    eps_or_v = uncond + guidance_scale * (cond - uncond)     (one batched pass over [cond; null-class] inputs)

Works with ``FlowMatchEulerDiscreteScheduler`` (rectified flow: velocity) and ``DDPMScheduler`` (epsilon); with
``guidance_scale`` 1 the unconditional half is not computed. With a ``vae`` (diffusers ``AutoencoderKL``) the model
runs on its latents (scaled by ``vae.config.scaling_factor``, as in diffusers' DiTPipeline) and the pipeline
decodes. Each MoE layer records both halves of a guided pass, as it records any forward.

The VAE is an optional component (``_optional_components``), as in diffusers' own pipelines: ``save_pretrained`` /
``from_pretrained`` round-trip a pipeline with or without one, and ``pipe.to(device or dtype)`` moves it too.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .model import MoEDiT

OUTPUT_TYPES = ("pt", "np", "pil")


class MoEDiTPipeline(DiffusionPipeline):
    """``pipe(class_labels=[3, 7], guidance_scale=1.5, num_inference_steps=25)`` -> images in [0, 1].

    ``output_type`` "pt" (the default: a ``[B, C, H, W]`` tensor), "np" (``[B, H, W, C]`` float32 array) or "pil"
    (a list of PIL images). ``generator`` is one ``torch.Generator`` for the batch or a list of one per sample
    (diffusers' convention): sample ``i`` then depends only on ``generator[i]``, so it is the image that a batch of
    one with that generator gives.
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]

    def __init__(self, transformer: MoEDiT, scheduler: SchedulerMixin, vae: AutoencoderKL | None = None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)

    def register_modules(self, **modules):
        super().register_modules(**modules)
        # diffusers takes a module in a folder named like one of its pipelines (".../dit/model.py") for that
        # pipeline's module; record our model by its real import path so from_pretrained finds it
        for name, module in modules.items():
            if isinstance(module, MoEDiT):
                self.register_to_config(**{name: (type(module).__module__, type(module).__name__)})

    @torch.no_grad()
    def __call__(self, class_labels, guidance_scale: float = 1.5, num_inference_steps: int = 25,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pt",
                 return_dict: bool = True):
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r}; valid: {', '.join(OUTPUT_TYPES)}")
        model = self.transformer
        config = model.config
        device = self._execution_device
        labels = torch.as_tensor(class_labels, device=device).reshape(-1)
        batch = labels.shape[0]
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"generator: a list of {len(generator)} generators for {batch} class labels; "
                             "pass one generator per sample, or a single one")
        shape = (batch, config.in_channels, config.sample_size, config.sample_size)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=model.dtype)
        latents = latents * getattr(self.scheduler, "init_noise_sigma", 1.0)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        guided = guidance_scale != 1.0
        both_labels = torch.cat([labels, torch.full_like(labels, config.num_classes)]) if guided else labels
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents, latents]) if guided else latents
            timestep = t.expand(model_input.shape[0])
            out = model(model_input, timestep, both_labels).sample
            if guided:
                cond, uncond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            # a stochastic scheduler (DDPM) draws its noise of sample i from generator[i] too
            latents = self.scheduler.step(out, t, latents, generator=generator).prev_sample
        if self.vae is not None:
            latents = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        images = (latents / 2 + 0.5).clamp(0, 1)  # the models train on images scaled to [-1, 1]
        if output_type != "pt":
            # float32 whatever the model's dtype: numpy has no bfloat16
            images = images.permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
