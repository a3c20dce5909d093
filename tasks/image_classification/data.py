"""Image classification data: scikit-learn's bundled handwritten digits by default, or an image-folder tree.

Embedded default (``root: null``): the 1,797 real 8x8 grey-scale digits that ship inside scikit-learn
(UCI optdigits test set), pixel values 0..16, 10 classes, split stratified 70/15/15 with a fixed seed.

Real format (``root: PATH``): torchvision's ImageFolder layout, one sub-folder per class::

    PATH/<class>/<image>.png|jpg|...                       -> split into train/val/test by the fractions, or
    PATH/train/<class>/..., PATH/val/<class>/..., [PATH/test/<class>/...]   -> the given splits.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from moezoo.errors import MoezooError


class _Augmented(Dataset):
    """Applies a tensor transform to the images of an (image, label) dataset."""

    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return self.transform(image), label


class _CheckedImageFolder(ImageFolder):
    """ImageFolder whose unreadable files fail with the file's path."""

    def __getitem__(self, i):
        try:
            return super().__getitem__(i)
        except (OSError, UnidentifiedImageError) as err:
            raise MoezooError(f"cannot read image {self.samples[i][0]}: {err}") from None


def _image_folder(root: Path, transform, check: bool) -> ImageFolder:
    try:
        folder = _CheckedImageFolder(str(root), transform=transform, allow_empty=True)
    except FileNotFoundError:
        raise MoezooError(f"data.root: {root} has no class sub-folders (expected {root}/<class>/<image>)") from None
    if not folder.samples:
        raise MoezooError(f"data.root: no images in {root} (looked for {', '.join(IMG_EXTENSIONS)} files "
                          f"in {root}/<class>/)")
    if check:
        for path, _ in folder.samples:
            try:
                with Image.open(path) as image:
                    image.verify()
            except Exception as err:  # PIL raises many types for a damaged file
                raise MoezooError(f"cannot read image {path}: {err}") from None
    return folder


class ImageClassificationData(L.LightningDataModule):
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

    def __init__(self, root: str | None = None, image_size: int = 8, in_chans: int = 1, batch_size: int = 64,
                 num_workers: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15, split_seed: int = 0,
                 augment: bool = True, check_images: bool = True):
        super().__init__()
        self.root = None if root is None else Path(root).expanduser()
        self.img_size, self.in_chans = image_size, in_chans
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.augment, self.check_images = augment, check_images
        self.num_classes: int | None = None
        self.classes: list[str] = []
        self.splits: dict[str, Dataset] = {}
        if self.root is None:
            self.num_classes, self.classes = 10, [str(d) for d in range(10)]

    # -- splits ---------------------------------------------------------------------------------------------------
    def _split_indices(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        index = np.arange(len(labels))
        held_out = self.val_fraction + self.test_fraction
        train, rest = train_test_split(index, test_size=held_out, stratify=labels, random_state=self.split_seed)
        val, test = train_test_split(rest, test_size=self.test_fraction / held_out, stratify=labels[rest],
                                     random_state=self.split_seed)
        return {"train": train, "val": val, "test": test}

    def _digits(self) -> dict[str, Dataset]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        images = (images - 0.5) / 0.5
        if self.img_size != 8:
            images = torch.nn.functional.interpolate(images, size=self.img_size, mode="bilinear", align_corners=False)
        if self.in_chans == 3:
            images = images.expand(-1, 3, -1, -1).contiguous()
        labels = torch.tensor(digits.target, dtype=torch.long)
        full = TensorDataset(images, labels)
        return {name: Subset(full, idx.tolist()) for name, idx in self._split_indices(digits.target).items()}

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
            splits = {name: _image_folder(path, to_tensor, self.check_images) for name, path in given.items()}
            classes = splits["train"].classes
            for name, folder in splits.items():
                if folder.classes != classes:
                    raise MoezooError(f"data.root: classes of {given[name]} ({folder.classes}) differ from those "
                                      f"of {given['train']} ({classes})")
        else:
            full = _image_folder(self.root, to_tensor, self.check_images)
            classes = full.classes
            indices = self._split_indices(np.asarray(full.targets))
            splits = {name: Subset(full, idx.tolist()) for name, idx in indices.items()}
        self.classes, self.num_classes = list(classes), len(classes)
        return splits

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
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

    # -- loaders --------------------------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        if "test" not in self._splits_or_setup():
            raise MoezooError(f"data.root: {self.root} has no test/ folder; run `moezoo test` with a test split")
        return self._loader("test", shuffle=False)

    def predict_dataloader(self):
        return self._loader("test" if "test" in self._splits_or_setup() else "val", shuffle=False)

    @property
    def has_test(self) -> bool:
        """Whether there is a test split (``moezoo fit`` tests the best checkpoint on it at the end)."""
        return "test" in self._splits_or_setup()

    def _splits_or_setup(self) -> dict[str, Dataset]:
        self.setup()
        return self.splits
