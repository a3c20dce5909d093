"""Deweathering data: degraded/clean image pairs as (degraded [B, 3, H, W], clean [B, 3, H, W], weather id [B]).

Each of the train, val and test splits is one of:

- a pair folder tree, ``root/<weather>/input/<name>`` + ``root/<weather>/target/<name>`` (the weather is the
  sub-folder's name) or ``root/input`` + ``root/target`` (the weather is ``root``'s name), as in shared/data/weather;
- a ``.txt`` list file (Allweather / TransWeather): one degraded image per line, its target found by replacing the
  path component ``target_from`` by ``target_to`` (``moezoo.tasks.deweather.pairs``);
- None: the synthetic default, rain, snow and haze on scikit-image's photographs, split by photograph
  (``moezoo.tasks.deweather.synthetic``; synthetic, documented there).

A real train split without a val split gives ``val_fraction`` of its pairs (seeded) to val; a real train split
without a test split means no test split. Train batches are ``crop_size`` crops; val and test are whole images, in
batches of ``eval_batch_size`` (images of different sizes need 1). The weather id indexes ``weather_names``, linked
to the model: the synthetic weathers first when the train split is synthetic, then the weathers of the real splits
in order of first appearance (a real ``haze`` folder shares the synthetic haze's id).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from moezoo.errors import MoezooError
from moezoo.training.data import SplitDataModule

from .pairs import Pair, PairDataset, check_pairs, folder_pairs, list_pairs
from .synthetic import WEATHERS, SyntheticWeather

SPLITS = ("train", "val", "test")


class WeatherData(SplitDataModule):
    """Image pairs under several weathers as (degraded, clean, weather id) batches.

    Args:
        train, val, test: a pair folder tree, a ``.txt`` list file, or None (see the module docstring).
        target_from, target_to: a list file's target path replaces the component ``target_from`` by ``target_to``.
        crop_size: the side of the square train crops.
        train_samples: crops per epoch of the synthetic train split (a real one gives one crop per pair).
        eval_size, eval_variants: the synthetic val/test images' long side and seeds per photograph and weather.
        val_fraction: the share of a real train split held out as val when no val split is given.
        batch_size, eval_batch_size: train batches; val, test and predict batches.
        num_workers: DataLoader workers.
        seed: the synthetic samples' seed, the val hold-out's and the train crops'.
    """

    model_links = {"weather_names": "weather_names"}

    def __init__(self, train: Path | None = None, val: Path | None = None, test: Path | None = None, *,
                 target_from: str = "input", target_to: str = "gt", crop_size: int = 64, train_samples: int = 2000,
                 eval_size: int = 128, eval_variants: int = 2, val_fraction: float = 0.1, batch_size: int = 16,
                 eval_batch_size: int = 1, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.sources = {name: None if path is None else Path(path).expanduser()
                        for name, path in zip(SPLITS, (train, val, test))}
        self.target_from, self.target_to = target_from, target_to
        self.crop_size, self.train_samples = crop_size, train_samples
        self.eval_size, self.eval_variants, self.val_fraction = eval_size, eval_variants, val_fraction
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = batch_size, eval_batch_size, \
            num_workers, seed
        self._real: dict[str, list[Pair]] | None = None

    # -- what the model is built with (linked) --------------------------------------------------------------------
    @property
    def weather_names(self) -> list[str]:
        """The weathers, by id (real splits are listed on first use); linked to the model's ``weather_names``."""
        names = list(WEATHERS) if self.sources["train"] is None else []
        for pairs in self._real_pairs().values():
            names += [w for w in dict.fromkeys(p.weather for p in pairs) if w not in names]
        return names

    # -- setup ----------------------------------------------------------------------------------------------------
    def _check_args(self) -> None:
        for key in ("crop_size", "train_samples", "eval_size", "eval_variants", "batch_size", "eval_batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MoezooError(f"data.{key}: must be a positive integer, got {value!r}")
        if self.eval_size < 8:
            raise MoezooError(f"data.eval_size: must be at least 8 (eval images are cut to multiples of 8), got "
                              f"{self.eval_size}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise MoezooError(f"data.num_workers: must be an integer >= 0, got {self.num_workers!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise MoezooError(f"data.seed: must be an integer >= 0, got {self.seed!r}")
        fraction = self.val_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise MoezooError(f"data.val_fraction: must be a number between 0 and 1 (exclusive), got {fraction!r}")
        for key in ("target_from", "target_to"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
                raise MoezooError(f"data.{key}: must be a folder name (no /), got {value!r}")
        if self.target_from == self.target_to:
            raise MoezooError(f"data.target_to: must differ from data.target_from, both are {self.target_to!r}")
        for name, path in self.sources.items():
            if path is not None and not path.exists():
                raise MoezooError(f"data.{name}: no such file or directory: {path}")
            if path is not None and path.is_file() and path.suffix.lower() != ".txt":
                raise MoezooError(f"data.{name}: {path} is a file but not a .txt list file; give a pair folder "
                                  "(<weather>/input/ + <weather>/target/) or a list file")

    def _real_pairs(self) -> dict[str, list[Pair]]:
        """The pairs of every real split as given (before a val hold-out), listed once."""
        if self._real is None:
            self._check_args()
            self._real = {}
            for name, path in self.sources.items():
                if path is not None:
                    key = f"data.{name}"
                    self._real[name] = list_pairs(path, self.target_from, self.target_to, key) if path.is_file() \
                        else folder_pairs(path, key)
        return self._real

    def _hold_out(self, pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
        """(train, val) of a real train split: ``val_fraction`` of the pairs (at least one), drawn with ``seed``."""
        count = max(1, int(round(self.val_fraction * len(pairs))))
        if count >= len(pairs):
            raise MoezooError(f"data.train: {len(pairs)} pair{'s' * (len(pairs) != 1)} leave none to train on after "
                              f"holding out data.val_fraction={self.val_fraction}; give data.val")
        held = set(np.random.default_rng(self.seed).permutation(len(pairs))[:count].tolist())
        return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        real, names = self._real_pairs(), self.weather_names
        sizes = {name: check_pairs(pairs) for name, pairs in real.items()}
        splits = {}
        if "train" in real:
            # fail now, not at the first batch that meets the smallest image
            side, pair = min(zip(map(min, sizes["train"]), real["train"]), key=lambda item: item[0])
            if self.crop_size > side:
                raise MoezooError(f"data.crop_size={self.crop_size} is larger than the train image pair {pair.input} "
                                  f"-> {pair.target} (short side {side} px); use at most {side}")
            train = real["train"]
            if "val" not in real:
                train, held = self._hold_out(train)
                splits["val"] = PairDataset(held, names)
            splits["train"] = PairDataset(train, names, self.crop_size, train=True, seed=self.seed)
        else:
            splits["train"] = SyntheticWeather("train", num_samples=self.train_samples, crop_size=self.crop_size,
                                               seed=self.seed)
        for name in ("val", "test"):
            if name in real:
                splits[name] = PairDataset(real[name], names)
            elif self.sources["train"] is None:
                splits[name] = SyntheticWeather(name, eval_size=self.eval_size, variants=self.eval_variants,
                                                seed=self.seed)
        self.splits = {name: splits[name] for name in SPLITS if name in splits}

    def make_loader(self, dataset, shuffle: bool) -> DataLoader:
        # only the train loader shuffles; val, test and predict hold whole images, often of different sizes
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)
