"""Data plumbing shared by the task families: the bundled digits, a seeded stratified split, checked image folders,
and ``SplitDataModule``, a data module base that builds the train/val/test/predict loaders from its splits."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from moezoo.errors import MoezooError

# torchvision's list, and GIF: PIL reads its first frame, and a tree of GIFs must not be skipped file by file in
# silence (found by the slow fuzz run: 4 of a class's 7 images dropped)
IMAGE_EXTENSIONS = (*IMG_EXTENSIONS, ".gif")


def check_image_size(image_size, key: str = "data.init_args.image_size") -> None:
    """A MoezooError naming ``key`` unless ``image_size`` is a positive integer (the side of square images)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise MoezooError(f"{key}: must be a positive integer, got {image_size!r}")


def load_digits_images(image_size: int = 8, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits: images [1797, channels, image_size, image_size] in [-1, 1], labels [1797].

    The 1,797 real 8x8 grey-scale digits of the UCI optdigits test set (pixel values 0..16, 10 classes), resized
    bilinearly when ``image_size`` is not 8 and repeated to three channels when ``channels`` is 3.
    """
    from sklearn.datasets import load_digits

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        images = F.interpolate(images, size=image_size, mode="bilinear", align_corners=False).clamp(0, 1)
    images = images * 2 - 1
    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    return images, torch.tensor(digits.target, dtype=torch.long)


def stratified_split(labels, val_fraction: float, test_fraction: float, seed: int,
                     class_names: list[str] | None = None, source: str = "data") -> dict[str, np.ndarray]:
    """Indices {train, val, test} of a seeded stratified split of ``labels`` [N].

    Two steps of scikit-learn's ``train_test_split`` with ``random_state=seed``: train against the held-out
    ``val_fraction + test_fraction``, then the held-out part into val and test, each step stratified by label, so
    every split keeps the class proportions and the same seed always gives the same split. ``class_names``
    (label -> name) name the smallest class, and ``source`` the data, in the error when a class is too small.
    """
    labels = np.asarray(labels)
    held_out = val_fraction + test_fraction
    if not (val_fraction > 0 and test_fraction > 0 and held_out < 1):
        raise MoezooError(f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must each be "
                          "above 0 and sum to less than 1")
    index = np.arange(len(labels))
    try:
        train, rest = train_test_split(index, test_size=held_out, stratify=labels, random_state=seed)
        val, test = train_test_split(rest, test_size=test_fraction / held_out, stratify=labels[rest],
                                     random_state=seed)
    except ValueError as err:  # too few samples of a class for the stratified fractions
        message = " ".join(str(err).split())
        values, counts = np.unique(labels, return_counts=True)
        smallest = "" if not len(labels) else values[counts.argmin()]
        name = repr(class_names[smallest]) if class_names is not None and len(labels) else repr(smallest)
        raise MoezooError(f"{source}: cannot split {len(labels)} samples stratified into val_fraction={val_fraction}, "
                          f"test_fraction={test_fraction}: {message} (these fractions need about "
                          f"{samples_per_class(val_fraction, test_fraction)} samples per class; the smallest class, "
                          f"{name}, has {counts.min() if len(labels) else 0})") from None
    return {"train": train, "val": val, "test": test}


def samples_per_class(val_fraction: float, test_fraction: float) -> int:
    """About how many samples each class needs for ``stratified_split`` at these fractions.

    The held-out part must keep two of a class (it is split stratified again), and val, test and train one each;
    measured against scikit-learn it suffices except at fractions of a few percent, where rounding needs more.
    """
    held_out = val_fraction + test_fraction
    return max(3, int(np.ceil(max(2 / held_out, 1 / val_fraction, 1 / test_fraction, 1 / (1 - held_out)) - 1e-9)))


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


class CheckedImageFolder(ImageFolder):
    """torchvision's ImageFolder whose unreadable files fail with the file's path (a MoezooError)."""

    def __getitem__(self, i):
        try:
            return super().__getitem__(i)
        except MoezooError:
            raise
        except Exception as err:  # PIL raises many types for a damaged file (OSError, SyntaxError, ValueError, ...)
            raise MoezooError(f"cannot read image {self.samples[i][0]}: {_reason(err)}") from None


def image_folder(root: Path, transform=None, check: bool = False, key: str = "data.root",
                 min_per_class: int = 1) -> CheckedImageFolder:
    """The ImageFolder tree ``root/<class>/<image>``, or a one-line MoezooError naming ``key`` and the folder.

    Every class folder must hold at least ``min_per_class`` images (0 allows an empty one, e.g. in a given val/
    split; 3 is the least a stratified train/val/test split needs). With ``check`` every image is opened once now,
    so that a damaged file fails early, with its path.
    """
    root = Path(root)
    if not root.is_dir():
        raise MoezooError(f"{key}: no such directory: {root}")
    try:
        folder = CheckedImageFolder(str(root), transform=transform, allow_empty=True,
                                    is_valid_file=lambda path: path.lower().endswith(IMAGE_EXTENSIONS))
    except FileNotFoundError:
        raise MoezooError(f"{key}: {root} has no class sub-folders (expected {root}/<class>/<image>)") from None
    if not folder.samples:
        raise MoezooError(f"{key}: no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} files "
                          f"in {root}/<class>/)")
    counts = np.bincount(folder.targets, minlength=len(folder.classes))
    for name, count in zip(folder.classes, counts.tolist()):
        if count < min_per_class:
            need = "every class needs at least one" if min_per_class == 1 else \
                f"a stratified train/val/test split needs at least {min_per_class} per class"
            raise MoezooError(f"{key}: class folder {root / name} has {count} image{'s' * (count != 1)}; {need}")
    if check:
        for path, _ in folder.samples:
            try:
                with Image.open(path) as image:
                    image.verify()
            except Exception as err:  # PIL raises many types for a damaged file
                raise MoezooError(f"cannot read image {path}: {_reason(err)}") from None
    return folder


class SplitDataModule(L.LightningDataModule):
    """A data module whose ``setup`` fills ``self.splits`` ({"train", "val"[, "test"]} -> Dataset).

    This base builds the loaders from them: train shuffled, val, test and predict in order, predict on the test
    split (on val when there is none). A subclass sets ``batch_size`` and ``num_workers`` or overrides
    ``make_loader`` (whole-graph batches, batch samplers).
    """

    # What this data decides and the model is built with: {data attribute: model argument}. The CLI links each pair
    # at instantiation (LightningCLI's ``link_arguments``) when the chosen model takes the argument, so the model is
    # built from its own arguments (kept in its checkpoint and config), never by reading the trainer's datamodule.
    # Any LightningDataModule may declare it; a family declares its own, the core names none.
    model_links: ClassVar[dict[str, str]] = {}

    splits: dict[str, Dataset] | None = None
    batch_size: int = 64
    num_workers: int = 0

    def split_dataset(self, name: str) -> Dataset:
        """The dataset of one split (after ``setup``)."""
        self.setup()
        if name not in self.splits:
            raise MoezooError(f"data: there is no {name} split (the data has {', '.join(self.splits)})")
        return self.splits[name]

    def make_loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        """The DataLoader of one split."""
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    @property
    def has_test(self) -> bool:
        """Whether there is a test split (``moezoo fit`` tests the best checkpoint on it at the end)."""
        self.setup()
        return "test" in self.splits

    def train_dataloader(self):
        return self.make_loader(self.split_dataset("train"), shuffle=True)

    def val_dataloader(self):
        return self.make_loader(self.split_dataset("val"), shuffle=False)

    def test_dataloader(self):
        return self.make_loader(self.split_dataset("test"), shuffle=False)

    def predict_dataloader(self):
        return self.make_loader(self.split_dataset("test" if self.has_test else "val"), shuffle=False)
