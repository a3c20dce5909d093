"""Image classification data: scikit-learn's bundled handwritten digits by default, or an image-folder tree.

Embedded default (``root: null``): the 1,797 real 8x8 grey-scale digits that ship inside scikit-learn
(UCI optdigits test set), pixel values 0..16, 10 classes, split stratified 70/15/15 with a fixed seed.

Real format (``root: PATH``): torchvision's ImageFolder layout, one sub-folder per class::

    PATH/<class>/<image>.png|jpg|...                       -> split into train/val/test by the fractions, or
    PATH/train/<class>/..., PATH/val/<class>/..., [PATH/test/<class>/...]   -> the given splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision import transforms

from moezoo.errors import MoezooError
from moezoo.training.data import SplitDataModule, check_image_size, image_folder, load_digits_images, stratified_split


class _Augmented(Dataset):
    """Applies a tensor transform to the images of an (image, label) dataset."""

    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return self.transform(image), label


class ImageClassificationData(SplitDataModule):
    """Digits (default) or an ImageFolder tree, as (image [C, H, W], label) batches.

    Args:
        root: an ImageFolder tree; None uses the bundled digits.
        image_size: images are resized to image_size x image_size (digits are 8x8).
        in_chans: 1 (grey) or 3 (RGB).
        val_fraction, test_fraction: split of a tree without train/val/test folders (and of digits).
        split_seed: seed of that split (fixed, so every run sees the same test set).
        augment: random affine jitter (rotation, shift, scale) of training images.
        check_images: open every image once at setup so that a damaged file fails early, with its path.
    """

    model_links = {"num_classes": "num_classes", "in_chans": "in_chans", "img_size": "img_size"}

    def __init__(self, root: str | None = None, image_size: int = 8, in_chans: int = 1, batch_size: int = 64,
                 num_workers: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15, split_seed: int = 0,
                 augment: bool = True, check_images: bool = True):
        super().__init__()
        check_image_size(image_size)
        self.root = None if root is None else Path(root).expanduser()
        self.img_size, self.in_chans = image_size, in_chans
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.augment, self.check_images = augment, check_images
        self._num_classes: int | None = None
        self.classes: list[str] = []
        self.splits: dict[str, Dataset] | None = None
        if self.root is None:
            self._num_classes, self.classes = 10, [str(d) for d in range(10)]

    # -- splits ---------------------------------------------------------------------------------------------------
    def _subsets(self, dataset: Dataset, labels, class_names=None) -> dict[str, Dataset]:
        source = "data" if self.root is None else f"data.root={self.root}"
        indices = stratified_split(labels, self.val_fraction, self.test_fraction, self.split_seed, class_names, source)
        return {name: Subset(dataset, idx.tolist()) for name, idx in indices.items()}

    def _digits(self) -> dict[str, Dataset]:
        images, labels = load_digits_images(self.img_size, self.in_chans)
        return self._subsets(TensorDataset(images, labels), labels.numpy())

    def _folders(self) -> dict[str, Dataset]:
        to_tensor = transforms.Compose([
            transforms.Grayscale(1) if self.in_chans == 1 else transforms.Lambda(lambda im: im.convert("RGB")),
            transforms.Resize((self.img_size, self.img_size)),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * self.in_chans, [0.5] * self.in_chans),
        ])
        given = {name: self.root / name for name in ("train", "val", "test") if (self.root / name).is_dir()}
        if "train" in given:
            if "val" not in given:
                raise MoezooError(f"data.root: {self.root} has train/ but no val/ folder")
            # a class folder of val/ or test/ may be empty (no image of it there); one of train/ may not
            splits = {name: image_folder(path, to_tensor, self.check_images, min_per_class=int(name == "train"))
                      for name, path in given.items()}
            classes = splits["train"].classes
            for name, folder in splits.items():
                if folder.classes != classes:
                    raise MoezooError(f"data.root: classes of {given[name]} ({folder.classes}) differ from those "
                                      f"of {given['train']} ({classes})")
        else:
            full = image_folder(self.root, to_tensor, self.check_images, min_per_class=3)
            classes = full.classes
            splits = self._subsets(full, np.asarray(full.targets), classes)
        self.classes, self._num_classes = list(classes), len(classes)
        return splits

    @property
    def num_classes(self) -> int:
        """The number of classes (of the folder tree: read on first use); linked to the model's ``num_classes``."""
        if self._num_classes is None:
            self.setup()
        return self._num_classes

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        # checked here, not in __init__: LightningCLI would wrap an error raised while instantiating
        if self.in_chans not in (1, 3):
            raise MoezooError(f"data.in_chans must be 1 or 3, got {self.in_chans}")
        if self.root is not None and not self.root.is_dir():
            raise MoezooError(f"data.root: no such directory: {self.root}")
        splits = self._digits() if self.root is None else self._folders()
        if self.augment:
            jitter = transforms.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))
            splits["train"] = _Augmented(splits["train"], jitter)
        self.splits = splits

    # -- loaders (SplitDataModule's, with the folder-specific error of a tree without test/) ----------------------
    def test_dataloader(self):
        if not self.has_test:
            raise MoezooError(f"data.root: {self.root} has no test/ folder; run `moezoo test` with a test split")
        return super().test_dataloader()
