"""moezoo/training/data.py: the stratified split, the bundled digits, checked image folders, the loaders base.

Not named test_data.py: pytest's default import mode needs unique basenames, and tests/tasks/graph has that one.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from moezoo.errors import MoezooError
from moezoo.training.data import SplitDataModule, image_folder, load_digits_images, stratified_split

# 3 classes of 40, 100 and 60 samples, interleaved so that the order says nothing about the class
LABELS = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [40, 100, 60]))


def test_split_is_disjoint_and_covers_every_sample():
    parts = stratified_split(LABELS, 0.15, 0.25, seed=0)
    assert set(parts) == {"train", "val", "test"}
    joined = np.concatenate(list(parts.values()))
    assert len(joined) == len(LABELS) and set(joined.tolist()) == set(range(len(LABELS)))
    assert len(parts["val"]) == pytest.approx(0.15 * 200, abs=1)
    assert len(parts["test"]) == pytest.approx(0.25 * 200, abs=1)


def test_split_keeps_the_class_proportions_in_every_part():
    for rows in stratified_split(LABELS, 0.15, 0.25, seed=0).values():
        counts = np.bincount(LABELS[rows], minlength=3)
        expected = np.array([40, 100, 60]) * len(rows) / 200
        assert np.abs(counts - expected).max() <= 1, (counts, expected)


def test_split_is_a_function_of_the_seed():
    first, again = stratified_split(LABELS, 0.1, 0.1, seed=3), stratified_split(LABELS, 0.1, 0.1, seed=3)
    other = stratified_split(LABELS, 0.1, 0.1, seed=4)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(np.sort(first["test"]), np.sort(other["test"]))


def test_digits_split_has_the_sizes_the_readme_reports():
    _, labels = load_digits_images()
    sizes = {k: len(v) for k, v in stratified_split(labels.numpy(), 0.15, 0.15, seed=0).items()}
    assert sizes == {"train": 1257, "val": 270, "test": 270}


@pytest.mark.parametrize("val,test", [(0.0, 0.2), (0.5, 0.5), (0.3, -0.1)])
def test_fractions_outside_the_unit_interval_are_a_one_line_error_naming_the_keys(val, test):
    with pytest.raises(MoezooError, match=r"data.val_fraction=.* and data.test_fraction=.* must each be above 0"):
        stratified_split(LABELS, val, test, seed=0)


def test_a_class_too_small_to_stratify_is_a_one_line_error():
    with pytest.raises(MoezooError, match="cannot split 11 samples stratified") as error:
        stratified_split(np.array([0] * 10 + [1]), 0.2, 0.2, seed=0)
    assert "\n" not in str(error.value)


def test_digits_are_the_1797_bundled_images_in_minus_one_one():
    images, labels = load_digits_images()
    assert images.shape == (1797, 1, 8, 8) and labels.shape == (1797,) and labels.dtype == torch.long
    assert images.min() == -1 and images.max() == 1
    assert torch.bincount(labels).tolist() == np.bincount(labels.numpy()).tolist() and labels.max() == 9
    big, _ = load_digits_images(image_size=16, channels=3)
    assert big.shape == (1797, 3, 16, 16) and -1 <= big.min() and big.max() <= 1
    assert torch.equal(big[:, 0], big[:, 2]), "grey repeated to three channels"


def _tree(root, classes=("cat", "dog"), per_class=3):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((4, 4), 40 * i, dtype=np.uint8), mode="L").save(root / c / f"{i}.png")
    return root


def test_image_folder_reads_one_class_per_sub_folder(tmp_path):
    folder = image_folder(_tree(tmp_path / "images"))
    assert folder.classes == ["cat", "dog"] and len(folder) == 6 and folder.targets == [0, 0, 0, 1, 1, 1]


def test_gif_images_are_read_not_skipped_as_torchvision_would(tmp_path):
    """torchvision's ImageFolder lists no .gif: a class of GIFs would lose them in silence (the slow fuzz run)."""
    for i, extension in enumerate(["png", "gif", "GIF", "bmp"]):
        (tmp_path / "cat").mkdir(exist_ok=True)
        Image.new("P", (5, 4), color=i).save(tmp_path / "cat" / f"{i}.{extension}")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    folder = image_folder(tmp_path)
    assert sorted(Path(path).name for path, _ in folder.samples) == ["0.png", "1.gif", "2.GIF", "3.bmp"]
    image, label = folder[1]
    assert image.size == (5, 4) and image.mode == "RGB" and label == 0


