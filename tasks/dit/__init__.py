"""Diffusion family: MoE diffusion transformers (ProMoE, expert choice, token choice, dense) on diffusers."""

from .model import MoEDiT
from .objectives import ddpm_loss, rectified_flow_loss
from .pipeline import MoEDiTPipeline

__all__ = ["MoEDiT", "MoEDiTPipeline", "ddpm_loss", "rectified_flow_loss"]
