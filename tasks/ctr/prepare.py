"""``moezoo prepare --task ctr/... --data.path FILE --to DIR``: a CTR file too large for memory as Parquet shards with
its fitted encoders, which ``CTRData(path=DIR)`` streams (``stream.py``).

Two passes, each in bounded memory:

1. The source is read in chunks of ``CHUNK_ROWS`` lines. A CSV / TSV (gzipped or not) chunk is handed to the
   preset's own reader (or ``read_table``) as a small file, so its layout rules (header or not, separators, missing
   markers, derived columns) are the in-memory path's; a header line (detected as the line whose removal changes the
   reader's columns) is repeated for every chunk. A Parquet source is read by ``pyarrow.dataset`` in record batches.
   Each chunk is checked (columns, label values, numbers) and its spec columns and 0/1 labels are written to a
   staging Parquet file; the rows are counted.
2. The rows are split train/val/test by ``data.split_indices`` over the count: the in-memory path's seeded
   permutation, so a source small enough for both gives the *same* rows in each split (in file order). It holds
   one byte per row (the split of each row) after a moment of nine (the permutation): 45M Criteo rows, 405 MB at
   the peak. The staging rows are then read again in chunks, the encoders fitted on the training ones
   (``encoders.EncoderFit``: one ``update`` per chunk) and every row written to its split's shards.

Shards: ``<split>/part-NNNNN.parquet`` of at most ``FILE_ROWS`` rows in row groups of ``ROW_GROUP_ROWS`` rows (the
unit a DataLoader worker reads; 64K rows of Criteo's 40 columns is about 20 MB as pandas). Then ``data.json`` (the
encoders, ``CTRData.state_dict()``) and last the marker ``prepared.json``, so an interrupted run leaves a directory
that is refused, not half-read. A quoted CSV field that spans lines is not supported (no preset's set has one).
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from moezoo.errors import MoezooError

from .encoders import MISSING, EncoderFit, categorical_strings, numeric_values, one_line
from .stream import FORMAT, LABEL_PREFIX, MARKER, SPLITS, STATE

CHUNK_ROWS = 100_000
ROW_GROUP_ROWS = 65_536
FILE_ROWS = 1_048_576
# the options that decide the shards or the encoders: a prepared directory is used only with the same values
OPTIONS = ("preset", "labels", "categorical", "numeric", "domain", "user", "val_fraction", "test_fraction",
           "split_seed", "min_count", "hash_buckets", "numeric_transform", "num_buckets")


def options_of(data) -> dict:
    return {"preset": data.preset, "labels": data.labels_arg, "categorical": data.categorical_arg,
            "numeric": data.numeric_arg, "domain": data.domain_arg, "user": data.user_arg,
            "val_fraction": data.val_fraction, "test_fraction": data.test_fraction, "split_seed": data.split_seed,
            "min_count": data.min_count, "hash_buckets": data.hash_buckets,
            "numeric_transform": data.numeric_transform_arg, "num_buckets": data.num_buckets}


def _is_parquet(path: Path) -> bool:
    return path.suffix == ".parquet"


def _text_chunks(path: Path) -> Iterator[tuple[int, list[bytes]]]:
    """(number of the chunk's first line, its lines) of a text file, ``CHUNK_ROWS`` lines at a time."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        line = 1
        while True:
            lines = f.readlines(1 << 24)  # about 16 MB of text, then cut at CHUNK_ROWS lines
            if not lines:
                return
            for at in range(0, len(lines), CHUNK_ROWS):
                part = lines[at:at + CHUNK_ROWS]
                yield line, part
                line += len(part)


def source_chunks(read, path: Path, key: str, layout: str, scratch: Path) -> Iterator[pd.DataFrame]:
    """The rows of ``path`` as DataFrames of at most about ``CHUNK_ROWS`` rows, read as the in-memory path reads
    the whole file; errors name ``path`` (and the line a chunk starts at)."""
    from .data import read_file

    if not path.is_file():
        raise MoezooError(f"{key}: no such file: {path}")
    if _is_parquet(path):
        try:
            batches = ds.dataset(path, format="parquet").to_batches(batch_size=CHUNK_ROWS)
            for batch in batches:
                yield batch.to_pandas()
        except Exception as error:  # pyarrow's many kinds for a damaged or foreign file
            raise MoezooError(f"{path}: cannot read it as Parquet data ({one_line(error)})") from None
        return
    piece = scratch / ("chunk" + "".join(s for s in path.suffixes if s not in (".gz",)))
    header: bytes | None = None
    for number, lines in _text_chunks(path):
        if number > 1 and not b"".join(lines).strip():
            continue  # trailing blank lines
        if number == 1:
            header = _header_line(read, lines, piece, key, layout)
        elif header is not None:
            lines = [header, *lines]
        piece.write_bytes(b"".join(lines))
        try:
            frame = read_file(read, piece, key, layout)
        except MoezooError as error:
            raise MoezooError(str(error).replace(str(piece), f"{path} (the chunk from line {number})")) from None
        yield frame


def _header_line(read, lines: list[bytes], piece: Path, key: str, layout: str) -> bytes | None:
    """The first line when it is a header (or any line the reader skips at the top, as adult.test's): the line
    whose removal changes the columns the reader gives."""
    from .data import read_file

    if len(lines) < 3:
        return None
    piece.write_bytes(b"".join(lines[:200]))
    try:
        with_first = list(read_file(read, piece, key, layout).columns)
        piece.write_bytes(b"".join(lines[1:200]))
        without_first = list(read_file(read, piece, key, layout).columns)
    except MoezooError:
        return None  # the chunk's own reading reports it, naming the source
    return lines[0] if with_first != without_first else None


def _staging_frame(data, frame: pd.DataFrame, spec: dict, source: str) -> pd.DataFrame:
    """The spec's columns of a checked chunk (categorical text, raw numbers) and its labels."""
    from .data import label_values

    columns = {}
    for column in [*spec["categorical"], *(c for c in (spec["domain"], spec["user"]) if c)]:
        strings = categorical_strings(frame[column])
        columns[column] = strings.mask(strings == MISSING)
    for column in spec["numeric"]:
        columns[column] = numeric_values(frame[column], column, "standard", source)
    for task, definition in spec["labels"].items():
        columns[LABEL_PREFIX + task] = label_values(frame, task, definition, source)
    return pd.DataFrame(columns)


def _schema(spec: dict) -> pa.Schema:
    text = [*spec["categorical"], *(c for c in (spec["domain"], spec["user"]) if c)]
    return pa.schema([*((c, pa.string()) for c in text), *((c, pa.float64()) for c in spec["numeric"]),
                      *((LABEL_PREFIX + t, pa.float32()) for t in spec["labels"])])


class _ShardWriter:
    """One split's shards: row groups of ``ROW_GROUP_ROWS`` rows, a new file every ``FILE_ROWS`` rows."""

    def __init__(self, root: Path, split: str, schema: pa.Schema):
        self.root, self.split, self.schema = root, split, schema
        self.pending: list[pa.Table] = []
        self.pending_rows = self.file_rows = self.rows = 0
        self.writer: pq.ParquetWriter | None = None
        self.files: list[str] = []

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self.pending)
        if self.writer is None or self.file_rows >= FILE_ROWS:
            if self.writer is not None:
                self.writer.close()
            name = f"{self.split}/part-{len(self.files):05d}.parquet"
            (self.root / self.split).mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.root / name, self.schema)
            self.files.append(name)
            self.file_rows = 0
        self.writer.write_table(table.slice(0, rows), row_group_size=rows)
        self.file_rows += rows
        self.rows += rows
        rest = table.slice(rows)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)
        if self.writer is not None:
            self.writer.close()


