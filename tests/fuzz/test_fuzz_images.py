"""Fuzz the ImageFolder trees of image classification and DiT: classes with few or no images, damaged image bytes,
files that are not images, PNG/JPEG/BMP/GIF in several modes and sizes, and train/val/test layouts that disagree.

Each tree either loads into non-empty splits whose every image is a finite [C, S, S] tensor with a label of one of
the tree's classes, or raises a one-line MoezooError naming the folder or the image (at setup, or when a damaged
image is first read). A tree with an empty class folder, or too few images of a class to split, must be rejected.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fuzz_support import OUTCOMES, PROFILES, expect_both_outcomes, fuzz_settings, mutated, outcome, scratch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from moezoo.tasks.dit.data import DiffusionImageData
from moezoo.tasks.image_classification.data import ImageClassificationData
from moezoo.training.data import samples_per_class

FORMATS = {"PNG": ("png", ["L", "RGB", "RGBA", "P", "1", "I;16"]), "JPEG": ("jpg", ["L", "RGB"]),
           "BMP": ("bmp", ["L", "RGB", "P", "1"]), "GIF": ("gif", ["L", "P"])}


@st.composite
def image_bytes(draw, rng):
    """(bytes, extension, intact) of one small image, sometimes damaged or not an image at all."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    extension, modes = FORMATS[fmt]
    mode = draw(st.sampled_from(modes))
    width, height = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if mode == "I;16":  # 16-bit grey
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    else:
        image = Image.fromarray(pixels, "RGB").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    data = buffer.getvalue()
    kind = draw(st.sampled_from(["intact"] * 12 + ["damaged", "text", "empty"]))
    if kind == "damaged":
        damaged = draw(mutated(data, allow_none=False))
        return damaged, extension, False
    if kind == "text":
        return b"this is not an image\n", extension, False
    if kind == "empty":
        return b"", extension, False
    return data, extension, True


CLASS_NAMES = ["cat", "dog", "émile", "a b", "7"]


@st.composite
def image_tree(draw, root_factory, layouts=("flat", "flat", "flat", "splits")):
    """Writes a tree; returns (root, layout, counts per (part, class), intact)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    root = root_factory()
    layout = draw(st.sampled_from(layouts))
    classes = draw(st.lists(st.sampled_from(CLASS_NAMES), min_size=1, max_size=3, unique=True))
    intact, counts = True, {}
    parts = [root] if layout == "flat" else [root / "train", root / "val"] + ([root / "test"] * draw(st.booleans()))
    for part in parts:
        part_classes = list(classes)
        if layout == "splits" and part.name != "train" and draw(st.integers(0, 5)) == 0:
            part_classes = part_classes[:-1] + ["other"]  # classes that differ from train's
        for name in part_classes:
            folder = part / name
            folder.mkdir(parents=True)
            count = draw(st.sampled_from([7, 7, 8, 0, 1, 2, 3, 5, 10]))
            counts[(part.name, name)] = count
            for i in range(count):
                data, extension, ok = draw(image_bytes(rng))
                (folder / f"{i}.{extension}").write_bytes(data)
                intact = intact and ok
            if draw(st.integers(0, 7)) == 0:  # files and folders ImageFolder must skip
                (folder / "notes.txt").write_text("not an image")
                (folder / "nested").mkdir()
    return root, layout, counts, intact


def _sane(module, channels: int, size: int) -> None:
    assert set(module.splits) >= {"train", "val"}
    for name, split in module.splits.items():
        assert len(split) > 0, f"empty {name} split"
        for i in range(len(split)):
            image, label = split[i]
            assert image.shape == (channels, size, size) and torch.isfinite(image).all()
            assert 0 <= int(label) < module.num_classes


def _check_tree(loader: str, tree, make_module, channels: int, size: int, fractions):
    root, layout, counts, intact = tree
    module = make_module(root)

    def load():
        module.setup()
        _sane(module, channels, size)
        return module

    loaded = outcome(loader, load, [str(root)])
    if not intact:
        return
    if layout == "flat":
        fewest = min(counts.values())
        if fewest < 3:
            assert loaded is None, f"loaded a tree with a class of {fewest} images: {counts}"
        elif fewest >= samples_per_class(*fractions):
            assert loaded is not None, f"refused a valid tree: {counts}"
        if loaded is not None:
            assert module.num_classes == len(counts)
    elif any(count == 0 for (part, _), count in counts.items() if part == "train"):
        assert loaded is None, f"loaded a train/ folder with an empty class: {counts}"


def _roots(tmp_path):
    counter = iter(range(10**9))

    def make():
        return tmp_path / f"tree{next(counter)}"

    return make


@pytest.mark.parametrize("profile", PROFILES)
def test_image_classification_tree_loads_sane_images_or_fails_in_one_line(profile, tmp_path):
    loader = "image classification ImageFolder"
    before = OUTCOMES[loader].copy()

    @fuzz_settings(profile, examples=150)
    @given(data=st.data(), in_chans=st.sampled_from([1, 3]), check_images=st.booleans(),
           fractions=st.sampled_from([(0.15, 0.15), (0.2, 0.2)]))
    def check(data, in_chans, check_images, fractions):
        with scratch(tmp_path) as folder:
            tree = data.draw(image_tree(_roots(folder)))
            _check_tree(loader, tree, lambda root: ImageClassificationData(
                root=str(root), image_size=6, in_chans=in_chans, check_images=check_images, augment=False,
                val_fraction=fractions[0], test_fraction=fractions[1]), in_chans, 6, fractions)

    check()
    expect_both_outcomes(loader, before)


@pytest.mark.parametrize("profile", PROFILES)
def test_dit_tree_loads_sane_images_or_fails_in_one_line(profile, tmp_path):
    loader = "DiT ImageFolder"
    before = OUTCOMES[loader].copy()

    @fuzz_settings(profile, examples=150)
    @given(data=st.data(), grayscale=st.booleans(), fractions=st.sampled_from([(0.15, 0.15), (0.2, 0.2)]))
    def check(data, grayscale, fractions):
        with scratch(tmp_path) as folder:
            tree = data.draw(image_tree(_roots(folder), layouts=("flat",)))  # DiT reads one flat tree
            _check_tree(loader, tree, lambda root: DiffusionImageData(
                root=str(root), image_size=6, grayscale=grayscale, val_fraction=fractions[0],
                test_fraction=fractions[1]), 1 if grayscale else 3, 6, fractions)

    check()
    expect_both_outcomes(loader, before)
