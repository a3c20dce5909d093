"""Tabular click data for multi-task / multi-domain CTR models: CSV, gzipped CSV or Parquet, or the generator.

- ``path: null``: the embedded generator (``synthetic.py``): 3 domains, tasks click and purchase, a user column.
- ``path: FILE`` with ``preset: NAME`` (``presets.py``: adult, census-income, ali-ccp, aliexpress, criteo, avazu),
  or an explicit spec: ``labels`` (one per task: a 0/1 column or a boolean pandas expression such as
  ``income == '>50K'``), ``categorical``, ``numeric``, ``domain`` and ``user`` columns. Explicit fields override a
  preset's.
- Splits: ``test_path`` (or a preset's sibling test file) is the test split and ``val_fraction`` of the training
  rows validate; otherwise the rows are split train/val/test by a seeded permutation.

Encoding (fitted on the training split only): categorical values -> 1..n by vocabulary (values seen fewer than
``min_count`` times, unseen values and missing ones -> the reserved index 0), or with ``hash_buckets`` N a stable
hash (crc32) into 1..N; numeric -> standardised (``log``: log1p of the clipped value first; missing -> 0 after
scaling) or ``bucketize``d into quantile buckets (then they are categorical fields); domains -> 0..D-1.
Batches are dicts: ``categorical`` [B, F] long, ``numeric`` [B, N] float, ``labels`` [B, T] float, ``domain`` [B]
long, and ``user`` [B] long when a user column is named.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from moezoo.errors import MoezooError
from moezoo.training.data import SplitDataModule

from . import synthetic
from .presets import PRESETS, Preset, resolve_fields, resolve_labels


def read_table(path: Path) -> pd.DataFrame:
    """A CSV (optionally gzipped) or Parquet file as a DataFrame; a clear error if it cannot be read."""
    if not path.is_file():
        raise MoezooError(f"data.path: no such file: {path}")
    try:
        if path.suffix == ".parquet" or path.name.endswith(".parquet.gz"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path)
    except Exception as error:  # pandas raises many kinds; the user needs the file and the reason
        raise MoezooError(f"{path}: cannot read it as CSV or Parquet ({type(error).__name__}: {error})") from None
    if frame.empty:
        raise MoezooError(f"{path}: the file has no rows")
    return frame


def label_values(frame: pd.DataFrame, name: str, definition: str, source: str) -> np.ndarray:
    """0/1 values of one task: a 0/1 column, or a boolean expression over the columns."""
    if definition in frame.columns:
        column = frame[definition]
        missing = int(column.isna().sum())
        if missing:
            raise MoezooError(f"{source}: label column {definition!r} has {missing} missing values")
        values = pd.to_numeric(column, errors="coerce")
        bad = column[values.isna() | ~values.isin([0, 1])]
        if len(bad):
            raise MoezooError(f"{source}: label column {definition!r} must hold 0/1, found {bad.iloc[0]!r}")
        return values.to_numpy(dtype=np.float32)
    try:
        result = frame.eval(definition)
    except Exception as error:
        columns = ", ".join(map(str, list(frame.columns)[:12]))
        raise MoezooError(f"{source}: label {name!r} = {definition!r} is neither a column nor an expression over "
                          f"the columns ({type(error).__name__}: {error}); columns: {columns}, ...") from None
    if not isinstance(result, pd.Series) or result.dtype != bool:
        raise MoezooError(f"{source}: label {name!r} = {definition!r} must be a 0/1 column or a boolean expression")
    return result.to_numpy(dtype=np.float32)


def task_name(definition: str) -> str:
    """A task's name from its label definition: the column itself, or a slug of the expression."""
    slug = "".join(ch if ch.isalnum() else "_" for ch in definition.replace(">", "gt").replace("<", "lt"))
    return "_".join(part for part in slug.split("_") if part) or "task"


def stable_hash(values: pd.Series, buckets: int) -> np.ndarray:
    return np.fromiter((zlib.crc32(v.encode()) % buckets + 1 for v in values), dtype=np.int64, count=len(values))


