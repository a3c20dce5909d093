"""Quality benchmark of the graph family: MLP, GCN, Mowst-GCN and Mowst*-GCN over seeds or fixed splits.

Each cell runs the registered variant through the CLI (`moezoo fit --task graph/<method> ...`, best-validation
checkpoint, then test) and reads its metrics.json.

    python benchmarks/graph_mowst.py --root ../shared/data/graph --datasets Cora minesweeper tolokers --json out.json

Cora: the public split with seeds 0..runs-1 (embedded copy when --root is not given). Heterophilous npz sets:
their fixed splits 0..runs-1 with seed 0, scored by ROC-AUC. `--first K --runs N` runs a piece (runs K..K+N-1), so a
long set can be split over several processes, each writing its own --json.

Per cell and averaged per method: the test score (and the sampled-inference one for Mowst), the weak share (mean C
over test nodes) and where the weak expert takes over: the weak share by class and by in-degree bucket
(`test/routing/gate/class=<k>/e0`, `degree=<a>-<b>/e0`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from moezoo.cli import main as moezoo

PLANETOID = {"cora", "citeseer", "pubmed"}


def run_cell(method: str, dataset: str, root: str | None, run: int, workdir: Path, schedule: list[str],
             pretrain: list[str]) -> dict:
    out = workdir / f"{method}-{dataset}-{run}"
    args = ["fit", "--task", f"graph/{method}", "--trainer.default_root_dir", str(out),
            "--trainer.enable_progress_bar", "false", "--data.name", dataset]
    if method.startswith("mowst-") and not method.startswith("mowst-star-"):
        args += schedule
    if method.startswith("mowst-"):
        args += pretrain
    if dataset.lower() in PLANETOID:
        args += ["--seed_everything", str(run)]
        if root:
            args += ["--data.root", root]
    else:
        args += ["--seed_everything", "0", "--data.root", root, "--data.split", str(run)]
    start = time.perf_counter()
    moezoo(args)
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    metric = "test/acc" if dataset.lower() in PLANETOID else "test/roc_auc"
    prefix = "test/routing/gate/"
    weak_share_by = {k[len(prefix):-len("/e0")]: v for k, v in metrics.items()
                     if k.startswith(prefix) and k.endswith("/e0") and "=" in k}
    return {"score": metrics[metric], "metric": metric, "epochs": metrics["epochs"], "seconds": seconds,
            "seconds_per_epoch": seconds / max(1, metrics["epochs"]),
            "score_sampled": metrics.get(metric + "_sampled"),
            "weak_share": metrics.get(prefix + "load_e0"), "weak_share_by": weak_share_by}


def mean_of(cells: list[dict], key: str):
    values = [c[key] for c in cells if c.get(key) is not None]
    return statistics.mean(values) if values else None


def weak_share_by_mean(cells: list[dict]) -> dict:
    """Per class / degree bucket, the mean weak share over the cells whose test nodes have that bucket (a split may
    have no test node in some degree bucket)."""
    keys = list(dict.fromkeys(k for c in cells for k in c["weak_share_by"]))
    return {k: statistics.mean(c["weak_share_by"][k] for c in cells if k in c["weak_share_by"]) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="folder with Cora/raw and <name>.npz files")
    parser.add_argument("--datasets", nargs="+", default=["Cora"])
    parser.add_argument("--methods", nargs="+", default=["mlp", "gcn", "mowst-gcn", "mowst-star-gcn"])
    parser.add_argument("--runs", type=int, default=10, help="seeds (Planetoid) or fixed splits (npz)")
    parser.add_argument("--first", type=int, default=0, help="first seed or split (runs first..first+runs-1)")
    parser.add_argument("--json", default=None, help="write all cells and the summary here")
    parser.add_argument("--phase-patience", type=int, default=None, help="Mowst: override the config's (100)")
    parser.add_argument("--round-patience", type=int, default=None, help="Mowst: override the config's (10)")
    parser.add_argument("--first-phase", choices=["weak", "strong"], default=None,
                        help="Mowst: override the config's (strong)")
    parser.add_argument("--pretrain", choices=["weak", "strong", "both"], default=None,
                        help="Mowst and Mowst*: pre-train experts alone first (the official --submethod pretrain_*)")
    args = parser.parse_args()
    schedule = []
    if args.phase_patience is not None:
        schedule += ["--model.init_args.phase_patience", str(args.phase_patience)]
    if args.round_patience is not None:
        schedule += ["--model.init_args.round_patience", str(args.round_patience)]
    if args.first_phase is not None:
        schedule += ["--model.init_args.first_phase", args.first_phase]
    pretrain = ["--model.init_args.pretrain", args.pretrain] if args.pretrain else []

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            for method in args.methods:
                cells = []
                for run in range(args.first, args.first + args.runs):
                    cells.append(run_cell(method, dataset, args.root, run, Path(tmp), schedule, pretrain))
                    if args.json:  # each finished cell is kept, so a piece cut short still counts
                        results[f"{dataset}/{method}"] = {"cells": cells, "partial": True}
                        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
                    share = cells[-1]["weak_share"]
                    print(f"  {dataset} {method} run {run}: {cells[-1]['score']:.4f} ({cells[-1]['epochs']} epochs, "
                          f"{cells[-1]['seconds']:.0f} s" + (f", weak share {share:.3f}" if share is not None else "")
                          + ")", flush=True)
                scores = [c["score"] for c in cells]
                summary = {
                    "metric": cells[0]["metric"], "mean": statistics.mean(scores),
                    "std": statistics.stdev(scores) if len(scores) > 1 else 0.0, "runs": len(scores),
                    "seconds_per_epoch": statistics.mean(c["seconds_per_epoch"] for c in cells),
                    "epochs": statistics.mean(c["epochs"] for c in cells),
                    "score_sampled": mean_of(cells, "score_sampled"), "weak_share": mean_of(cells, "weak_share"),
                    "weak_share_by": weak_share_by_mean(cells),
                    "cells": cells,
                }
                results[f"{dataset}/{method}"] = summary
                print(f"{dataset:12s} {method:16s} {summary['metric']:13s} {summary['mean']:.4f} ± {summary['std']:.4f}"
                      f"  ({summary['runs']} runs, {summary['epochs']:.0f} epochs, "
                      f"{1000 * summary['seconds_per_epoch']:.1f} ms/epoch)", flush=True)
                if summary["weak_share"] is not None:
                    by = "  ".join(f"{k} {v:.2f}" for k, v in summary["weak_share_by"].items())
                    print(f"    weak share {summary['weak_share']:.3f}; by {by}", flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
