"""Backbones with MoE feed-forward layers."""

from .transformer import MoETransformer, SelfAttention, TransformerBlock
from .vit import MoEMlp, moe_vit

__all__ = ["MoEMlp", "MoETransformer", "SelfAttention", "TransformerBlock", "moe_vit"]
