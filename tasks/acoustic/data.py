"""Acoustic data: labelled recordings cut into fixed windows, split by recording (or vessel / speaker), never by window.

Sources (one of):
- ``root``: a class-folder tree, one sub-folder per class (DeepShip's layout: ``Cargo/``, ``Passengership/``,
  ``Tanker/``, ``Tug/``, each holding ``<recording>.wav``); every file is one recording.
- ``manifest``: a CSV with a path and a label column (names set by ``path_column`` / ``label_column``), optionally a
  group column (``group_column``: recording, vessel or speaker id; files of one group stay in one split) and a split
  column (``split_column``: train / val / test given per row). ShipsEar's vessel types map to its classes A-E with
  ``shipsear_class`` (``moezoo.tasks.acoustic.shipsear``) when writing such a manifest.
- neither: the embedded default, generated ship-radiated noise of 4 classes (``moezoo.tasks.acoustic.synthetic``;
  synthetic, documented there).

Every recording is mixed to mono, resampled to ``sample_rate`` and cut into windows of ``window_seconds`` every
``hop_seconds``. Batches are (waveform [B, window], label [B], group [B]); the model computes the spectral features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moezoo.errors import MoezooError
from moezoo.training.data import SplitDataModule

from . import synthetic
from .features import FEATURES
from .recordings import (
    Recording,
    WindowDataset,
    check_given_split,
    cut_windows,
    folder_recordings,
    manifest_recordings,
    probe_all,
    split_by_group,
)


class AcousticData(SplitDataModule):
    """Windows of labelled recordings as (waveform, label, group) batches.

    Args:
        root: a class-folder tree of audio files; or
        manifest: a CSV manifest (see the module docstring); neither: the generated default.
        sample_rate: every recording is resampled to it (Hz).
        window_seconds, hop_seconds: the window cut from the recordings and the step between windows (None: the
            window, no overlap).
        feature: the time-frequency map the model computes (``mel``, ``stft``, ``mfcc``, ``lfcc``); linked to the
            model's ``feature``.
        pad_short: zero-pad a recording shorter than one window (otherwise it is an error naming the file).
        allowed_sample_rates: file sample rates accepted (None: any).
        path_column, label_column, group_column, split_column: the manifest's columns.
        val_fraction, test_fraction, split_seed: the split of the groups (fixed seed: every run sees the same test).
        check_audio: decode every file once at setup, so that a damaged file fails early with its path.
        skip_bad: leave out unreadable, empty or too-short files with a counted warning instead of failing.
        synthetic_recordings_per_class, synthetic_seconds, synthetic_seed: the generated default's size.
    """

    model_links = {"num_classes": "num_classes", "sample_rate": "sample_rate", "feature": "feature",
                   "classes": "class_names", "window_seconds": "window_seconds"}

    def __init__(self, root: str | None = None, manifest: str | None = None, sample_rate: int = 8000,
                 window_seconds: float = 2.0, hop_seconds: float | None = 1.0, feature: str = "mel",
                 pad_short: bool = False, allowed_sample_rates: list[int] | None = None, path_column: str = "path",
                 label_column: str = "label", group_column: str | None = None, split_column: str | None = None,
                 val_fraction: float = 0.15, test_fraction: float = 0.15, split_seed: int = 0,
                 check_audio: bool = True, skip_bad: bool = False, batch_size: int = 32, num_workers: int = 0,
                 synthetic_recordings_per_class: int = 40, synthetic_seconds: float = 6.0,
                 synthetic_seed: int = 0):
        super().__init__()
        self.root = None if root is None else Path(root).expanduser()
        self.manifest = None if manifest is None else Path(manifest).expanduser()
        self.sample_rate, self.window_seconds = sample_rate, window_seconds
        self.hop_seconds = window_seconds if hop_seconds is None else hop_seconds
        self.feature, self.pad_short, self.allowed_sample_rates = feature, pad_short, allowed_sample_rates
        self.path_column, self.label_column = path_column, label_column
        self.group_column, self.split_column = group_column, split_column
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.check_audio, self.skip_bad = check_audio, skip_bad
        self.batch_size, self.num_workers = batch_size, num_workers
        self.synthetic_recordings_per_class, self.synthetic_seconds = synthetic_recordings_per_class, synthetic_seconds
        self.synthetic_seed = synthetic_seed
        self._classes: list[str] | None = list(synthetic.CLASSES) if root is None and manifest is None else None
        self.recordings: list[Recording] = []
        self.split_groups: dict[str, list[str]] = {}

    # -- what the model is built with (linked) --------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """The class names (of a tree or manifest: read on first use); linked to the model's ``class_names``."""
        if self._classes is None:
            self.setup()
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def window(self) -> int:
        """Samples per window at ``sample_rate``."""
        return int(round(self.window_seconds * self.sample_rate))

    # -- setup ----------------------------------------------------------------------------------------------------
    def _check_args(self) -> None:
        if self.root is not None and self.manifest is not None:
            raise MoezooError("data: give data.root or data.manifest, not both")
        if self.feature not in FEATURES:
            raise MoezooError(f"data.feature: {self.feature!r} is not one of {', '.join(FEATURES)}")
        for key in ("sample_rate", "window_seconds", "hop_seconds"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise MoezooError(f"data.{key}: must be a positive number, got {value!r}")

    def _sources(self) -> tuple[list[Recording], list[str]]:
        if self.root is not None:
            return folder_recordings(self.root)
        if self.manifest is not None:
            return manifest_recordings(self.manifest, self.path_column, self.label_column, self.group_column,
                                       self.split_column)
        generated = synthetic.generate(self.synthetic_recordings_per_class, self.synthetic_seconds,
                                       self.sample_rate, seed=self.synthetic_seed)
        recordings = [Recording(label, f"vessel-{i:03d}", samples=wave, sample_rate=self.sample_rate,
                                num_frames=wave.shape[0]) for i, (wave, label, _) in enumerate(generated)]
        return recordings, list(synthetic.CLASSES)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        self._check_args()
        recordings, classes = self._sources()
        window_seconds, source = self.window_seconds, self._source_name()
        recordings = probe_all(recordings, lambda rate: int(round(window_seconds * rate)), self.pad_short,
                               self.allowed_sample_rates, self.check_audio, self.skip_bad, source)
        labels, groups = [r.label for r in recordings], [r.group for r in recordings]
        if self.manifest is not None and self.split_column:
            kept = [r.split for r in recordings]
            if self.group_column:
                check_given_split(groups, kept, source)
            indices = {name: np.flatnonzero([s == name for s in kept]) for name in ("train", "val", "test")}
            if not len(indices["train"]):
                raise MoezooError(f"{source}: data.split_column={self.split_column!r} gives no train rows")
            if not len(indices["val"]):  # e.g. FSDD's official train/test: val is drawn from train's groups
                train = indices["train"]
                held = split_by_group([labels[i] for i in train], [groups[i] for i in train], self.val_fraction, 0.0,
                                      self.split_seed, classes, source)
                indices["train"], indices["val"] = train[held["train"]], train[held["val"]]
            if not len(indices["test"]):
                del indices["test"]
        else:
            indices = split_by_group(labels, groups, self.val_fraction, self.test_fraction, self.split_seed,
                                     classes, source)
        group_ids = {g: i for i, g in enumerate(sorted(set(groups)))}
        self.recordings, self._classes = recordings, list(classes)
        self.split_groups = {name: sorted({groups[i] for i in idx}) for name, idx in indices.items()}
        self.splits = {name: WindowDataset(recordings, cut_windows(recordings, idx, self.window_seconds,
                                                                   self.hop_seconds),
                                           self.sample_rate, self.window, group_ids)
                       for name, idx in indices.items()}

    def _source_name(self) -> str:
        if self.root is not None:
            return f"data.root={self.root}"
        return f"data.manifest={self.manifest}" if self.manifest is not None else "data (generated)"
