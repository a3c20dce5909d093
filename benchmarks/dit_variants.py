"""Quality benchmark of the diffusion family: FID-cls and sample accuracy of each routing at CFG 1.5 and 1.0, training
seconds per step, and the routing's specialisation (NMI of expert with class and with timestep), through the CLI.

Each cell runs `moezoo fit --task dit/<variant> --seed_everything S --trainer.max_epochs N` (best checkpoint by
validation loss, then test at the variant's cfg_scale 1.5), then `moezoo test` of the same checkpoint at CFG 1.0, and
reads metrics.json after each. Every variant is scored by the same cached FID-cls classifier.

    python benchmarks/dit_variants.py --epochs 30 --seeds 3 --json out.json
    python benchmarks/dit_variants.py --variants promoe tc-moe --epochs 10 --seeds 1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

from moezoo.cli import main as moezoo

VARIANTS = ["promoe", "promoe-ec", "ec-moe", "tc-moe", "dense"]
COLUMNS = {  # name in the table: key in the cell
    "FID-cls@1.5": "fid_cls_cfg1.5", "acc@1.5": "sample_acc_cfg1.5", "FID-cls@1.0": "fid_cls_cfg1.0",
    "acc@1.0": "sample_acc_cfg1.0", "test loss": "test_loss", "s/step": "train_seconds_per_step",
    "NMI class": "class_expert_nmi", "NMI time": "timestep_expert_nmi",
}


def run_cell(variant: str, seed: int, epochs: int, root: str | None, out: Path) -> dict:
    common = ["--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false"]
    if root:
        common += ["--data.root", root]
    moezoo(["fit", "--task", f"dit/{variant}", "--seed_everything", str(seed), "--trainer.max_epochs", str(epochs),
            *common])
    fit = json.loads((out / "metrics.json").read_text())
    moezoo(["test", "--task", f"dit/{variant}", "--ckpt_path", fit["best_model_path"], "--model.init_args.cfg_scale",
            "1.0", *common])
    cfg1 = json.loads((out / "metrics.json").read_text())
    return {
        "seed": seed, "fid_cls_cfg1.5": fit["test/fid_cls"], "sample_acc_cfg1.5": fit["test/sample_acc"],
        "fid_cls_cfg1.0": cfg1["test/fid_cls"], "sample_acc_cfg1.0": cfg1["test/sample_acc"],
        "test_loss": fit["test/loss"], "train_seconds_per_step": fit["train_seconds_per_step"],
        "steps": fit["global_step"], "class_expert_nmi": fit.get("test/routing/class_nmi", float("nan")),
        "timestep_expert_nmi": fit.get("test/routing/timestep_nmi", float("nan")),
    }


def summarise(cells: list[dict]) -> dict:
    summary = {}
    for key in COLUMNS.values():
        values = [c[key] for c in cells]
        if any(math.isnan(v) for v in values):  # e.g. the NMIs of the dense model, which has no router
            summary[key] = {"mean": math.nan, "std": math.nan}
            continue
        summary[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--root", default=None, help="image folder (default: the embedded digits)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {}
    print(f"{'variant':10s} " + " ".join(f"{name:>15s}" for name in COLUMNS), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            cells = [run_cell(variant, seed, args.epochs, args.root, Path(tmp) / f"{variant}-{seed}")
                     for seed in range(args.seeds)]
            summary = summarise(cells)
            results[variant] = {"epochs": args.epochs, "summary": summary, "cells": cells}
            row = " ".join(f"{summary[k]['mean']:>8.3f}±{summary[k]['std']:<6.3f}" for k in COLUMNS.values())
            print(f"{variant:10s} {row}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