class _Rows(torch.utils.data.Dataset):
    """Encoded rows held as tensors; indexed by a whole batch of indices at once."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors["labels"])

    def __getitem__(self, index):
        index = torch.as_tensor(index)
        return {key: value[index] for key, value in self.tensors.items()}


class CTRData(SplitDataModule):
    """Multi-task (multi-domain) click data for the CTR family.

    Args:
        path: CSV / CSV.gz / Parquet file; None uses the embedded generator.
        preset: adult, census-income, ali-ccp, aliexpress, criteo or avazu (see ``presets.py``).
        labels: one label per task (a 0/1 column or a boolean expression); a column's name names its task.
        categorical, numeric: feature columns.
        domain: column whose values are the domains (a sample uses its domain's gate and tower).
        user: column of user ids, for GAUC.
        test_path: a separate test file (same layout).
        val_fraction, test_fraction, split_seed: the seeded split of the rows (test_fraction unused with a test file).
        min_count: categorical values seen fewer times in training map to the reserved index 0.
        hash_buckets: hash categorical values into this many buckets instead of a vocabulary (Criteo-sized fields).
        numeric_transform: ``standard``, ``log`` (log1p then standardised) or ``bucketize`` (quantile buckets).
        num_buckets: buckets per numeric field with ``bucketize``.
        batch_size, num_workers: loader settings.
        num_samples, num_domains: size of the generated default.
    """

    monitor = "val/auc"
    has_test = True

    def __init__(self, path: str | None = None, preset: str | None = None, labels: list[str] | None = None,
                 categorical: list[str] | None = None, numeric: list[str] | None = None, domain: str | None = None,
                 user: str | None = None, test_path: str | None = None, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, split_seed: int = 0, min_count: int = 1, hash_buckets: int | None = None,
                 numeric_transform: Literal["standard", "log", "bucketize"] | None = None, num_buckets: int = 16,
                 batch_size: int = 1024, num_workers: int = 0, num_samples: int = 100_000, num_domains: int = 3):
        super().__init__()
        self.path = None if path is None else Path(path).expanduser()
        self.test_path = None if test_path is None else Path(test_path).expanduser()
        self.preset, self.labels_arg, self.categorical_arg, self.numeric_arg = preset, labels, categorical, numeric
        self.domain_arg, self.user_arg = domain, user
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.min_count, self.hash_buckets, self.num_buckets = min_count, hash_buckets, num_buckets
        self.numeric_transform_arg = numeric_transform
        self.batch_size, self.num_workers = batch_size, num_workers
        self.num_samples, self.num_domains_arg = num_samples, num_domains
        self.splits: dict[str, _Rows] | None = None

    # -- reading ------------------------------------------------------------------------------------------------
    def _load(self) -> tuple[pd.DataFrame, pd.DataFrame | None, dict, str]:
        """(frame, test frame or None, spec, source name)."""
        if self.path is None:
            frame, _ = synthetic.generate(self.num_samples, self.num_domains_arg, seed=self.split_seed)
            spec = {"labels": {"click": "click", "purchase": "purchase"}, "categorical": list(synthetic.CATEGORICAL),
                    "numeric": list(synthetic.NUMERIC), "domain": "domain", "transform": "standard"}
            return frame, None, self._override(frame, spec), "the embedded generator"
        preset: Preset | None = None
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise MoezooError(f"data.preset: unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
            preset = PRESETS[self.preset]
        elif not self.labels_arg:
            raise MoezooError("data: give --data.preset NAME or the labels (--data.labels '[column, ...]') of the "
                              f"tasks in {self.path}")
        read = preset.read if preset else read_table
        if not self.path.is_file():
            raise MoezooError(f"data.path: no such file: {self.path}")
        try:
            frame = read(self.path)
        except MoezooError:
            raise
        except Exception as error:
            raise MoezooError(f"{self.path}: cannot read it as a {self.preset or 'CSV/Parquet'} file "
                              f"({type(error).__name__}: {error})") from None
        test_path = self.test_path or (preset.test_file(self.path) if preset else None)
        test = None
        if test_path is not None:
            if not test_path.is_file():
                raise MoezooError(f"data.test_path: no such file: {test_path}")
            test = read(test_path)
        spec = {"labels": {}, "categorical": [], "numeric": [], "domain": None, "transform": "standard"}
        if preset:
            spec = {"labels": resolve_labels(preset, frame), "categorical": resolve_fields(preset.categorical, frame),
                    "numeric": resolve_fields(preset.numeric, frame), "domain": preset.domain,
                    "transform": preset.numeric_transform}
        return frame, test, self._override(frame, spec), str(self.path)

    def _override(self, frame: pd.DataFrame, spec: dict) -> dict:
        if self.labels_arg:
            spec["labels"] = {task_name(d): d for d in self.labels_arg}
        if self.categorical_arg is not None:
            spec["categorical"] = list(self.categorical_arg)
        if self.numeric_arg is not None:
            spec["numeric"] = list(self.numeric_arg)
        if self.domain_arg is not None:
            spec["domain"] = self.domain_arg
        spec["user"] = self.user_arg
        if self.numeric_transform_arg is not None:
            spec["transform"] = self.numeric_transform_arg
        return spec

    def _check_spec(self, frame: pd.DataFrame, spec: dict, source: str) -> None:
        if spec["transform"] not in ("standard", "log", "bucketize"):
            raise MoezooError(f"data.numeric_transform must be standard, log or bucketize, got {spec['transform']!r}")
        if not spec["labels"]:
            raise MoezooError(f"data.labels: no task given for {source}")
        named = spec["categorical"] + spec["numeric"] + [c for c in (spec["domain"], spec["user"]) if c]
        seen = set()
        for column in named:
            if column in seen:
                raise MoezooError(f"data: column {column!r} is named twice in the spec (categorical, numeric, "
                                  "domain, user)")
            seen.add(column)
        label_columns = {d for d in spec["labels"].values() if d in frame.columns}
        for column in named:
            if column in label_columns:
                raise MoezooError(f"data: column {column!r} is a label and cannot also be a feature")
            if column not in frame.columns:
                some = ", ".join(map(str, list(frame.columns)[:10]))
                raise MoezooError(f"{source}: no column {column!r} (the file has {some}, ...)")

    # -- encoding -----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        frame, test, spec, source = self._load()
        self._check_spec(frame, spec, source)
        labels = {name: label_values(frame, name, d, source) for name, d in spec["labels"].items()}
        parts = self._split(len(frame), test is not None)
        frames = {k: frame.iloc[rows].reset_index(drop=True) for k, rows in parts.items()}
        label_parts = {k: {n: v[rows] for n, v in labels.items()} for k, rows in parts.items()}
        if test is not None:
            test_source = str(self.test_path or "the test file")
            self._check_spec(test, spec, test_source)
            frames["test"] = test.reset_index(drop=True)
            label_parts["test"] = {n: label_values(test, n, d, test_source) for n, d in spec["labels"].items()}
        self.task_names = list(spec["labels"])
        self._fit(frames["train"], spec)
        self.splits = {k: _Rows(self._encode(f, label_parts[k], spec, k)) for k, f in frames.items()}

    def _split(self, rows: int, has_test: bool) -> dict[str, np.ndarray]:
        order = np.random.default_rng(self.split_seed).permutation(rows)
        num_test = 0 if has_test else int(round(self.test_fraction * rows))
        num_val = int(round(self.val_fraction * rows))
        if rows - num_test - num_val <= 0:
            raise MoezooError(f"data: val_fraction={self.val_fraction} and test_fraction={self.test_fraction} leave "
                              f"no training rows out of {rows}")
        parts = {"val": order[num_test:num_test + num_val], "train": order[num_test + num_val:]}
        if not has_test:
            parts["test"] = order[:num_test]
        return {k: np.sort(v) for k, v in parts.items()}

    @staticmethod
    def _strings(column: pd.Series) -> pd.Series:
        return column.astype("string").fillna("\0missing")

    def _fit(self, train: pd.DataFrame, spec: dict) -> None:
        """Vocabularies, numeric statistics or bucket edges, and domain ids, from the training split."""
        self.vocab: dict[str, dict[str, int]] = {}
        for column in spec["categorical"]:
            if self.hash_buckets:
                continue
            counts = self._strings(train[column]).value_counts()
            kept = sorted(v for v, n in counts.items() if n >= self.min_count and v != "\0missing")
            self.vocab[column] = {v: i + 1 for i, v in enumerate(kept)}
        self.numeric_stats: dict[str, tuple] = {}
        for column in spec["numeric"]:
            values = self._numeric(train[column], column, spec["transform"])
            if spec["transform"] == "bucketize":
                finite = values[np.isfinite(values)]
                edges = np.unique(np.quantile(finite, np.linspace(0, 1, self.num_buckets + 1)[1:-1])) \
                    if finite.size else np.zeros(0)
                self.numeric_stats[column] = (edges,)
            else:
                mean, std = np.nanmean(values), np.nanstd(values)
                self.numeric_stats[column] = (0.0 if np.isnan(mean) else mean, 1.0 if not std > 0 else std)
        self.domain_names = ["all"]
        if spec["domain"]:
            self.domain_names = sorted(self._strings(train[spec["domain"]]).unique().tolist())
        self.categorical_names = list(spec["categorical"])
        self.numeric_names = list(spec["numeric"])
        if spec["transform"] == "bucketize":
            self.categorical_names += [f"{c}_bucket" for c in spec["numeric"]]
            self.numeric_names = []
        self.cardinalities = [self.hash_buckets + 1 if self.hash_buckets else len(self.vocab[c]) + 1
                              for c in spec["categorical"]]
        if spec["transform"] == "bucketize":
            self.cardinalities += [len(self.numeric_stats[c][0]) + 2 for c in spec["numeric"]]
        self.has_user = bool(spec["user"])
        self._users: dict[str, int] = {}

    @staticmethod
    def _numeric(column: pd.Series, name: str, transform: str) -> np.ndarray:
        values = pd.to_numeric(column, errors="coerce")
        bad = column[values.isna() & column.notna()]
        if len(bad):
            raise MoezooError(f"data: numeric column {name!r} holds a non-number, {bad.iloc[0]!r}")
        values = values.to_numpy(dtype=np.float64)
        return np.log1p(np.clip(values, 0, None)) if transform == "log" else values

    def _encode(self, frame: pd.DataFrame, labels: dict, spec: dict, split: str) -> dict[str, torch.Tensor]:
        rows = len(frame)
        categorical = []
        for column in spec["categorical"]:
            strings = self._strings(frame[column])
            if self.hash_buckets:
                codes = stable_hash(strings, self.hash_buckets)
                codes[(strings == "\0missing").to_numpy()] = 0
            else:
                codes = strings.map(self.vocab[column]).fillna(0).to_numpy(dtype=np.int64)
            categorical.append(codes)
        numeric = []
        for column in spec["numeric"]:
            values = self._numeric(frame[column], column, spec["transform"])
            if spec["transform"] == "bucketize":
                (edges,) = self.numeric_stats[column]
                codes = np.searchsorted(edges, values, side="right") + 1
                codes[np.isnan(values)] = 0
                categorical.append(codes.astype(np.int64))
            else:
                mean, std = self.numeric_stats[column]
                numeric.append(np.nan_to_num((values - mean) / std, nan=0.0))
        tensors = {
            "categorical": torch.as_tensor(np.stack(categorical, 1) if categorical else np.zeros((rows, 0)),
                                           dtype=torch.long),
            "numeric": torch.as_tensor(np.stack(numeric, 1) if numeric else np.zeros((rows, 0)), dtype=torch.float),
            "labels": torch.as_tensor(np.stack([labels[t] for t in self.task_names], 1), dtype=torch.float),
        }
        if spec["domain"]:
            index = {name: i for i, name in enumerate(self.domain_names)}
            strings = self._strings(frame[spec["domain"]])
            unknown = sorted(set(strings.unique()) - set(index))
            if unknown:
                raise MoezooError(f"data.domain: the {split} split has domain {unknown[0]!r}, which the training "
                                  f"split does not have ({', '.join(self.domain_names)})")
            tensors["domain"] = torch.tensor(strings.map(index).to_numpy(dtype=np.int64))
        else:
            tensors["domain"] = torch.zeros(rows, dtype=torch.long)
        if spec["user"]:
            users = self._strings(frame[spec["user"]])
            for u in users.unique():
                self._users.setdefault(u, len(self._users))
            tensors["user"] = torch.tensor(users.map(self._users).to_numpy(dtype=np.int64))
        return tensors

    # -- what the models read -----------------------------------------------------------------------------------
    # linked to the model's arguments of the same meaning by the CLI (moezoo.training.cli.LINKED_SIZES)
    @property
    def field_cardinalities(self) -> list[int]:
        self.setup()
        return list(self.cardinalities)

    @property
    def num_numeric(self) -> int:
        self.setup()
        return len(self.numeric_names)

    @property
    def tasks(self) -> list[str]:
        self.setup()
        return list(self.task_names)

    @property
    def domains(self) -> list[str]:
        self.setup()
        return list(self.domain_names)

    @property
    def user_column(self) -> bool:
        self.setup()
        return bool(self.has_user)

    def make_loader(self, rows: _Rows, shuffle: bool) -> DataLoader:
        """Batches of ``batch_size`` rows, each gathered by one indexing of the row tensors."""
        sampler = RandomSampler(rows) if shuffle else SequentialSampler(rows)
        return DataLoader(rows, batch_size=None, sampler=BatchSampler(sampler, self.batch_size, drop_last=False),
                          num_workers=self.num_workers)