def _stage(data, read, path: Path, key: str, layout: str, preset, spec: dict | None, staging: Path,
           scratch: Path, labels_seen: dict) -> tuple[dict, int]:
    """Pass 1 over one source file: checked chunks -> ``staging`` (Parquet); (the spec, the row count)."""
    from .presets import check_label_values

    writer, rows = None, 0
    try:
        for frame in source_chunks(read, path, key, layout, scratch):
            if spec is None:
                spec = data._spec_for(frame, preset)
            data._check_spec(frame, spec, str(path))
            if preset is not None:
                check_label_values(preset, frame, str(path))
            table = pa.Table.from_pandas(_staging_frame(data, frame, spec, str(path)), schema=_schema(spec),
                                         preserve_index=False)
            for task in spec["labels"]:
                values = table.column(LABEL_PREFIX + task).to_numpy()
                seen = labels_seen.setdefault(task, set())
                seen.update(np.unique(values).tolist())
            if writer is None:
                writer = pq.ParquetWriter(staging, table.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    if rows == 0:
        raise MoezooError(f"{path}: the file has no data rows")
    return spec, rows


def _staged_chunks(staging: Path) -> Iterator[pa.Table]:
    for batch in pq.ParquetFile(staging).iter_batches(batch_size=CHUNK_ROWS):
        yield pa.Table.from_batches([batch])


def prepare(data, to: Path) -> dict:
    """Converts ``data``'s source (``data.path``, and its test file) into ``to``; returns the marker written."""
    from .data import split_indices

    if data.path is None:
        raise MoezooError("prepare: give the data file to convert, --data.path FILE (the embedded generator needs "
                          "no preparation)")
    if data.path.is_dir():
        raise MoezooError(f"data.path: {data.path} is a directory; give the data file to convert")
    to = Path(to).expanduser()
    if to.exists() and (not to.is_dir() or (any(to.iterdir()) and not (to / MARKER).is_file())):
        raise MoezooError(f"--to {to}: exists and is not an empty directory or one `moezoo prepare` wrote")
    if to.resolve() == data.path.resolve().parent:
        raise MoezooError(f"--to {to}: is the directory of the source file; give a directory of its own")
    read, layout, preset = data._reader()
    test_path = data._test_file(preset)
    to.mkdir(parents=True, exist_ok=True)
    for old in [to / MARKER, to / STATE, *(to / s for s in SPLITS)]:
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    with tempfile.TemporaryDirectory(dir=to, prefix=".staging-") as tmp:
        scratch = Path(tmp)
        labels_seen: dict[str, set] = {}
        spec, rows = _stage(data, read, data.path, "data.path", layout, preset, None, scratch / "rows.parquet",
                            scratch, labels_seen)
        for task, seen in labels_seen.items():
            if len(seen) < 2:
                raise MoezooError(f"{data.path}: label {task!r} is {int(next(iter(seen)))} in all {rows} rows; a "
                                  "task needs rows of both classes")
        test_rows = 0
        if test_path is not None:
            _, test_rows = _stage(data, read, test_path, "data.test_path", layout, preset, spec,
                                  scratch / "test.parquet", scratch, {})
        parts = split_indices(rows, data.val_fraction, data.test_fraction, data.split_seed, test_path is not None,
                              str(data.path))
        membership = np.zeros(rows, dtype=np.int8)  # 0 train, 1 val, 2 test
        membership[parts["val"]] = 1
        if "test" in parts:
            membership[parts["test"]] = 2
        del parts
        data.task_names = list(spec["labels"])
        schema = _schema(spec)
        writers = {s: _ShardWriter(to, s, schema) for s in SPLITS}
        fit = EncoderFit(spec, data.min_count, data.hash_buckets, data.num_buckets, str(data.path),
                         seed=data.split_seed)
        other_domains: dict[str, set] = {"val": set(), "test": set()}
        offset = 0
        for table in _staged_chunks(scratch / "rows.parquet"):
            where = membership[offset:offset + table.num_rows]
            offset += table.num_rows
            for code, split in enumerate(SPLITS):
                if not (where == code).any():
                    continue
                part = table.filter(pa.array(where == code))
                writers[split].write(part)
                if split == "train":
                    fit.update(part.to_pandas())
                elif spec["domain"]:
                    other_domains[split].update(categorical_strings(
                        part.column(spec["domain"]).to_pandas()).unique().tolist())
        if test_path is not None:
            for table in _staged_chunks(scratch / "test.parquet"):
                writers["test"].write(table)
                if spec["domain"]:
                    other_domains["test"].update(categorical_strings(
                        table.column(spec["domain"]).to_pandas()).unique().tolist())
        for writer in writers.values():
            writer.close()
    encoders = fit.finish(data.task_names)
    for split, seen in other_domains.items():
        unknown = sorted(seen - set(encoders.domain_names)) if spec["domain"] else []
        if unknown:
            source = test_path if split == "test" and test_path is not None else data.path
            raise MoezooError(f"{source}: the {split} split has domain {unknown[0]!r}, which the training split "
                              f"does not have ({', '.join(map(repr, encoders.domain_names[:10]))})")
    data._adopt(encoders)
    (to / STATE).write_text(json.dumps(data.state_dict()) + "\n")
    marker = {"moezoo_prepared": FORMAT, "source": str(data.path),
              "test_source": None if test_path is None else str(test_path), "options": options_of(data),
              "rows": {s: w.rows for s, w in writers.items()}, "files": {s: w.files for s, w in writers.items()},
              "columns": schema.names, "row_group_rows": ROW_GROUP_ROWS, "test_rows_from_test_file": test_rows}
    (to / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    return marker
