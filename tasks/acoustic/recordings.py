"""Recordings: finding labelled audio files (a class-folder tree or a CSV manifest), checking them, and cutting them
into fixed windows that are read lazily (``soundfile``), mixed to mono and resampled (``torchaudio``).

torchaudio 2.11's ``torchaudio.load`` needs the separate torchcodec package; soundfile (libsndfile) reads WAV, FLAC,
OGG/Vorbis, AIFF and MP3 without it, so files are read with soundfile and resampled with
``torchaudio.functional.resample``.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch.utils.data import Dataset

from moezoo.errors import MoezooError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".mp3")


@dataclass
class Recording:
    """One labelled recording: a file (``path``) or generated samples (``samples``), its label and its group (the
    unit of the split: the recording itself, or a vessel or speaker id shared by several files)."""

    label: int
    group: str
    path: Path | None = None
    split: str | None = None  # train / val / test where a manifest gives it
    samples: np.ndarray | None = None
    sample_rate: int = 0
    num_frames: int = 0

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else f"generated recording {self.group}"


def mono_at(samples: torch.Tensor, rate: int, target_rate: int) -> torch.Tensor:
    """Samples [N] or [N, channels] at ``rate`` as mono float32 [M] at ``target_rate`` (channel mean, then
    ``torchaudio.functional.resample``): how every recording is read, by the data and by ``classify_recording``."""
    wave = samples.float()
    wave = wave.mean(-1) if wave.dim() == 2 else wave.reshape(-1)
    return wave if rate == target_rate else AF.resample(wave, rate, target_rate)


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def folder_recordings(root: Path, key: str = "data.root") -> tuple[list[Recording], list[str]]:
    """The tree ``root/<class>/<file>`` (DeepShip's layout); every file is its own recording (its group is its path
    relative to ``root``). A class folder without audio is an error naming it."""
    if not root.is_dir():
        raise MoezooError(f"{key}: no such directory: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise MoezooError(f"{key}: {root} has no class sub-folders (expected {root}/<class>/<recording>.wav)")
    recordings = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        if not files:
            raise MoezooError(f"{key}: class folder {root / name} has no audio files "
                              f"(looked for {', '.join(AUDIO_EXTENSIONS)})")
        recordings += [Recording(label, str(p.relative_to(root)), path=p) for p in files]
    return recordings, classes


def manifest_recordings(manifest: Path, path_column: str = "path", label_column: str = "label",
                        group_column: str | None = None, split_column: str | None = None,
                        ) -> tuple[list[Recording], list[str]]:
    """The rows of a CSV manifest: (recordings, classes); each recording's ``split`` from ``split_column``.

    ``path_column`` is relative to the manifest's folder (or absolute); ``group_column`` names the unit of the split
    (a recording, vessel or speaker id; default: each file); ``split_column`` gives the split of each row
    (train / val / test) instead of drawing one.
    """
    if not manifest.is_file():
        raise MoezooError(f"data.manifest: no such file: {manifest}")
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        rows = list(reader)
    for key, column in (("path_column", path_column), ("label_column", label_column),
                        ("group_column", group_column), ("split_column", split_column)):
        if column is not None and column not in columns:
            raise MoezooError(f"data.{key}: {manifest} has no column {column!r} (its columns: {', '.join(columns)})")
    if not rows:
        raise MoezooError(f"data.manifest: {manifest} has no rows")
    values = [row[label_column].strip() for row in rows]
    numeric = all(v.lstrip("-").isdigit() for v in values)
    classes = sorted(set(values), key=int if numeric else str)
    index = {name: i for i, name in enumerate(classes)}
    recordings = []
    for line, (row, value) in enumerate(zip(rows, values), start=2):
        if not value or not row[path_column].strip():
            raise MoezooError(f"data.manifest: {manifest} line {line}: empty {path_column!r} or {label_column!r}")
        path = Path(row[path_column].strip())
        path = path if path.is_absolute() else manifest.parent / path
        group = row[group_column].strip() if group_column else str(path)
        split = None
        if split_column:
            split = row[split_column].strip().lower()
            if split not in ("train", "val", "test"):
                raise MoezooError(f"data.manifest: {manifest} line {line}: {split_column}={row[split_column]!r} "
                                  "is not train, val or test")
        recordings.append(Recording(index[value], group, path=path, split=split))
    return recordings, classes


def probe(recording: Recording, window_frames_at, pad_short: bool, allowed_sample_rates, decode: bool) -> None:
    """Fill ``sample_rate`` and ``num_frames`` from the file, or raise a MoezooError naming it: unreadable, empty,
    a sample rate not allowed, shorter than one window (unless ``pad_short``). ``decode`` reads every frame once,
    so that a file whose header is fine but whose data is damaged fails now, not in the middle of an epoch."""
    if recording.samples is not None:
        return
    path = recording.path
    try:
        info = sf.info(str(path))
        if decode:
            with sf.SoundFile(str(path)) as handle:
                frames = 0
                for block in handle.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                    if not np.isfinite(block).all():
                        raise ValueError("it holds NaN or infinite samples")
                    frames += block.shape[0]
        else:
            frames = info.frames
    except MoezooError:
        raise
    except Exception as err:  # libsndfile raises LibsndfileError / RuntimeError / ValueError for damaged files
        raise MoezooError(f"cannot read audio {path}: {_reason(err)}") from None
    if frames <= 0:
        raise MoezooError(f"audio {path} is empty (0 frames)")
    if allowed_sample_rates and info.samplerate not in allowed_sample_rates:
        raise MoezooError(f"audio {path}: sample rate {info.samplerate} Hz is not in data.allowed_sample_rates "
                          f"{list(allowed_sample_rates)}")
    recording.sample_rate, recording.num_frames = info.samplerate, frames
    need = window_frames_at(info.samplerate)
    if frames < need and not pad_short:
        raise MoezooError(f"audio {path}: {frames / info.samplerate:.3g} s is shorter than one window "
                          f"({need / info.samplerate:.3g} s); set data.pad_short true to zero-pad short recordings, "
                          "or lower data.window_seconds")


def probe_all(recordings: list[Recording], window_frames_at, pad_short: bool, allowed_sample_rates, decode: bool,
              skip_bad: bool, source: str = "data") -> list[Recording]:
    """``probe`` every recording; with ``skip_bad`` a bad one is left out with a counted warning (never silently)."""
    kept, bad = [], []
    for recording in recordings:
        try:
            probe(recording, window_frames_at, pad_short, allowed_sample_rates, decode)
        except MoezooError as err:
            if not skip_bad:
                raise
            bad.append(str(err))
            continue
        kept.append(recording)
    if bad:
        warnings.warn(f"data.skip_bad: skipped {len(bad)} of {len(recordings)} audio files (first: {bad[0]})",
                      stacklevel=2)
    if not kept:
        raise MoezooError(f"{source}: none of its {len(recordings)} audio files can be used (first: {bad[0]})")
    return kept


def split_by_group(labels, groups, val_fraction: float, test_fraction: float, seed: int,
                   class_names: list[str], source: str = "data") -> dict[str, np.ndarray]:
    """Indices {train, val, test} of the recordings, splitting whole groups so that no group (recording, vessel,
    speaker) is in two splits; never by window.

    Where every group holds one class (recordings, vessels) the split is stratified: each class's groups are shuffled
    (seeded) and at least one goes to val and one to test, about the fractions' share each. Where groups span classes
    (speakers who say every digit) the groups themselves are shuffled and split by the fractions. A
    ``test_fraction`` of 0 draws only val (from a given train split).
    """
    labels, groups = np.asarray(labels), np.asarray(groups, dtype=object)
    if not (val_fraction > 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
        raise MoezooError(f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must each be "
                          "above 0 and sum to less than 1")
    rng = np.random.default_rng(seed)
    unique = sorted(set(groups.tolist()))
    group_class = {}
    for g, y in zip(groups.tolist(), labels.tolist()):
        group_class.setdefault(g, set()).add(y)
    pure = all(len(c) == 1 for c in group_class.values())
    buckets = ([[g for g in unique if next(iter(group_class[g])) == y] for y in range(len(class_names))]
               if pure else [unique])
    chosen = {"train": [], "val": [], "test": []}
    for y, bucket in enumerate(buckets):  # a class left without recordings (skip_bad) is an error too
        need = 3 if test_fraction > 0 else 2
        if len(bucket) < need:
            what = f"class {class_names[y]!r}" if pure else "the data"
            raise MoezooError(f"{source}: {what} has {len(bucket)} recording group{'s' * (len(bucket) != 1)}; a "
                              f"split by recording needs at least {need} (one each for "
                              f"{'train, val and test' if need == 3 else 'train and val'})")
        order = [bucket[i] for i in rng.permutation(len(bucket))]
        n_test = max(1, int(round(test_fraction * len(order)))) if test_fraction > 0 else 0
        n_val = max(1, int(round(val_fraction * len(order))))
        n_val = min(n_val, len(order) - n_test - 1)
        chosen["test"] += order[:n_test]
        chosen["val"] += order[n_test:n_test + n_val]
        chosen["train"] += order[n_test + n_val:]
    member = {g: name for name, gs in chosen.items() for g in gs}
    return {name: np.flatnonzero([member[g] == name for g in groups.tolist()]) for name in chosen}


def check_given_split(groups, splits, source: str) -> None:
    """A group (vessel, speaker) that a manifest's own split puts into two splits leaks: a one-line error naming it."""
    seen = {}
    for group, split in zip(groups, splits):
        first = seen.setdefault(group, split)
        if first != split:
            raise MoezooError(f"{source}: group {group!r} is in both {first} and {split}: the given split leaks "
                              "recordings of one group across splits (drop data.group_column to accept it, or drop "
                              "data.split_column to split by group)")


