"""Expert specialisation of a MoE DiT: route the held-out images at fixed timesteps, labelled by class and timestep.

For each of ``bins`` timesteps (the centres of equal slices of the noise scale) the held-out images are noised as in
training (rectified flow: x = (1 - sigma) x0 + sigma eps at timestep 1000 sigma; DDPM: ``scheduler.add_noise``) and
passed once through the model with their labels (no label dropout), inside ``moezoo.moe.routing_labels`` with the
labels ``class`` (the image's class) and ``timestep`` (the bin). The core then holds, per MoE layer, the load per
(class, expert) and per (timestep bin, expert) and their normalised mutual information (``load_by_label``), which
``TaskModule`` logs (``test/routing/class_nmi``, ``test/routing/timestep_nmi``) and plots: 0 when routing ignores the
class, 1 when the class decides the expert (ProMoE's claim: its prototypes route by semantics, so its NMI should
exceed the linear routers'). The unconditional expert of ProMoE gets no tokens here (no label is dropped).
"""

from __future__ import annotations

import torch

from moezoo.moe import routing_labels


def timestep_bin_names(bins: int) -> list[str]:
    """The timestep (0-1000 scale) at the centre of each bin, as a label value name."""
    return [f"{int(1000 * (b + 0.5) / bins)}" for b in range(bins)]


@torch.no_grad()
def route_over_timesteps(model, images: torch.Tensor, labels: torch.Tensor, *, objective: str, scheduler=None,
                         bins: int = 10, batch_size: int = 256, seed: int = 0) -> None:
    """Pass ``images`` [N, C, H, W] (model space: latents when the model runs on latents) with ``labels`` [N] through
    ``model`` (a MoEDiT) at the centre of each of ``bins`` timestep bins, counting its routing by class and bin."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    try:
        for b in range(bins):
            fraction = (b + 0.5) / bins  # the bin's centre on the noise scale
            for x0, y in zip(images.split(batch_size), labels.split(batch_size)):
                noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                if objective == "rectified_flow":
                    noisy, t = (1 - fraction) * x0 + fraction * noise, torch.full((len(y),), 1000.0 * fraction)
                else:
                    steps = scheduler.config.num_train_timesteps
                    t = torch.full((len(y),), int(fraction * steps), dtype=torch.long)
                    noisy = scheduler.add_noise(x0, noise, t)
                with routing_labels(model, {"class": y, "timestep": torch.full_like(y, b)}):
                    model(noisy, t.to(x0.device), y)
    finally:
        model.train(was_training)
