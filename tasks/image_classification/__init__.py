"""Image classification with an MoE ViT (timm VisionTransformer + moezoo MoE MLPs)."""

from .data import ImageClassificationData
from .model import ImageClassifier

__all__ = ["ImageClassificationData", "ImageClassifier"]
