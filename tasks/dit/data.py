"""Images with class labels for class-conditional diffusion, scaled to [-1, 1].

- Embedded default (``root: null``): scikit-learn's bundled 1,797 real 8x8 handwritten digits (10 classes),
  upsampled bilinearly to ``image_size`` (default 16), one channel; split stratified by ``val_fraction`` /
  ``test_fraction`` with a fixed seed.
- Real format (``root: PATH``): one sub-folder per class (torchvision ``ImageFolder``), any size: resized and
  centre-cropped to ``image_size``, RGB (or ``grayscale: true``), split by the same fractions.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from moezoo.errors import MoezooError


class DiffusionImageData(L.LightningDataModule):
    """Batches of (images [B, C, S, S] in [-1, 1], labels [B]).

    Args:
        root: an image folder with one sub-folder per class; None uses the embedded digits.
        image_size: side of the square images the model sees.
        grayscale: read folder images as one channel.
        val_fraction, test_fraction, seed: the stratified split.
        batch_size, num_workers: loader settings.
    """

    has_test = True

    def __init__(self, root: str | None = None, image_size: int = 16, grayscale: bool = False,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, batch_size: int = 64,
                 num_workers: int = 0):
        super().__init__()
        self.root = None if root is None else Path(root).expanduser()
        self.image_size, self.grayscale = image_size, grayscale
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.splits = None

    @property
    def identity(self) -> str:
        """Names the data and its resolution (the FID-cls classifier is cached under it)."""
        source = "digits" if self.root is None else str(self.root.resolve())
        return f"{source}|{self.image_size}|{'gray' if self.grayscale or self.root is None else 'rgb'}"

    def _dataset(self):
        if self.root is None:
            from sklearn.datasets import load_digits

            digits = load_digits()
            images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
            return TensorDataset(images.clamp(0, 1) * 2 - 1, torch.tensor(digits.target)), digits.target, 10
        if not self.root.is_dir():
            raise MoezooError(f"data.root: no such directory: {self.root}")
        steps = [transforms.Resize(self.image_size), transforms.CenterCrop(self.image_size)]
        if self.grayscale:
            steps.append(transforms.Grayscale())
        steps += [transforms.ToTensor(), transforms.Normalize(0.5, 0.5)]
        try:
            folder = ImageFolder(str(self.root), transform=transforms.Compose(steps))
        except FileNotFoundError:
            raise MoezooError(f"data.root: {self.root} has no class sub-folders with images "
                              f"(expected {self.root}/<class>/<image>)") from None
        return folder, np.array(folder.targets), len(folder.classes)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        dataset, targets, self._num_classes = self._dataset()
        index = np.arange(len(targets))
        held = self.val_fraction + self.test_fraction
        train, rest = train_test_split(index, test_size=held, stratify=targets, random_state=self.seed)
        val, test = train_test_split(rest, test_size=self.test_fraction / held, stratify=targets[rest],
                                     random_state=self.seed)
        self.splits = {name: Subset(dataset, rows.tolist()) for name, rows in
                       (("train", train), ("val", val), ("test", test))}
        self._channels = dataset[0][0].shape[0]

    @property
    def num_classes(self) -> int:
        self.setup()
        return self._num_classes

    @property
    def channels(self) -> int:
        self.setup()
        return self._channels

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        self.setup()
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")
