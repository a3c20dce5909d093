"""CTR input at scale: the in-memory path against `moezoo prepare` + streaming, on a generated Criteo-format file.

    python benchmarks/ctr_data.py --rows 1000000 [--hash_buckets 100000] [--json out.json]

Writes a header-less Criteo TSV of ``--rows`` rows (``tasks/ctr/criteo_format.py``), then measures, each in a
child process of its own (so that its peak RSS, ``ru_maxrss``, is its own):

- ``memory setup``: ``CTRData(path=FILE).setup()`` (read the whole file, split, fit, encode): rows/s of the file;
- ``memory input``: one pass over its training loader (rows/s of training rows);
- ``prepare``: ``CTRData(path=FILE).prepare(DIR)``: rows/s of the file;
- ``stream input, W workers`` (W = 0, 1, 2): one shuffled pass over the prepared training split.

Input rows/s count encoded training rows delivered as batches (no model), i.e. the ceiling the data puts on training.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(kind: str, path: str, out: str, hash_buckets: int, workers: int, batch_size: int) -> dict:
    from moezoo.tasks.ctr.data import CTRData

    options = {"preset": "criteo", "hash_buckets": hash_buckets, "batch_size": batch_size, "num_workers": workers}
    start = time.perf_counter()
    if kind == "prepare":
        marker = CTRData(path=path, **options).prepare(out)
        rows = sum(marker["rows"].values())
    else:
        data = CTRData(path=path, **options)
        data.setup()
        if kind == "setup":
            rows = sum(len(split) for split in data.splits.values())
        else:
            start = time.perf_counter()
            rows = sum(len(batch["labels"]) for batch in data.train_dataloader())
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def measure(kind: str, path: Path, out: Path, args, workers: int = 0) -> dict:
    argv = [sys.executable, __file__, "--child", kind, "--path", str(path), "--out", str(out), "--hash_buckets",
            str(args.hash_buckets), "--workers", str(workers), "--batch_size", str(args.batch_size)]
    wrapper = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
               " sys.stderr.write(done.stderr[-3000:]); print(done.stdout.strip());"
               " print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")
    done = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-2])
    result["peak_rss_mb"] = int(lines[-1]) / 1024  # includes the DataLoader workers (waited-for descendants)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--hash_buckets", type=int, default=100_000)
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--skip_memory", action="store_true", help="leave out the in-memory path (too large)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.path, args.out, args.hash_buckets, args.workers, args.batch_size)))
        return
    from moezoo.tasks.ctr.criteo_format import write_criteo_tsv

    with tempfile.TemporaryDirectory(prefix="ctr-data-") as tmp:
        source, prepared = Path(tmp) / "train.txt", Path(tmp) / "prepared"
        start = time.perf_counter()
        write_criteo_tsv(source, args.rows)
        print(f"generated {args.rows:,} rows ({source.stat().st_size / 2 ** 20:.0f} MB) in "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
        results = {}
        if not args.skip_memory:
            results["memory setup"] = measure("setup", source, prepared, args)
            results["memory input, 0 workers"] = measure("input", source, prepared, args)
        results["prepare"] = measure("prepare", source, prepared, args)
        for workers in (0, 1, 2):
            results[f"stream input, {workers} workers"] = measure("input", prepared, prepared, args, workers)
    print(f"\n{args.rows:,} generated Criteo rows, hash_buckets {args.hash_buckets}, batch {args.batch_size}\n")
    print("| step | rows | rows/s | peak RSS (MB) |\n|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['rows']:,} | {r['rows_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": args.rows, "hash_buckets": args.hash_buckets,
                                               "batch_size": args.batch_size, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
