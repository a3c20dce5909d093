"""Prepared CTR data streamed from Parquet row groups: split over DDP ranks and DataLoader workers, shuffled.

A directory written by ``moezoo prepare`` (``prepare.py``) holds ``prepared.json`` (the marker: options, rows,
shards), ``data.json`` (the fitted encoders, ``CTRData.state_dict()``'s format) and ``train/``, ``val/``, ``test/``
Parquet shards of the raw columns. ``StreamedRows`` reads one split:

- Per epoch, the row groups are put in a seeded order (``seed``, epoch; the same on every rank), which makes one
  virtual sequence of the split's rows. Rank r of W takes the r-th contiguous share of it, and worker k of K the
  k-th contiguous part of its rank's share. Training drops the last ``rows mod W`` rows of the epoch's sequence (so
  every rank has the same number of rows, hence of batches, and DDP's gradient all-reduce cannot wait on a rank that
  ran out; the order changes per epoch, so no row is always dropped); evaluation instead pads, as Lightning's
  ``DistributedSampler`` does, with up to W - 1 rows from the sequence's start, so no row is missed.
- Rows pass through a shuffle buffer of ``buffer_rows`` encoded rows (seeded per epoch, rank and worker): when it
  is full it is permuted and its full batches leave; what is left (< ``batch_size`` rows) mixes into the next fill.
- Batches are encoded by the same ``Encoders.encode`` as the in-memory path, in the same dict layout.

Lightning calls ``set_epoch`` only on samplers, and a DataLoader over an IterableDataset has none of its own:
``EpochLoader`` sets the dataset's epoch in ``__iter__`` (the main process, before the workers start) from a
callable the data module gives (its trainer's ``current_epoch``), so a resumed run continues the seeds' sequence.
Workers are never persistent: each epoch's workers get the dataset with that epoch.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from moezoo.errors import MoezooError

from .encoders import Encoders, one_line

MARKER = "prepared.json"
STATE = "data.json"
FORMAT = 1
LABEL_PREFIX = "__label__"  # the shards' label columns: __label__<task>, 0/1 float32
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group of a split: its file, index in the file and row count (from the footer)."""

    path: str
    index: int
    rows: int


def read_marker(directory: Path) -> dict:
    """The ``prepared.json`` of a prepared directory, checked; one-line errors name the file."""
    marker = directory / MARKER
    if not marker.is_file():
        raise MoezooError(f"data.path: {directory} is a directory without {MARKER}; give a data file, or a "
                          "directory that `moezoo prepare --to DIR` wrote")
    try:
        info = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MoezooError(f"{marker}: not a readable {MARKER} ({one_line(error)}); prepare again") from None
    if not isinstance(info, dict) or info.get("moezoo_prepared") != FORMAT:
        raise MoezooError(f"{marker}: not a moezoo prepared-data marker of format {FORMAT}; prepare again")
    for key in ("options", "rows", "files", "columns"):
        if key not in info:
            raise MoezooError(f"{marker}: no {key!r} entry; prepare again")
    return info


