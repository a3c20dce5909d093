"""MoEDiTPipeline: class-conditional sampling with classifier-free guidance, a diffusers ``DiffusionPipeline``.

    eps_or_v = uncond + guidance_scale * (cond - uncond)     (one batched pass over [cond; null-class] inputs)

Works with ``FlowMatchEulerDiscreteScheduler`` (rectified flow: velocity) and ``DDPMScheduler`` (epsilon); with
``guidance_scale`` 1 the unconditional half is not computed. With a ``vae`` (diffusers ``AutoencoderKL``) the model
runs on its latents (scaled by ``vae.config.scaling_factor``, as in diffusers' DiTPipeline) and the pipeline
decodes. Each MoE layer records both halves of a guided pass, as it records any forward.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from .model import MoEDiT


class MoEDiTPipeline(DiffusionPipeline):
    """``pipe(class_labels=[3, 7], guidance_scale=1.5, num_inference_steps=25)`` -> images in [0, 1], [B, C, H, W]."""

    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer, scheduler, vae=None):
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
                 generator: torch.Generator | None = None, output_type: str = "pt", return_dict: bool = True):
        model = self.transformer
        config = model.config
        device = self._execution_device
        labels = torch.as_tensor(class_labels, device=device).reshape(-1)
        shape = (labels.shape[0], config.in_channels, config.sample_size, config.sample_size)
        latents = torch.randn(shape, generator=generator, device=device, dtype=model.dtype)
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
            latents = self.scheduler.step(out, t, latents, generator=generator).prev_sample
        if self.vae is not None:
            latents = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        images = (latents / 2 + 0.5).clamp(0, 1)  # the models train on images scaled to [-1, 1]
        if output_type == "np":
            images = images.permute(0, 2, 3, 1).float().cpu().numpy()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
