"""Diffusion family: MoE diffusion transformers (ProMoE, expert choice, token choice, dense) on diffusers."""

from .model import MoEDiT

__all__ = ["MoEDiT"]
