"""Diffusion family: MoE diffusion transformers (ProMoE, expert choice, token choice, dense) on diffusers."""

from .data import DiffusionImageData
from .model import MoEDiT
from .objectives import ddpm_loss, rectified_flow_loss
from .pipeline import MoEDiTPipeline
from .task import DiTTask

__all__ = ["DiTTask", "DiffusionImageData", "MoEDiT", "MoEDiTPipeline", "ddpm_loss", "rectified_flow_loss"]