class WindowDataset(Dataset):
    """Fixed windows of recordings: item i is (waveform [window] float32 at ``sample_rate``, label, group index).

    ``windows`` rows are (recording, start frame, frames) at the recording's own rate; a window is read from its
    file when asked (nothing is held in memory but generated recordings), mixed to mono, resampled and cut or
    zero-padded to exactly ``window`` samples.
    """

    def __init__(self, recordings: list[Recording], windows: list[tuple[int, int, int]], sample_rate: int,
                 window: int, group_ids: dict[str, int]):
        self.recordings, self.windows = recordings, windows
        self.sample_rate, self.window, self.group_ids = sample_rate, window, group_ids

    def __len__(self) -> int:
        return len(self.windows)

    def read(self, index: int) -> torch.Tensor:
        r, start, frames = self.windows[index]
        recording = self.recordings[r]
        if recording.samples is not None:
            data = recording.samples[start:start + frames]
        else:
            try:
                data, _ = sf.read(str(recording.path), start=start, frames=frames, dtype="float32", always_2d=True)
            except Exception as err:
                raise MoezooError(f"cannot read audio {recording.path}: {_reason(err)}") from None
        wave = mono_at(torch.from_numpy(data), recording.sample_rate, self.sample_rate)
        if wave.shape[0] < self.window:
            wave = torch.nn.functional.pad(wave, (0, self.window - wave.shape[0]))
        return wave[: self.window].contiguous()

    def __getitem__(self, index: int):
        r = self.windows[index][0]
        recording = self.recordings[r]
        return self.read(index), recording.label, self.group_ids[recording.group]


def cut_windows(recordings: list[Recording], indices, window_seconds: float, hop_seconds: float
                ) -> list[tuple[int, int, int]]:
    """(recording, start, frames) of every full window of the given recordings, ``hop_seconds`` apart; a recording
    shorter than one window gives one (zero-padded) window."""
    windows = []
    for r in indices:
        rate, total = recordings[r].sample_rate, recordings[r].num_frames
        size, hop = int(round(window_seconds * rate)), max(1, int(round(hop_seconds * rate)))
        starts = range(0, total - size + 1, hop) if total >= size else [0]
        windows += [(int(r), s, min(size, total)) for s in starts]
    return windows
