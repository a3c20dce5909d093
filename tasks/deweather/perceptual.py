"""The perceptual loss of MoFME's training (weight 0.04 there): MSE between VGG-16 features, from weights the user
gives (a torchvision ``vgg16`` state dict, whole or its ``features`` only); none can be downloaded here."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import vgg16

from moezoo.errors import MoezooError

LAYERS = (3, 8, 15)  # relu1_2, relu2_2, relu3_3 of vgg16.features (the official LossNetwork's layers)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """mean over relu1_2, relu2_2, relu3_3 of MSE(phi(pred), phi(target)), phi = frozen VGG-16 features of images in
    [0, 1] normalised as the ImageNet weights expect (the official code feeds them unnormalised)."""

    def __init__(self, weights: str | Path):
        super().__init__()
        path = Path(weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise MoezooError(f"model.perceptual_weights: cannot read {path}: {' '.join(str(err).split())[:160]}") \
                from None
        if any(key.startswith("features.") for key in state):
            state = {key[len("features."):]: value for key, value in state.items() if key.startswith("features.")}
        features = vgg16().features[: LAYERS[-1] + 1]
        wanted = set(features.state_dict())
        missing = sorted(wanted - set(state))
        if missing:
            raise MoezooError(f"model.perceptual_weights: {path} is not a torchvision vgg16 state dict (no "
                              f"{', '.join(missing[:3])})")
        features.load_state_dict({key: state[key] for key in wanted})
        self.features = features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.features.eval()  # frozen: never in training mode
        return self

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, h = [], (x - self.mean) / self.std
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in LAYERS:
                taps.append(h)
        return taps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pairs = zip(self._taps(pred.float()), self._taps(target.float()))
        return sum(F.mse_loss(p, t) for p, t in pairs) / len(LAYERS)
