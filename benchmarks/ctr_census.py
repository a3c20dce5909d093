"""Quality benchmark of the CTR family: test AUC per task of each model over seeds, through the CLI.

Each cell runs `moezoo fit --task ctr/<method> --seed_everything S ...` (best-validation checkpoint by mean AUC,
then test) and reads its metrics.json.

    python benchmarks/ctr_census.py --path ../shared/data/ctr/adult/adult.data.gz --preset adult \
        --seeds 5 --json out.json

Without --path the embedded generator is used (and the per-domain expert usage is summarised too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from moezoo.cli import main as moezoo


def run_cell(method: str, seed: int, args, workdir: Path) -> dict:
    out = workdir / f"{method}-{seed}"
    flags = ["fit", "--task", f"ctr/{method}", "--seed_everything", str(seed), "--trainer.default_root_dir", str(out),
             "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", str(args.epochs)]
    if args.path:
        flags += ["--data.path", args.path, "--data.preset", args.preset]
    start = time.perf_counter()
    moezoo(flags)
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return {"seed": seed, "seconds": seconds, "epochs": metrics.get("epochs"),
            "auc": {k.removeprefix("test/auc_"): v for k, v in metrics.items() if k.startswith("test/auc_")},
            "usage": {k.removeprefix("test/routing/"): v for k, v in metrics.items()
                      if k.startswith("test/routing/")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default=None, help="data file (default: the embedded generator)")
    parser.add_argument("--preset", default="adult")
    parser.add_argument("--methods", nargs="+", default=["mmoe", "ple", "home", "adaptdhm"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--json", default=None, help="write all cells and the summary here")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            cells = [run_cell(method, seed, args, Path(tmp)) for seed in range(args.seeds)]
            tasks = sorted(cells[0]["auc"])
            summary = {task: {"mean": statistics.mean(c["auc"][task] for c in cells),
                              "std": statistics.stdev(c["auc"][task] for c in cells) if len(cells) > 1 else 0.0}
                       for task in tasks}
            usage_keys = sorted(cells[0]["usage"])
            usage = {k: statistics.mean(c["usage"][k] for c in cells) for k in usage_keys}
            results[method] = {"auc": summary, "usage": usage, "cells": cells,
                               "seconds": statistics.mean(c["seconds"] for c in cells)}
            line = "  ".join(f"{task} {s['mean']:.4f} ± {s['std']:.4f}" for task, s in summary.items())
            print(f"{method:10s} {line}  ({len(cells)} seeds, {results[method]['seconds']:.0f} s/run)", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
