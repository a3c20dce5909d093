"""Generated files in Criteo's layout (``train.txt``: header-less, tab-separated ``label, I1..I13, C1..C26``), of any
size, for the memory tests and ``benchmarks/ctr_data.py``.

Counts ``I*`` are heavy-tailed integers (a geometric draw of a per-field scale, about 20 % missing); categories
``C*`` are 8-digit hex strings drawn by a Zipf-like law from per-field vocabularies of 10 to 100,000 values (about
10 % missing); the label is a logistic function of the fields (about 10 % clicks). numpy draws and pyarrow's CSV
writer write it, chunk by chunk: a few seconds per million rows, in bounded memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

NUMERIC = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
CARDINALITIES = [10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000] * 3


def write_criteo_tsv(path: str | Path, rows: int, seed: int = 0, chunk_rows: int = 250_000) -> Path:
    """Writes ``rows`` generated rows to ``path`` (tab-separated, no header; a ``.gz`` name is gzipped)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    vocabularies = [pa.array([f"{v:08x}" for v in rng.integers(0, 2 ** 32, n)]) for n in CARDINALITIES[:26]]
    weights = rng.normal(0, 0.4, 26)
    names = ["label", *NUMERIC, *CATEGORICAL]
    schema = pa.schema([("label", pa.int8()), *((n, pa.int64()) for n in NUMERIC),
                        *((n, pa.string()) for n in CATEGORICAL)])
    options = pcsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    sink = pa.CompressedOutputStream(str(path), "gzip") if path.suffix == ".gz" else pa.OSFile(str(path), "wb")
    with sink, pcsv.CSVWriter(sink, schema, write_options=options) as writer:
        for start in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - start)
            logit = np.full(n, -1.2)
            columns = {}
            for i, name in enumerate(NUMERIC):
                values = rng.geometric(1 / (2 + 10 * i), n) - 1
                columns[name] = pa.array(values, mask=rng.random(n) < 0.2)
                logit += 0.05 * (np.log1p(values) - np.log1p(2 + 10 * i))
            for i, name in enumerate(CATEGORICAL):
                size = CARDINALITIES[i]
                index = np.minimum(rng.zipf(1.3, n) - 1, size - 1)
                columns[name] = pc.take(vocabularies[i], pa.array(index))
                columns[name] = pc.if_else(pa.array(rng.random(n) < 0.1), pa.scalar(None, pa.string()),
                                           columns[name])
                logit += weights[i] * ((index % 7) - 3) / 3
            label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
            writer.write_table(pa.table({"label": label, **columns}, schema=schema).select(names))
    return path
