"""Tabular click data for multi-task / multi-domain CTR models: CSV, gzipped CSV or Parquet, or the generator.

- ``path: null``: the embedded generator (``synthetic.py``): 3 domains, tasks click and purchase, a user column.
- ``path: FILE`` with ``preset: NAME`` (``presets.py``: adult, census-income, ali-ccp, aliexpress, criteo, avazu),
  or an explicit spec: ``labels`` (one per task: a 0/1 column or a boolean pandas expression such as
  ``income == '>50K'``), ``categorical``, ``numeric``, ``domain`` and ``user`` columns. Explicit fields override a
  preset's.
- ``path: DIR`` written by ``moezoo prepare`` (``prepare.py``; it holds ``prepared.json``): Parquet shards streamed
  row group by row group over DDP ranks and DataLoader workers (``stream.py``), with the encoders fitted at
  preparation; the other options must be those ``prepare`` had (checked against the marker, one line if not).
- Splits: ``test_path`` (or a preset's sibling test file) is the test split and ``val_fraction`` of the training
  rows validate; otherwise the rows are split train/val/test by a seeded permutation (``split_indices``: the same
  rows for a file read in memory and for its prepared directory).

Encoding (``encoders.py``, fitted on the training split only): categorical values -> 1..n by vocabulary (values
seen fewer than ``min_count`` times, unseen values and missing ones -> the reserved index 0), or with
``hash_buckets`` N a stable hash (crc32) into 1..N; numeric -> standardised (``log``: log1p of the clipped value
first; missing -> 0 after scaling) or ``bucketize``d into quantile buckets (then they are categorical fields);
domains -> 0..D-1.
Batches are dicts: ``categorical`` [B, F] long, ``numeric`` [B, N] float, ``labels`` [B, T] float, ``domain`` [B]
long, and ``user`` [B] long (a 64-bit hash of the user value) when a user column is named.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from moezoo.errors import MoezooError
from moezoo.training.data import SplitDataModule

from . import stream, synthetic
from .encoders import EncoderFit, Encoders, categorical_strings, numeric_values, one_line
from .numeric import TREE_KWARGS, fit_bins
from .presets import PRESETS, Preset, check_label_values, read_csv, resolve_fields, resolve_labels
from .stream import EpochLoader, StreamedRows


def read_table(path: Path) -> pd.DataFrame:
    """A CSV (optionally gzipped) or Parquet file as a DataFrame (``read_file`` makes its failures one line)."""
    if path.suffix == ".parquet" or path.name.endswith(".parquet.gz"):
        return pd.read_parquet(path)
    return read_csv(path, "CSV")


def read_file(read, path: Path, key: str, layout: str) -> pd.DataFrame:
    """``read(path)`` (a preset's reader or ``read_table``) with every failure a one-line error naming the file."""
    if not path.is_file():
        raise MoezooError(f"{key}: no such file: {path}")
    try:
        frame = read(path)
    except MoezooError:
        raise
    except UnicodeDecodeError as error:
        raise MoezooError(f"{path}: not UTF-8 text (byte {error.object[error.start:error.start + 1]!r}: "
                          f"{error.reason}); save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise MoezooError(f"{path}: the file is empty") from None
    except Exception as error:  # pandas, gzip and pyarrow raise many kinds; the user needs the file and the reason
        raise MoezooError(f"{path}: cannot read it as {layout} data ({one_line(error)})") from None
    if len(frame) == 0:
        raise MoezooError(f"{path}: the file has no data rows")
    duplicated = frame.columns[frame.columns.duplicated()]
    if len(duplicated):
        raise MoezooError(f"{path}: column {duplicated[0]!r} occurs twice")
    return frame


def _columns_read_by(definition: str, frame: pd.DataFrame) -> list:
    """The columns a label expression names (bare or in backticks; string literals skipped)."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", " ", definition)
    names = set(re.findall(r"`([^`]*)`", text)) | set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    return [c for c in frame.columns if c in names]


def label_values(frame: pd.DataFrame, name: str, definition: str, source: str) -> np.ndarray:
    """0/1 values of one task: a 0/1 column, or a boolean expression over the columns (none of them missing)."""
    if definition in frame.columns:
        column = frame[definition]
        missing = int(column.isna().sum())
        if missing:
            raise MoezooError(f"{source}: label column {definition!r} has {missing} missing values")
        try:
            values = pd.to_numeric(column, errors="coerce")
        except (TypeError, ValueError):  # values pandas cannot even try (lists, dicts)
            values = pd.Series(np.nan, index=column.index)
        bad = values.isna() | ~values.isin([0, 1])
        if bad.any():
            seen = ", ".join(sorted({repr(v) for v in column[bad].unique()[:50].tolist()})[:8])
            raise MoezooError(f"{source}: label column {definition!r} must hold 0/1, found {int(bad.sum())} other "
                              f"values: {seen}")
        return values.to_numpy(dtype=np.float32)
    for column in _columns_read_by(definition, frame):
        missing = int(frame[column].isna().sum())
        if missing:
            raise MoezooError(f"{source}: label {name!r} = {definition!r} reads column {column!r}, which has "
                              f"{missing} missing values")
    try:
        result = frame.eval(definition)
    except Exception as error:
        columns = ", ".join(map(repr, list(frame.columns)[:12]))
        raise MoezooError(f"{source}: label {name!r} = {definition!r} is neither a column nor an expression over "
                          f"the columns ({one_line(error)}); columns: {columns}, ...") from None
    if not isinstance(result, pd.Series) or result.dtype != bool:
        raise MoezooError(f"{source}: label {name!r} = {definition!r} must be a 0/1 column or a boolean expression")
    return result.to_numpy(dtype=np.float32)


def task_name(definition: str) -> str:
    """A task's name from its label definition: the column itself, or a slug of the expression."""
    slug = "".join(ch if ch.isalnum() else "_" for ch in definition.replace(">", "gt").replace("<", "lt"))
    return "_".join(part for part in slug.split("_") if part) or "task"


def split_indices(rows: int, val_fraction: float, test_fraction: float, seed: int, has_test: bool,
                  source: str) -> dict[str, np.ndarray]:
    """Seeded train/val[/test] row numbers, each sorted; a split with a positive fraction gets at least one row.
    (``moezoo prepare`` splits by it too: a file both paths can read gets the same rows in each split.)"""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1):
        raise MoezooError(f"data: val_fraction={val_fraction} and test_fraction={test_fraction} must each be in "
                          "[0, 1)")

    def size(fraction: float) -> int:
        return max(1, int(round(fraction * rows))) if fraction > 0 else 0

    order = np.random.default_rng(seed).permutation(rows)
    num_test = 0 if has_test else size(test_fraction)
    num_val = size(val_fraction)
    if rows - num_test - num_val <= 0:
        fractions = f"val_fraction={val_fraction}" + ("" if has_test else f", test_fraction={test_fraction}")
        raise MoezooError(f"{source}: {rows} rows cannot be split into non-empty train/val"
                          f"{'' if has_test else '/test'} splits ({fractions}): they leave no training rows; "
                          f"give at least {1 + (num_val > 0) + (num_test > 0)} rows or smaller fractions")
    parts = {"val": order[num_test:num_test + num_val], "train": order[num_test + num_val:]}
    if not has_test:
        parts["test"] = order[:num_test]
    return {k: np.sort(v) for k, v in parts.items()}


def encoders_from_state(state: dict) -> Encoders:
    """The ``Encoders`` of a ``CTRData.state_dict()`` (a checkpoint's, a hub folder's or a prepared directory's)."""
    stats = {column: tuple(np.asarray(v, dtype=np.float64) if isinstance(v, list) else v for v in values)
             for column, values in state["numeric_stats"].items()}
    return Encoders(spec=dict(state["spec"]), task_names=list(state["task_names"]),
                    vocab={column: dict(values) for column, values in state["vocab"].items()}, numeric_stats=stats,
                    hash_buckets=state["hash_buckets"], domain_names=list(state["domain_names"]))


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
        shuffle_buffer: rows of a prepared directory's shuffle buffer (per DataLoader worker).
        numeric_bins: how the bin edges of the numeric fields for the model's piecewise-linear embeddings are fitted
            on the training split: ``tree`` (target-aware, a decision tree per task), ``quantile``, or null (the
            default: nothing is fitted, and a model with ``numeric_embedding: piecewise`` refuses to build with a
            one-line error saying so). See ``numeric.py``.
        num_numeric_bins: at most this many bins per numeric field.
        bin_tree_min_samples_leaf, bin_tree_min_impurity_decrease: the stopping rules of the ``tree`` bins' trees
            (scikit-learn's ``DecisionTreeClassifier`` arguments; ``numeric.TREE_KWARGS``): smaller values give more
            edges, up to ``num_numeric_bins`` per task.
    """

    model_links = {"field_cardinalities": "cardinalities", "num_numeric": "num_numeric", "tasks": "tasks",
                   "domains": "domains", "user_column": "has_user", "numeric_bin_edges": "numeric_bins"}

    monitor = "val/auc"
    has_test = True

    def __init__(self, path: str | None = None, preset: str | None = None, labels: list[str] | None = None,
                 categorical: list[str] | None = None, numeric: list[str] | None = None, domain: str | None = None,
                 user: str | None = None, test_path: str | None = None, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, split_seed: int = 0, min_count: int = 1, hash_buckets: int | None = None,
                 numeric_transform: Literal["standard", "log", "bucketize"] | None = None, num_buckets: int = 16,
                 batch_size: int = 1024, num_workers: int = 0, num_samples: int = 100_000, num_domains: int = 3,
                 shuffle_buffer: int = 262_144, numeric_bins: Literal["tree", "quantile"] | None = None,
                 num_numeric_bins: int = 48, bin_tree_min_samples_leaf: int = TREE_KWARGS["min_samples_leaf"],
                 bin_tree_min_impurity_decrease: float = TREE_KWARGS["min_impurity_decrease"]):
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
        self.shuffle_buffer = shuffle_buffer
        self.numeric_bins, self.num_numeric_bins = numeric_bins, num_numeric_bins
        self.bin_tree_rules = {"min_samples_leaf": bin_tree_min_samples_leaf,
                               "min_impurity_decrease": bin_tree_min_impurity_decrease}
        self._bin_edges: list[list[float]] | None = None
        self.splits: dict[str, _Rows | StreamedRows] | None = None

    # -- reading ------------------------------------------------------------------------------------------------
    def _load(self) -> tuple[pd.DataFrame, pd.DataFrame | None, dict, str]:
        """(frame, test frame or None, spec, source name)."""
        if self.path is None:
            frame, _ = synthetic.generate(self.num_samples, self.num_domains_arg, seed=self.split_seed)
            spec = {"labels": {"click": "click", "purchase": "purchase"}, "categorical": list(synthetic.CATEGORICAL),
                    "numeric": list(synthetic.NUMERIC), "domain": "domain", "transform": "standard"}
            return frame, None, self._override(frame, spec), "the embedded generator"
        read, layout, preset = self._reader()
        frame = read_file(read, self.path, "data.path", layout)
        test_path = self._test_file(preset)
        test = None
        if test_path is not None:
            test = read_file(read, test_path, "data.test_path", layout)
        if preset:
            check_label_values(preset, frame, str(self.path))
            if test is not None:
                check_label_values(preset, test, str(test_path))
        self._test_source = str(test_path)
        return frame, test, self._spec_for(frame, preset), str(self.path)

    def _reader(self) -> tuple:
        """(reader of a file, its layout's name, the preset or None) for ``path``."""
        preset: Preset | None = None
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise MoezooError(f"data.preset: unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
            preset = PRESETS[self.preset]
        elif not self.labels_arg:
            raise MoezooError("data: give --data.preset NAME or the labels (--data.labels '[column, ...]') of the "
                              f"tasks in {self.path}")
        read, layout = (preset.read, self.preset) if preset else (read_table, "CSV/Parquet")
        return read, layout, preset

    def _test_file(self, preset: Preset | None) -> Path | None:
        return self.test_path or (preset.test_file(self.path) if preset else None)

    def _spec_for(self, frame: pd.DataFrame, preset: Preset | None) -> dict:
        """The spec (labels, fields, domain, user, transform) of a frame of the data: the preset's, overridden."""
        spec = {"labels": {}, "categorical": [], "numeric": [], "domain": None, "transform": "standard"}
        if preset:
            spec = {"labels": resolve_labels(preset, frame), "categorical": resolve_fields(preset.categorical, frame),
                    "numeric": resolve_fields(preset.numeric, frame), "domain": preset.domain,
                    "transform": preset.numeric_transform}
        return self._override(frame, spec)

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
                some = ", ".join(map(repr, list(frame.columns)[:10]))
                raise MoezooError(f"{source}: no column {column!r} (the file has {some}, ...)")

    # -- encoding -----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        if self.path is not None and self.path.is_dir():
            self._setup_prepared()
            return
        frame, test, spec, source = self._load()
        self._check_spec(frame, spec, source)
        parts = self._split(len(frame), test is not None, source)
        labels = {name: label_values(frame, name, d, source) for name, d in spec["labels"].items()}
        for name, values in labels.items():
            if values.min() == values.max():
                raise MoezooError(f"{source}: label {name!r} is {int(values[0])} in all {len(values)} rows; a task "
                                  "needs rows of both classes")
        frames = {k: frame.iloc[rows].reset_index(drop=True) for k, rows in parts.items()}
        label_parts = {k: {n: v[rows] for n, v in labels.items()} for k, rows in parts.items()}
        if test is not None:
            test_source = self._test_source
            self._check_spec(test, spec, test_source)
            frames["test"] = test.reset_index(drop=True)
            label_parts["test"] = {n: label_values(test, n, d, test_source) for n, d in spec["labels"].items()}
        self.task_names = list(spec["labels"])
        self._spec = {key: value for key, value in spec.items() if key != "labels"}
        sources = {"train": source, "val": source, "test": self._test_source if test is not None else source}
        self._fit(frames["train"], spec, source)
        self.splits = {k: _Rows(self._encode(f, label_parts[k], spec, k, sources[k])) for k, f in frames.items()}

    def _split(self, rows: int, has_test: bool, source: str) -> dict[str, np.ndarray]:
        return split_indices(rows, self.val_fraction, self.test_fraction, self.split_seed, has_test, source)

    # the demo reads raw values as the encoders do
    _strings, _numeric = staticmethod(categorical_strings), staticmethod(numeric_values)

    def _fit(self, train: pd.DataFrame, spec: dict, source: str) -> None:
        """Vocabularies, numeric statistics or bucket edges, and domain ids, from the training split."""
        fit = EncoderFit(spec, self.min_count, self.hash_buckets, self.num_buckets, source, seed=self.split_seed)
        fit.update(train)
        self._adopt(fit.finish(self.task_names))

    def _adopt(self, encoders: Encoders) -> None:
        """Takes fitted encoders (from ``_fit``, ``load_state_dict`` or a prepared directory)."""
        self.encoders = encoders
        self._spec = dict(encoders.spec)
        self.vocab, self.numeric_stats, self.hash_buckets = encoders.vocab, encoders.numeric_stats, \
            encoders.hash_buckets
        self.domain_names, self.task_names = list(encoders.domain_names), list(encoders.task_names)
        self.categorical_names, self.numeric_names = encoders.categorical_names, encoders.numeric_names
        self.cardinalities, self.has_user = encoders.cardinalities, encoders.has_user

    def _encode(self, frame: pd.DataFrame, labels: dict, spec: dict, split: str,
                source: str) -> dict[str, torch.Tensor]:
        return self.encoders.encode(frame, labels, split, source, with_user=bool(spec.get("user")))

    # -- a directory of `moezoo prepare` -------------------------------------------------------------------------
    def prepare(self, to: str | Path) -> dict:
        """Converts ``path`` (and its test file) into Parquet shards and fitted encoders in ``to``, in bounded
        memory (``prepare.py``); ``CTRData(path=to, <the same options>)`` then streams them. Returns the marker."""
        from .prepare import prepare

        return prepare(self, Path(to))

    def _setup_prepared(self) -> None:
        from .prepare import OPTIONS, options_of

        info = stream.read_marker(self.path)
        given = options_of(self)
        for key in OPTIONS:
            if info["options"].get(key) != given[key]:
                raise MoezooError(f"data.path {self.path}: prepared with data.{key}={info['options'].get(key)!r}, "
                                  f"this run has {given[key]!r}; give the options `moezoo prepare` had (see "
                                  f"{self.path / stream.MARKER}) or prepare again")
        state_file = self.path / stream.STATE
        try:
            state = json.loads(state_file.read_text())
            encoders = encoders_from_state(state)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise MoezooError(f"{state_file}: not readable fitted encoders ({one_line(error)}); prepare again") \
                from None
        self._adopt(encoders)
        self.splits = {}
        for split in stream.SPLITS:
            groups = stream.split_row_groups(self.path, info, split)
            if groups or split != "test":
                self.splits[split] = StreamedRows(groups, encoders, self.batch_size, self.shuffle_buffer,
                                                  seed=self.split_seed, source=str(self.path), split=split)

    def _current_epoch(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else trainer.current_epoch

    # -- the fitted encoders, saved with the weights -----------------------------------------------------------
    STATE_FORMAT = 1

    def state_dict(self) -> dict:
        """What was fitted on the training split (the columns, vocabularies, numeric statistics or bucket edges,
        domains, tasks), as plain Python values: Lightning writes it into every checkpoint (a stateful data module),
        ``moezoo export`` into the hub folder (``data.json``), so a row can be encoded later without the data."""
        if not hasattr(self, "vocab"):  # nothing fitted yet (neither setup nor load_state_dict)
            return {}
        return {
            "moezoo_data": self.STATE_FORMAT, "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "source": "generator" if self.path is None else str(self.path), "spec": dict(self._spec),
            "vocab": {column: dict(values) for column, values in self.vocab.items()},
            "numeric_stats": {column: [np.asarray(v).tolist() if np.ndim(v) else float(v) for v in stats]
                              for column, stats in self.numeric_stats.items()},
            "hash_buckets": self.hash_buckets, "domain_names": list(self.domain_names),
            "task_names": list(self.task_names), "categorical_names": list(self.categorical_names),
            "numeric_names": list(self.numeric_names), "cardinalities": list(self.cardinalities),
            "has_user": bool(self.has_user),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores the fitted encoders of ``state_dict`` (a checkpoint's or a hub folder's ``data.json``): then
        ``encode_rows`` reads raw rows as training did, with no data file. A later ``setup`` fits them again from the
        data (Lightning calls this when a run resumes; the same data refits the same encoders)."""
        if not isinstance(state, dict) or state.get("moezoo_data") != self.STATE_FORMAT:
            raise MoezooError(f"data state: not a CTRData state of format {self.STATE_FORMAT} (keys: "
                              f"{', '.join(sorted(state)[:8]) if isinstance(state, dict) else type(state).__name__})")
        self._adopt(encoders_from_state(state))

    @property
    def spec(self) -> dict:
        """The fitted columns: ``categorical``, ``numeric``, ``domain``, ``user`` and the numeric ``transform``."""
        if not hasattr(self, "_spec"):
            raise MoezooError("CTRData.spec: no fitted encoders: call setup() or load_state_dict(state)")
        return dict(self._spec)

    def raw_test_rows(self) -> pd.DataFrame:
        """The rows of the test split as the data holds them (before encoding), in the order of the encoded split.
        Reads the data again (the splits keep only the encoded tensors)."""
        if self.path is not None and self.path.is_dir():
            self.setup()
            import pyarrow.parquet as pq

            files = self.splits["test" if "test" in self.splits else "val"].groups
            frame = pd.concat([pq.ParquetFile(g.path).read_row_group(g.index).to_pandas() for g in files])
            return frame.drop(columns=[c for c in frame.columns if c.startswith(stream.LABEL_PREFIX)]) \
                .reset_index(drop=True)
        frame, test, _, source = self._load()
        if test is None:
            test = frame.iloc[self._split(len(frame), False, source)["test"]]
        return test.reset_index(drop=True)

    def encode_rows(self, frame: pd.DataFrame) -> dict[str, torch.Tensor]:
        """Raw rows (the data's columns, as in its file) -> a batch as the model reads it, by the fitted encoders
        (after ``setup`` or ``load_state_dict``); the labels are not read (zeros)."""
        if not hasattr(self, "vocab"):
            raise MoezooError("CTRData.encode_rows: no fitted encoders: call setup() or load_state_dict(state)")
        labels = {task: np.zeros(len(frame), dtype=np.float32) for task in self.task_names}
        spec = {**self._spec, "user": None}  # the user column only serves GAUC: not a model input
        batch = self._encode(frame, labels, spec, "rows", "the rows")
        batch.pop("labels")
        return batch

    # -- what the models read -----------------------------------------------------------------------------------
    # linked to the model's arguments by the CLI (the class's ``model_links``)
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

    BIN_ROWS = 1_000_000  # the training rows the numeric bins are fitted on, at most

    @property
    def numeric_bin_edges(self) -> list[list[float]] | None:
        """Bin edges per numeric field (``numeric.fit_bins`` on the encoded training rows, at most ``BIN_ROWS`` of
        them: a seeded sample in memory, the first ones of a prepared directory, read whole by every process so
        that all fit the same edges), or None with ``numeric_bins: null`` or no numeric field."""
        self.setup()
        if self.numeric_bins is None or not self.numeric_names:
            return None
        if self._bin_edges is None:
            train = self.splits["train"]
            if isinstance(train, _Rows):
                values, labels = train.tensors["numeric"], train.tensors["labels"]
            else:
                parts, rows = [], 0
                for batch in train.with_options(shuffle=False, train=False, batch_size=65_536, num_workers=0,
                                                 ranks=(0, 1)):
                    parts.append((batch["numeric"], batch["labels"]))
                    rows += len(batch["labels"])
                    if rows >= self.BIN_ROWS:
                        break
                values, labels = (torch.cat(column) for column in zip(*parts))
            self._bin_edges = fit_bins(values, labels, self.num_numeric_bins, self.numeric_bins, self.BIN_ROWS,
                                       seed=self.split_seed, **self.bin_tree_rules)
        return self._bin_edges

    def make_loader(self, rows: _Rows | StreamedRows, shuffle: bool) -> DataLoader:
        """Batches of ``batch_size`` rows, each gathered by one indexing of the row tensors (in memory), or read
        from a prepared directory's row groups (``stream.py``: split over ranks and workers)."""
        if isinstance(rows, StreamedRows):
            rows = rows.with_options(shuffle=shuffle, train=shuffle, batch_size=self.batch_size,
                                     num_workers=self.num_workers)
            return EpochLoader(rows, self._current_epoch, num_workers=self.num_workers)
        sampler = RandomSampler(rows) if shuffle else SequentialSampler(rows)
        return DataLoader(rows, batch_size=None, sampler=BatchSampler(sampler, self.batch_size, drop_last=False),
                          num_workers=self.num_workers)
