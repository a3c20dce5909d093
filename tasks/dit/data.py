"""Images with class labels for class-conditional diffusion, scaled to [-1, 1].

- Embedded default (``root: null``): scikit-learn's bundled 1,797 real 8x8 handwritten digits (10 classes),
  upsampled bilinearly to ``image_size`` (default 16), one channel; split stratified by ``val_fraction`` /
  ``test_fraction`` with a fixed seed.
- Real format (``root: PATH``): one sub-folder per class (torchvision ``ImageFolder``), any size: resized and
  centre-cropped to ``image_size``, RGB (or ``grayscale: true``), split by the same fractions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Subset, TensorDataset
from torchvision import transforms

from moezoo.training.data import SplitDataModule, check_image_size, image_folder, load_digits_images, stratified_split


class DiffusionImageData(SplitDataModule):
    """Batches of (images [B, C, S, S] in [-1, 1], labels [B]).

    Args:
        root: an image folder with one sub-folder per class; None uses the embedded digits.
        image_size: side of the square images the model sees.
        grayscale: read folder images as one channel.
        val_fraction, test_fraction, seed: the stratified split.
        batch_size, num_workers: loader settings.
    """

    model_links = {"num_classes": "num_classes", "image_size": "image_size", "channels": "channels",
                   "fid_classifier": "fid_classifier"}

    def __init__(self, root: str | None = None, image_size: int = 16, grayscale: bool = False,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, batch_size: int = 64,
                 num_workers: int = 0):
        super().__init__()
        check_image_size(image_size)
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
            images, labels = load_digits_images(self.image_size)
            return TensorDataset(images, labels), labels.numpy(), [str(d) for d in range(10)]
        steps = [transforms.Resize(self.image_size), transforms.CenterCrop(self.image_size)]
        if self.grayscale:
            steps.append(transforms.Grayscale())
        steps += [transforms.ToTensor(), transforms.Normalize(0.5, 0.5)]
        folder = image_folder(self.root, transforms.Compose(steps), min_per_class=3)  # split stratified below
        return folder, np.array(folder.targets), folder.classes

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        dataset, targets, classes = self._dataset()
        self._num_classes = len(classes)
        source = "data" if self.root is None else f"data.root={self.root}"
        indices = stratified_split(targets, self.val_fraction, self.test_fraction, self.seed, classes, source)
        self.splits = {name: Subset(dataset, rows.tolist()) for name, rows in indices.items()}
        self._channels = dataset[0][0].shape[0]

    @property
    def num_classes(self) -> int:
        self.setup()
        return self._num_classes

    @property
    def channels(self) -> int:
        self.setup()
        return self._channels

    def fid_classifier(self):
        """The FID-cls feature classifier trained on this data's training split (cached), and its accuracy; linked
        to the model's ``fid_classifier`` so the task reads no data module itself."""
        from .fid import load_or_train_classifier

        return load_or_train_classifier(self)
