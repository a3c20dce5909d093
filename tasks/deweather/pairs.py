"""Real degraded/clean image pairs: a pair folder tree or an Allweather / TransWeather list file, checked, read as
whole images or random crops.

Folder tree: ``root/<weather>/input/<name>`` + ``root/<weather>/target/<name>`` (one weather per sub-folder), or
``root/input`` + ``root/target`` (the weather is ``root``'s name); pairs share a file name.

List file (TransWeather's ``allweather.txt``): one degraded image path per line, relative to the list file's folder
(a leading ``./`` or ``/`` dropped, as TransWeather joins it to its data folder) or absolute; the clean path replaces
the last path component equal to ``target_from`` (``input``) by ``target_to`` (``gt``). The weather of a line is its
first component (for an absolute path: the one before ``target_from``; for a line that starts at ``target_from``: the
list file's folder) when a word of it names a known weather (``Outdoor-Rain`` -> rain, ``Snow100K-L`` -> snow; never
``train``), else ``all``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from moezoo.errors import MoezooError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
KNOWN_WEATHERS = ("raindrop", "rain", "snow", "haze", "fog")  # raindrop before rain: "RainDrop" is raindrop


@dataclass(frozen=True)
class Pair:
    """One degraded image (``input``), its clean ``target`` and the name of its weather."""

    input: Path
    target: Path
    weather: str


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def _images(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}


def _unmatched(key: str, names: list[str], have: Path, lack: Path) -> MoezooError:
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return MoezooError(f"{key}: {len(names)} image{'s' * (len(names) != 1)} in {have} without one of the same name "
                       f"in {lack}: {shown}")


def folder_pairs(root: Path, key: str = "data.train") -> list[Pair]:
    """The pairs of a folder tree (see the module docstring), by weather folder then file name."""
    root = Path(root)
    if not root.is_dir():
        raise MoezooError(f"{key}: no such directory: {root}")
    if (root / "input").is_dir() or (root / "target").is_dir():
        folders = [root]
    else:
        folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
                   and ((p / "input").is_dir() or (p / "target").is_dir())]
    if not folders:
        raise MoezooError(f"{key}: {root} has no input/ and target/ folders (expected {root}/<weather>/input/ and "
                          f"{root}/<weather>/target/, or {root}/input/ and {root}/target/)")
    pairs = []
    for folder in folders:
        for side in ("input", "target"):
            if not (folder / side).is_dir():
                raise MoezooError(f"{key}: {folder} has no {side}/ folder (a pair folder holds input/ and target/)")
        inputs, targets = _images(folder / "input"), _images(folder / "target")
        if only := sorted(set(inputs) - set(targets)):
            raise _unmatched(key, only, folder / "input", folder / "target")
        if only := sorted(set(targets) - set(inputs)):
            raise _unmatched(key, only, folder / "target", folder / "input")
        pairs += [Pair(inputs[name], targets[name], folder.name) for name in sorted(inputs)]
    if not pairs:
        raise MoezooError(f"{key}: no image pairs in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} files)")
    return pairs


def weather_of(component: str) -> str:
    """The known weather a folder name names: the first of its words (split at non-letters, then at capitals) that
    starts with one (``Outdoor-Rain``, ``RainDrop100``, ``OutdoorRain``, ``rainy``), else ``all``."""
    # words, not substrings: "train" and "Strain" hold "rain"; whole lower-case runs first, so "RainDrop" is raindrop
    for words in (re.findall("[a-z]+", component.lower()), re.findall("[A-Z]+(?![a-z])|[A-Z]?[a-z]+", component)):
        for word in words:
            found = next((w for w in KNOWN_WEATHERS if word.lower().startswith(w)), None)
            if found:
                return found
    return "all"


def _weather_folder(list_file: Path, given: PurePath, i: int) -> str:
    """The folder that names a line's weather: its first component, the one before ``target_from`` when absolute,
    the list file's folder when the line starts at ``target_from``."""
    if given.is_absolute():
        return given.parts[i - 1] if i > 1 else ""
    return given.parts[0] if i > 0 else list_file.resolve().parent.name


