"""Training objectives of the diffusion family, in diffusers' conventions (so diffusers' schedulers sample them).

- Rectified flow (``FlowMatchEulerDiscreteScheduler``): sigma ~ sigmoid(N(m, s)) (logit-normal, m = 0, s = 1 as in
  SD3 / ProMoE), x_sigma = (1 - sigma) x_0 + sigma eps, the model sees timestep 1000 * sigma and predicts the velocity
  v = eps - x_0; loss ||v_hat - v||^2.
- DDPM (``DDPMScheduler``, epsilon prediction): t ~ U{0..T-1}, x_t = scheduler.add_noise(x_0, eps, t); loss
  ||eps_hat - eps||^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rectified_flow_loss(model, x0: torch.Tensor, class_labels: torch.Tensor, *, logit_mean: float = 0.0,
                        logit_std: float = 1.0, num_train_timesteps: int = 1000,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    normal = torch.randn(x0.shape[0], generator=generator, device=x0.device) * logit_std + logit_mean
    sigma = torch.sigmoid(normal).to(x0.dtype).view(-1, 1, 1, 1)
    noisy = (1 - sigma) * x0 + sigma * noise
    velocity = model(noisy, sigma.flatten() * num_train_timesteps, class_labels).sample
    return F.mse_loss(velocity.float(), (noise - x0).float())


def ddpm_loss(model, scheduler, x0: torch.Tensor, class_labels: torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor:
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    steps = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                          device=x0.device)
    noisy = scheduler.add_noise(x0, noise, steps)
    return F.mse_loss(model(noisy, steps, class_labels).sample.float(), noise.float())
