"""FID-cls: the Frechet distance between generated and held-out real images in the feature space of a classifier
moezoo trains on the same data (Inception weights cannot be downloaded here), and that classifier's accuracy on the
generated images of each class (conditional fidelity).

    FID = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2)),   tr((S_r S_g)^(1/2)) = sum_i sqrt(lambda_i(S_r S_g))

Both FIDs here are torchmetrics' ``FrechetInceptionDistance``: FID-cls with the classifier's feature layer as its
feature extractor (``feature=``), the standard FID with torch-fidelity's InceptionV3.

The classifier (a small CNN; features = its 128-d pooled layer) is trained once per data source and resolution and
cached under ``$MOEZOO_CACHE`` (default ``~/.cache/moezoo``), so every variant is scored by the same one. Numbers are
comparable only between runs that use the same classifier; they are not Inception FIDs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from moezoo.cache import cache_dir


class FeatureClassifier(nn.Module):
    """conv 32 -> conv 64 (stride 2) -> conv 128 (stride 2) -> mean pool = features [B, 128] -> class logits."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FeatureMap(nn.Module):
    """A feature extractor as torchmetrics' FID takes it: ``module(x) -> [B, num_features]``."""

    def __init__(self, module: nn.Module, num_features: int):
        super().__init__()
        self.module, self.num_features = module, num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def fid(feature: nn.Module | int, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 256,
        **options) -> torch.Tensor:
    """torchmetrics' ``FrechetInceptionDistance`` with extractor ``feature`` between the sets ``real`` and ``fake``.

    Fed ``batch_size`` samples at a time; float64 statistics; computed on this process's samples alone (no sync
    across ranks). ``options`` go to the metric (``normalize``, ``feature_extractor_weights_path``).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=feature, sync_on_compute=False, **options).to(real.device)
    with torch.no_grad():
        for samples, is_real in ((real, True), (fake, False)):
            for chunk in samples.split(batch_size):
                metric.update(chunk, real=is_real)
    return metric.compute()


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """FID between feature sets real [N, d] and fake [M, d] (the identity as the feature extractor)."""
    return fid(FeatureMap(nn.Identity(), real.shape[-1]), real, fake)


def fid_cls(classifier: FeatureClassifier, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """FID-cls between images real [N, C, H, W] and fake [M, C, H, W] in [-1, 1] (as the classifier reads them)."""
    return fid(FeatureMap(classifier.body, classifier.head.in_features), real, fake)


def train_classifier(datamodule, epochs: int = 10, seed: int = 0) -> tuple[FeatureClassifier, float]:
    """Train the feature classifier on the data's train split; returns it (eval mode) and its val accuracy.

    Runs with gradients on even when called from a test loop (Lightning tests under inference mode).
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _train_classifier(datamodule, epochs, seed)


def _train_classifier(datamodule, epochs: int, seed: int) -> tuple[FeatureClassifier, float]:
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = FeatureClassifier(datamodule.channels, datamodule.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    train = datamodule.splits["train"]
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, generator=generator)
    for _ in range(epochs):
        model.train()
        for images, labels in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in torch.utils.data.DataLoader(datamodule.splits["val"], batch_size=256):
            correct += int((model(images).argmax(-1) == labels).sum())
            total += len(labels)
    return model, correct / max(1, total)


def load_or_train_classifier(datamodule) -> tuple[FeatureClassifier, float]:
    """The cached classifier for this data (trained and saved on first use)."""
    key = hashlib.sha1(datamodule.identity.encode()).hexdigest()[:16]
    path = cache_dir() / f"fid_cls_{key}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        model = FeatureClassifier(datamodule.channels, datamodule.num_classes)
        model.load_state_dict(saved["state_dict"])
        return model.eval(), float(saved["val_acc"])
    model, val_acc = train_classifier(datamodule)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "val_acc": val_acc, "identity": datamodule.identity}, path)
    return model, val_acc


def inception_fid(real: torch.Tensor, fake: torch.Tensor, weights_path: str | Path, batch_size: int = 64) -> float:
    """The standard FID (torchmetrics' ``FrechetInceptionDistance``, torch-fidelity's InceptionV3, 2048-d pool
    features) between images ``real`` and ``fake`` [N, C, H, W] in [0, 1] (grayscale repeated to RGB, resized to 299
    by the extractor), with the Inception weights at ``weights_path`` (torch-fidelity's
    ``weights-inception-2015-12-05-6726825d.pth``; nothing is downloaded)."""
    rgb = [images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images for images in (real, fake)]
    return float(fid(2048, *rgb, batch_size=batch_size, normalize=True,
                     feature_extractor_weights_path=str(weights_path)))