def list_pairs(list_file: Path, target_from: str = "input", target_to: str = "gt", key: str = "data.train"
               ) -> list[Pair]:
    """The pairs of a list file (see the module docstring), in its order."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise MoezooError(f"{key}: no such file: {list_file}")
    pairs = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        value = line.strip()
        if not value:
            continue
        given = PurePath(value.removeprefix("./"))
        if not (given.is_absolute() and Path(given).exists()):
            given = PurePath(str(given).lstrip("/"))
        parts = given.parts
        hits = [i for i, part in enumerate(parts) if part == target_from]
        if not hits:
            raise MoezooError(f"{key}: {list_file} line {number}: {value!r} has no path component {target_from!r} to "
                              f"replace by {target_to!r} for its target (data.target_from)")
        i = hits[-1]
        source = Path(given) if given.is_absolute() else list_file.parent / given
        target = Path(*parts[:i], target_to, *parts[i + 1:])
        target = target if given.is_absolute() else list_file.parent / target
        if not source.is_file():
            read = " (a leading / is read from the list file's folder, as TransWeather does)" * value.startswith("/")
            raise MoezooError(f"{key}: {list_file} line {number}: no such image: {source}{read}")
        if not target.is_file():
            raise MoezooError(f"{key}: {list_file} line {number}: the target {target} of {source} does not exist "
                              f"(data.target_from={target_from!r}, data.target_to={target_to!r})")
        pairs.append(Pair(source, target, weather_of(_weather_folder(list_file, given, i))))
    if not pairs:
        raise MoezooError(f"{key}: {list_file} lists no images")
    return pairs


def read_image(path: Path) -> np.ndarray:
    """The image at ``path`` as float32 [H, W, 3] in [0, 1] (converted to RGB)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except Exception as err:  # PIL raises many types for a damaged file (OSError, SyntaxError, ValueError, ...)
        raise MoezooError(f"cannot read image {path}: {_reason(err)}") from None


def check_pairs(pairs: list[Pair]) -> list[tuple[int, int]]:
    """The (width, height) of every pair, read from the headers; a one-line error naming both files of a pair whose
    sizes differ or whose file cannot be opened."""
    sizes = []
    for pair in pairs:
        found = []
        for path in (pair.input, pair.target):
            try:
                with Image.open(path) as image:
                    found.append(image.size)
            except Exception as err:  # PIL raises many types for a damaged file
                raise MoezooError(f"cannot read image {path} (of the pair {pair.input} -> {pair.target}): "
                                  f"{_reason(err)}") from None
        if found[0] != found[1]:
            raise MoezooError(f"image pair of different sizes: {pair.input} is {found[0][0]}x{found[0][1]}, "
                              f"{pair.target} is {found[1][0]}x{found[1][1]} (a pair must be pixel-aligned)")
        sizes.append(found[0])
    return sizes


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class PairDataset(Dataset):
    """Image pairs: item i is (degraded [3, H, W], clean [3, H, W], weather id: the index of its weather in
    ``weather_names``), float32 in [0, 1].

    ``train``: the same random ``crop_size`` crop of both images, flipped horizontally half the time, drawn from a
    numpy Generator seeded by (``seed``, a draw from torch's generator), so that crops differ every epoch and follow
    Lightning's ``seed_everything`` (and its per-worker seeds). Otherwise: the whole images.
    """

    def __init__(self, pairs: list[Pair], weather_names: list[str], crop_size: int | None = None,
                 train: bool = False, seed: int = 0):
        missing = sorted({p.weather for p in pairs} - set(weather_names))
        if missing:
            raise MoezooError(f"weather names {list(weather_names)} lack {', '.join(missing)} of the pairs")
        if train and crop_size is None:
            raise MoezooError("data.crop_size: train pairs are cropped; give a positive crop size")
        self.pairs, self.weather_names, self.crop_size, self.train, self.seed = pairs, list(weather_names), crop_size, \
            train, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        pair = self.pairs[index]
        degraded, clean = read_image(pair.input), read_image(pair.target)
        if degraded.shape != clean.shape:
            raise MoezooError(f"image pair of different sizes: {pair.input} is {degraded.shape[1]}x{degraded.shape[0]},"
                              f" {pair.target} is {clean.shape[1]}x{clean.shape[0]} (a pair must be pixel-aligned)")
        if self.train:
            size, (h, w) = self.crop_size, degraded.shape[:2]
            if size > min(h, w):
                raise MoezooError(f"data.crop_size={size} is larger than the image pair {pair.input} -> "
                                  f"{pair.target} ({w}x{h}); use at most {min(h, w)}")
            rng = np.random.default_rng([self.seed, int(torch.randint(2**62, ()))])
            top, left = rng.integers(h - size + 1), rng.integers(w - size + 1)
            degraded, clean = degraded[top:top + size, left:left + size], clean[top:top + size, left:left + size]
            if rng.random() < 0.5:
                degraded, clean = degraded[:, ::-1], clean[:, ::-1]
        return _chw(degraded), _chw(clean), torch.tensor(self.weather_names.index(pair.weather))
