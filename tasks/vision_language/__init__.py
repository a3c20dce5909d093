"""Vision-language: early-fusion image-text transformers with modality-aware experts (MoMa) and upcycled sparse
layers (MoE-LLaVA), on VQA and image-text retrieval."""

from .data import CaptionData, VQAData
from .model import VisionLanguageModel

__all__ = ["CaptionData", "VQAData", "VisionLanguageModel"]
