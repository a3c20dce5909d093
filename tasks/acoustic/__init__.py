"""Underwater acoustic target recognition: CMoE / RCMoE (hard top-1 mixtures of heads on a ResNet-18) and the
single-head ResNet baseline, on windows of hydrophone recordings with torchaudio's spectral features."""

from .data import AcousticData
from .model import AcousticClassifier, cmoe_head, resnet18_1ch

__all__ = ["AcousticClassifier", "AcousticData", "cmoe_head", "resnet18_1ch"]