def split_row_groups(directory: Path, info: dict, split: str) -> list[RowGroup]:
    """The row groups of one split from its shards' footers, checked against the marker (the files, their
    columns and the row count): a damaged, foreign or missing shard is a one-line error naming it."""
    groups, columns = [], info["columns"]
    for name in info["files"].get(split, []):
        path = directory / name
        if not path.is_file():
            raise MoezooError(f"{path}: shard listed in {directory / MARKER} is missing; prepare again")
        try:
            meta = pq.ParquetFile(path).metadata
            names = meta.schema.to_arrow_schema().names
        except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
            raise MoezooError(f"{path}: not a readable Parquet file ({one_line(error)}); prepare again") from None
        if names != columns:
            raise MoezooError(f"{path}: its columns ({', '.join(names[:6])}, ...) are not the prepared ones "
                              f"({', '.join(columns[:6])}, ...): a file from elsewhere; prepare again")
        groups += [RowGroup(str(path), i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    rows = sum(g.rows for g in groups)
    if rows != info["rows"].get(split, 0):
        raise MoezooError(f"{directory}: the {split} shards hold {rows} rows, {MARKER} says "
                          f"{info['rows'].get(split, 0)}; prepare again")
    return groups


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without an initialised process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class StreamedRows(IterableDataset):
    """Batches of one prepared split, read row group by row group (see the module docstring).

    Args:
        groups: the split's row groups.
        encoders: the fitted encoders; ``tasks``: the label columns' tasks, in the encoders' order.
        batch_size, buffer_rows: rows per batch and of the shuffle buffer.
        shuffle: a seeded order of row groups and rows per epoch; train: equal rows per rank by dropping (else
            padding, for evaluation).
        num_workers: the DataLoader's workers (for ``len``: the batches of this rank).
        source: the directory, for errors.
    """

    def __init__(self, groups: list[RowGroup], encoders: Encoders, batch_size: int, buffer_rows: int,
                 shuffle: bool = False, train: bool = False, seed: int = 0, num_workers: int = 0,
                 source: str = "prepared data", split: str = "train"):
        self.groups, self.encoders, self.batch_size, self.buffer_rows = groups, encoders, batch_size, buffer_rows
        self.shuffle, self.train, self.seed, self.num_workers = shuffle, train, seed, num_workers
        self.source, self.split = source, split
        self.epoch = 0
        self.ranks: tuple[int, int] | None = None  # (rank, world) for a caller without torch.distributed
        self.rows = sum(g.rows for g in groups)

    def with_options(self, **options) -> StreamedRows:
        """A copy with some options changed (the same split read shuffled, or by another loader)."""
        other = copy.copy(self)
        for key, value in options.items():
            setattr(other, key, value)
        return other

    # -- who reads what -----------------------------------------------------------------------------------------
    def _rank_span(self, rank: int, world: int) -> tuple[int, int]:
        """Rows [start, stop) of the epoch's virtual sequence for this rank (stop may pass the end: padding)."""
        share = self.rows // world if self.train else math.ceil(self.rows / world)
        return rank * share, (rank + 1) * share

    def _worker_spans(self, rank: int, world: int, workers: int) -> list[tuple[int, int]]:
        start, stop = self._rank_span(rank, world)
        edges = np.linspace(start, stop, workers + 1).round().astype(int)
        return list(zip(edges[:-1].tolist(), edges[1:].tolist()))

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        rank, world = self.ranks or rank_and_world()
        spans = self._worker_spans(rank, world, max(1, self.num_workers))
        return sum(math.ceil((stop - start) / self.batch_size) for start, stop in spans)

    def _order(self) -> list[RowGroup]:
        if not self.shuffle:
            return list(self.groups)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.groups))
        return [self.groups[i] for i in order]

    @staticmethod
    def _pieces(order: list[RowGroup], start: int, stop: int, total: int) -> Iterator[tuple[RowGroup, int, int]]:
        """(row group, first, last) slices covering rows [start, stop) of the sequence, wrapping past ``total``."""
        offsets = np.cumsum([0] + [g.rows for g in order])
        position = start
        while position < stop and total:
            at = position % total
            i = int(np.searchsorted(offsets, at, side="right")) - 1
            take = min(offsets[i + 1] - at, stop - position)
            yield order[i], int(at - offsets[i]), int(at - offsets[i] + take)
            position += take

    # -- reading ------------------------------------------------------------------------------------------------
    def _read(self, group: RowGroup, first: int, last: int, files: dict) -> dict[str, torch.Tensor]:
        try:
            if group.path not in files:
                files[group.path] = pq.ParquetFile(group.path)
            table: pa.Table = files[group.path].read_row_group(group.index).slice(first, last - first)
            frame = table.to_pandas()
        except Exception as error:  # a shard damaged after prepare: pyarrow raises many kinds
            raise MoezooError(f"{group.path}: cannot read row group {group.index} ({one_line(error)}); "
                              "prepare again") from None
        tasks = self.encoders.task_names
        labels = {t: frame[LABEL_PREFIX + t].to_numpy(dtype=np.float32) for t in tasks}
        return self.encoders.encode(frame, labels, self.split, f"{group.path}")

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rank, world = self.ranks or rank_and_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        start, stop = self._worker_spans(rank, world, workers)[worker]
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker, 1])
        buffer, buffered, files = [], 0, {}
        for group, first, last in self._pieces(self._order(), start, stop, self.rows):
            buffer.append(self._read(group, first, last, files))
            buffered += last - first
            if buffered >= self.buffer_rows:
                rest = yield from self._drain(buffer, rng, keep_remainder=True)
                buffer, buffered = ([rest], len(rest["labels"])) if rest is not None else ([], 0)
        if buffer:
            yield from self._drain(buffer, rng, keep_remainder=False)

    def _drain(self, buffer: list[dict], rng: np.random.Generator, keep_remainder: bool):
        """Yields the buffer's full batches (permuted when shuffling) and returns the rows left (or yields them)."""
        rows = {key: torch.cat([b[key] for b in buffer]) for key in buffer[0]}
        count = len(rows["labels"])
        if self.shuffle:
            order = torch.from_numpy(rng.permutation(count))
            rows = {key: value[order] for key, value in rows.items()}
        full = count // self.batch_size * self.batch_size
        for at in range(0, full, self.batch_size):
            yield {key: value[at:at + self.batch_size] for key, value in rows.items()}
        if full == count:
            return None
        rest = {key: value[full:] for key, value in rows.items()}
        if keep_remainder:
            return rest
        yield rest
        return None


class EpochLoader(DataLoader):
    """A DataLoader over ``StreamedRows`` that gives the dataset the epoch before each pass (see the docstring)."""

    def __init__(self, dataset: StreamedRows, epoch: Callable[[], int | None], **kwargs):
        super().__init__(dataset, batch_size=None, persistent_workers=False, **kwargs)
        self._epoch = epoch
        self._passes = 0

    def __iter__(self):
        epoch = self._epoch()
        self.dataset.epoch = self._passes if epoch is None else epoch
        self._passes += 1
        return super().__iter__()