@pytest.mark.parametrize("case,message", [
    ("missing", "data.root: no such directory: {root}"),
    ("no_classes", "data.root: {root} has no class sub-folders (expected {root}/<class>/<image>)"),
    ("no_images", "data.root: no images in {root} (looked for"),
    ("damaged", "cannot read image {root}/dog/bad.png"),
])
def test_bad_image_folder_is_a_one_line_error_naming_the_folder(tmp_path, case, message):
    root = tmp_path / "images"
    if case == "no_classes":
        root.mkdir()
        (root / "loose.png").write_bytes(b"")
    elif case == "no_images":
        (root / "cat").mkdir(parents=True)
        (root / "cat" / "notes.txt").write_text("not an image")
    elif case == "damaged":
        _tree(root)
        (root / "dog" / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(MoezooError) as error:
        image_folder(root, check=True)
    assert str(error.value).startswith(message.format(root=root)) and "\n" not in str(error.value)


def test_a_damaged_image_found_while_loading_names_its_file(tmp_path):
    root = _tree(tmp_path / "images")
    (root / "dog" / "bad.png").write_bytes(b"this is not a png")
    folder = image_folder(root)  # not checked up front
    bad = [i for i, (path, _) in enumerate(folder.samples) if path.endswith("bad.png")][0]
    with pytest.raises(MoezooError, match=f"cannot read image {root}/dog/bad.png"):
        folder[bad]


class _Numbers(SplitDataModule):
    """Ten numbers split 6/2/2 (or 8/2 without a test split)."""

    def __init__(self, with_test=True):
        super().__init__()
        self.with_test, self.batch_size = with_test, 2

    def setup(self, stage=None):
        if self.splits is None:
            numbers = TensorDataset(torch.arange(10))
            cut = 6 if self.with_test else 8
            self.splits = {"train": torch.utils.data.Subset(numbers, range(cut)),
                           "val": torch.utils.data.Subset(numbers, range(cut, cut + 2))}
            if self.with_test:
                self.splits["test"] = torch.utils.data.Subset(numbers, range(8, 10))


def _values(loader):
    return [int(v) for (batch,) in loader for v in batch]


def test_split_data_module_shuffles_train_only_and_predicts_on_test():
    data = _Numbers()
    torch.manual_seed(0)
    orders = {tuple(_values(data.train_dataloader())) for _ in range(5)}
    assert len(orders) > 1 and all(sorted(o) == list(range(6)) for o in orders), "train is reshuffled every epoch"
    assert _values(data.val_dataloader()) == [6, 7] and _values(data.test_dataloader()) == [8, 9]
    assert _values(data.predict_dataloader()) == [8, 9] and data.has_test
    assert next(iter(data.val_dataloader()))[0].shape == (2,), "batches of batch_size"


def test_without_a_test_split_predict_uses_val_and_test_is_a_clear_error():
    data = _Numbers(with_test=False)
    assert not data.has_test and _values(data.predict_dataloader()) == [8, 9]
    with pytest.raises(MoezooError, match="data: there is no test split"):
        data.test_dataloader()


# -- classes with too few images (issue #15) --------------------------------------------------------------------------
def test_an_empty_class_folder_is_an_error_naming_it_not_a_class_without_images(tmp_path):
    root = _tree(tmp_path / "images")
    (root / "emu").mkdir()
    with pytest.raises(MoezooError) as error:
        image_folder(root)
    assert str(error.value) == f"data.root: class folder {root}/emu has 0 images; every class needs at least one"
    assert len(image_folder(root, min_per_class=0).classes) == 3, "allowed where asked (a given val/ split)"


@pytest.mark.parametrize("module", ["image_classification", "dit"])
@pytest.mark.parametrize("per_class,message", [
    (1, "data.root: class folder {root}/cat has 1 image; a stratified train/val/test split needs at least 3 per class"),
    (4, "data.root={root}: cannot split 8 samples stratified into val_fraction="),
])
def test_too_few_images_of_a_class_to_split_name_the_folder_and_the_count_needed(tmp_path, module, per_class,
                                                                                message):
    """One image per class used to crash in scikit-learn's stratified split."""
    from moezoo.tasks.dit.data import DiffusionImageData
    from moezoo.tasks.image_classification.data import ImageClassificationData

    root = _tree(tmp_path / "images", per_class=per_class)
    data = ImageClassificationData(root=str(root)) if module == "image_classification" \
        else DiffusionImageData(root=str(root), image_size=4)
    with pytest.raises(MoezooError) as error:
        data.setup()
    assert str(error.value).startswith(message.format(root=root)) and "\n" not in str(error.value)
    if per_class > 3:
        assert "samples per class; the smallest class, 'cat', has 4)" in str(error.value)


def test_samples_per_class_is_enough_for_the_stratified_split_of_balanced_and_unbalanced_classes():
    from moezoo.training.data import samples_per_class

    assert samples_per_class(0.15, 0.15) == 7 and samples_per_class(0.1, 0.1) == 10
    rng = np.random.default_rng(0)
    for val, test in [(0.15, 0.15), (0.1, 0.1), (0.2, 0.1), (0.3, 0.3)]:
        need = samples_per_class(val, test)
        for seed in range(20):
            counts = rng.integers(need, 2 * need, rng.integers(1, 8))
            parts = stratified_split(np.repeat(np.arange(len(counts)), counts), val, test, seed)
            assert all(len(rows) for rows in parts.values())


def test_an_empty_class_folder_in_given_val_split_is_allowed_but_not_in_train(tmp_path):
    from moezoo.tasks.image_classification.data import ImageClassificationData

    root = tmp_path / "images"
    _tree(root / "train")
    _tree(root / "val", classes=("cat",))
    (root / "val" / "dog").mkdir()
    data = ImageClassificationData(root=str(root))
    data.setup()
    assert data.num_classes == 2 and len(data.splits["val"]) == 3
    (root / "train" / "emu").mkdir()
    (root / "val" / "emu").mkdir()
    with pytest.raises(MoezooError, match=f"class folder {root}/train/emu has 0 images"):
        ImageClassificationData(root=str(root)).setup()
