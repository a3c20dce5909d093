"""The CTR family's feature encoders: fitted on the training rows chunk by chunk, applied to any rows.

One code path for both data paths: the in-memory ``CTRData`` fits them with one ``EncoderFit.update`` over its whole
training split, ``moezoo prepare`` with one update per chunk of a file too large for memory; both encode with
``Encoders.encode``. The rules (the same as ``data.py``'s docstring states):

- categorical: a vocabulary of the values seen at least ``min_count`` times, sorted, -> 1..n; unseen, rare and
  missing values -> the reserved 0. With ``hash_buckets`` N: crc32 of the value's text mod N, + 1 (missing -> 0).
  A float column whose values are all whole numbers (pandas' type for an integer column with gaps) is read as
  integers, so a chunk with a gap and one without give the same text ("3", not "3.0").
- numeric: ``standard`` (z-score with the training mean and population std, missing -> 0), ``log`` (log1p of the
  value clipped at 0, then the z-score) or ``bucketize`` (quantile buckets: 1..num_buckets, missing -> 0; then they
  are categorical fields). Mean and variance are merged across chunks by Chan et al.'s pairwise update (exact up to
  rounding). The bucket edges are the quantiles of a uniform random sample of at most ``QUANTILE_SAMPLE`` finite
  training values per field (bottom-k by a seeded random key: bounded memory, and the exact quantiles of all
  values whenever the training split has no more than that many).
- domains: the sorted distinct values of the training split -> 0..D-1 (another value in val/test is an error).
- users (for GAUC only): a 64-bit hash of the value's text, so ids need no table and agree across processes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from moezoo.errors import MoezooError


def one_line(error: BaseException) -> str:
    """An exception as one short line: its type and message, whitespace (newlines) collapsed."""
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]


MISSING = "\0missing"
FLOAT32_MAX = float(np.finfo(np.float32).max)
QUANTILE_SAMPLE = 500_000  # finite training values kept per field for the bucket edges (16 bytes each)


def categorical_strings(column: pd.Series) -> pd.Series:
    """A categorical column as text, missing values as ``MISSING``; whole-number floats written as integers."""
    if pd.api.types.is_float_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = values[np.isfinite(values)]
        if np.array_equal(finite, np.round(finite)) and (np.abs(finite) < 2 ** 53).all():
            column = column.astype("Int64")
    return column.astype("string").fillna(MISSING)


def stable_hash(values: pd.Series, buckets: int) -> np.ndarray:
    """crc32 of each text mod ``buckets``, + 1 (0 stays reserved for missing values); each distinct text hashed once."""
    codes, uniques = pd.factorize(values)
    texts = uniques.tolist()
    hashed = np.fromiter((zlib.crc32(v.encode()) % buckets + 1 for v in texts), dtype=np.int64, count=len(texts))
    return hashed[codes]


def user_ids(column: pd.Series) -> np.ndarray:
    """A 64-bit id per user value (pandas' hash of its text): the same id in every chunk, split and process."""
    return pd.util.hash_array(categorical_strings(column).to_numpy(dtype=object)).view(np.int64)


def numeric_values(column: pd.Series, name: str, transform: str, source: str) -> np.ndarray:
    """The numbers of a numeric column (float64, missing -> nan; log1p of the clipped value under ``log``);
    non-numbers and infinities are one-line errors naming ``source`` and the column."""
    try:
        values = pd.to_numeric(column, errors="coerce")
    except (TypeError, ValueError):  # values pandas cannot even try (lists, dicts)
        raise MoezooError(f"{source}: numeric column {name!r} holds a non-number, {column.iloc[0]!r}") from None
    bad = column[values.isna() & column.notna()]
    if len(bad):
        raise MoezooError(f"{source}: numeric column {name!r} holds a non-number, {bad.iloc[0]!r}")
    values = values.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isinf(values).any():
        raise MoezooError(f"{source}: numeric column {name!r} holds {values[np.isinf(values)][0]} in "
                          f"{int(np.isinf(values).sum())} rows (values must be finite)")
    return np.log1p(np.clip(values, 0, None)) if transform == "log" else values


@dataclass
class Encoders:
    """The fitted encoders of one spec (``categorical``, ``numeric``, ``domain``, ``user``, ``transform``)."""

    spec: dict
    task_names: list[str]
    vocab: dict[str, dict[str, int]]
    numeric_stats: dict[str, tuple]
    hash_buckets: int | None
    domain_names: list[str]

    @property
    def bucketized(self) -> bool:
        return self.spec["transform"] == "bucketize"

    @property
    def categorical_names(self) -> list[str]:
        return list(self.spec["categorical"]) + ([f"{c}_bucket" for c in self.spec["numeric"]]
                                                  if self.bucketized else [])

    @property
    def numeric_names(self) -> list[str]:
        return [] if self.bucketized else list(self.spec["numeric"])

    @property
    def cardinalities(self) -> list[int]:
        sizes = [self.hash_buckets + 1 if self.hash_buckets else len(self.vocab[c]) + 1
                 for c in self.spec["categorical"]]
        if self.bucketized:
            sizes += [len(self.numeric_stats[c][0]) + 2 for c in self.spec["numeric"]]
        return sizes

    @property
    def has_user(self) -> bool:
        return bool(self.spec.get("user"))

    def encode(self, frame: pd.DataFrame, labels: dict[str, np.ndarray], split: str, source: str,
               with_user: bool = True) -> dict[str, torch.Tensor]:
        """Raw rows and their 0/1 labels (task -> [rows]) -> the batch layout the models read."""
        spec, rows = self.spec, len(frame)
        categorical = []
        for column in spec["categorical"]:
            strings = categorical_strings(frame[column])
            if self.hash_buckets:
                codes = stable_hash(strings, self.hash_buckets)
                codes[(strings == MISSING).to_numpy()] = 0
            else:
                codes = strings.map(self.vocab[column]).fillna(0).to_numpy(dtype=np.int64)
            categorical.append(codes)
        numeric = []
        for column in spec["numeric"]:
            values = numeric_values(frame[column], column, spec["transform"], source)
            if self.bucketized:
                (edges,) = self.numeric_stats[column]
                codes = np.searchsorted(edges, values, side="right") + 1
                codes[np.isnan(values)] = 0
                categorical.append(codes.astype(np.int64))
            else:
                mean, std = self.numeric_stats[column]
                # a value far outside the training range saturates at float32's largest instead of becoming inf
                with np.errstate(over="ignore"):
                    scaled = np.nan_to_num((values - mean) / std, nan=0.0)
                numeric.append(np.clip(scaled, -FLOAT32_MAX, FLOAT32_MAX))
        tensors = {
            "categorical": torch.as_tensor(np.stack(categorical, 1) if categorical else np.zeros((rows, 0)),
                                           dtype=torch.long),
            "numeric": torch.as_tensor(np.stack(numeric, 1) if numeric else np.zeros((rows, 0)), dtype=torch.float),
            "labels": torch.as_tensor(np.stack([labels[t] for t in self.task_names], 1),
                                      dtype=torch.float),
        }
        if spec["domain"]:
            index = {name: i for i, name in enumerate(self.domain_names)}
            strings = categorical_strings(frame[spec["domain"]])
            unknown = sorted(set(strings.unique()) - set(index))
            if unknown:
                raise MoezooError(f"{source}: the {split} split has domain {unknown[0]!r}, which the training "
                                  f"split does not have ({', '.join(map(repr, self.domain_names[:10]))})")
            tensors["domain"] = torch.tensor(strings.map(index).to_numpy(dtype=np.int64))
        else:
            tensors["domain"] = torch.zeros(rows, dtype=torch.long)
        if spec.get("user") and with_user:
            tensors["user"] = torch.from_numpy(user_ids(frame[spec["user"]]).copy())
        return tensors


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations of the values seen so far (Chan et al.'s pairwise merge)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    largest: float = 0.0

    def update(self, values: np.ndarray) -> None:
        if not values.size:
            return
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by EncoderFit.finish
            mean = values.mean()
            m2 = np.square(values - mean).sum()
            total = self.count + values.size
            delta = mean - self.mean
            self.m2 = self.m2 + m2 + delta * delta * self.count * values.size / total
            self.mean = self.mean + delta * values.size / total if self.count else mean
        self.count = total
        self.largest = max(self.largest, float(np.abs(values).max()))


@dataclass
class _QuantileSample:
    """A uniform random sample (without replacement) of at most ``capacity`` values: the bottom-k random keys."""

    capacity: int
    rng: np.random.Generator
    values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def update(self, values: np.ndarray) -> None:
        keys = self.rng.random(values.size)
        self.values, self.keys = np.concatenate([self.values, values]), np.concatenate([self.keys, keys])
        if self.values.size > self.capacity:
            keep = np.argpartition(self.keys, self.capacity)[:self.capacity]
            self.values, self.keys = self.values[keep], self.keys[keep]


class EncoderFit:
    """Fits ``Encoders`` over the training rows given in one or more chunks (memory: the distinct categorical
    values with their counts, unless hashed, and ``quantile_sample`` values per bucketized field)."""

    def __init__(self, spec: dict, min_count: int, hash_buckets: int | None, num_buckets: int, source: str,
                 seed: int = 0, quantile_sample: int = QUANTILE_SAMPLE):
        self.spec, self.min_count, self.hash_buckets, self.num_buckets = spec, min_count, hash_buckets, num_buckets
        self.source = source
        self.counts = {c: pd.Series(dtype=np.int64) for c in spec["categorical"]} if not hash_buckets else {}
        rng = np.random.default_rng(seed)
        self.moments = {c: _Moments() for c in spec["numeric"]}
        self.samples = {c: _QuantileSample(quantile_sample, rng) for c in spec["numeric"]}
        self.domains: set[str] = set()
        self.rows = 0

    def update(self, train: pd.DataFrame) -> None:
        """Adds a chunk of training rows."""
        self.rows += len(train)
        for column, counts in self.counts.items():
            chunk = categorical_strings(train[column]).value_counts()
            self.counts[column] = counts.add(chunk, fill_value=0).astype(np.int64) if len(counts) else chunk
        for column in self.spec["numeric"]:
            values = numeric_values(train[column], column, self.spec["transform"], self.source)
            if self.spec["transform"] == "bucketize":
                self.samples[column].update(values[np.isfinite(values)])
            else:
                self.moments[column].update(values[~np.isnan(values)])
        if self.spec["domain"]:
            self.domains.update(categorical_strings(train[self.spec["domain"]]).unique().tolist())

    def finish(self, task_names: list[str]) -> Encoders:
        vocab = {}
        for column, counts in self.counts.items():
            kept = sorted(v for v, n in counts.items() if n >= self.min_count and v != MISSING)
            vocab[column] = {v: i + 1 for i, v in enumerate(kept)}
        stats = {}
        for column in self.spec["numeric"]:
            if self.spec["transform"] == "bucketize":
                finite = self.samples[column].values
                edges = np.unique(np.quantile(finite, np.linspace(0, 1, self.num_buckets + 1)[1:-1])) \
                    if finite.size else np.zeros(0)
                stats[column] = (edges,)
                continue
            moments = self.moments[column]
            mean, std = (moments.mean, np.sqrt(moments.m2 / moments.count)) if moments.count else (0.0, 1.0)
            if not (np.isfinite(mean) and np.isfinite(std)):
                raise MoezooError(f"{self.source}: numeric column {column!r} holds values up to "
                                  f"{moments.largest:.3g}, too large to standardise; use "
                                  "--data.numeric_transform log or bucketize")
            stats[column] = (float(mean), float(std) if std > 0 else 1.0)
        domains = sorted(self.domains) if self.spec["domain"] else ["all"]
        return Encoders(spec={k: v for k, v in self.spec.items() if k != "labels"}, task_names=list(task_names),
                        vocab=vocab, numeric_stats=stats, hash_buckets=self.hash_buckets, domain_names=domains)
