"""Quality benchmark of the diffusion family: FID-cls and sample accuracy of each routing at CFG 1.5 and 1.0, training
seconds per step, and the routing's specialisation (NMI of expert with class and with timestep), through the CLI.

Each cell runs `moezoo fit --task dit/<variant> --seed_everything S --trainer.max_epochs N` (best checkpoint by
validation loss, then test at the variant's cfg_scale 1.5), then `moezoo test` of the same checkpoint at CFG 1.0, and
reads metrics.json after each. Validation and test use the EMA weights (the configs' ``ema_decay``); ``--raw`` also
tests the trained weights of the same checkpoint (``--model.init_args.ema_decay null``) at both scales, a paired
measure of what the EMA changes. Every variant is scored by the same cached FID-cls classifier. The cells run
seed-major (every variant at seed 0, then seed 1, ...) and the JSON is rewritten after each, so a stopped run keeps
whole seeds of every variant.

    python benchmarks/dit_variants.py --epochs 30 --seeds 3 --json out.json
    python benchmarks/dit_variants.py --variants promoe tc-moe --epochs 10 --seeds 1
    python benchmarks/dit_variants.py --gaps out.json more.json     # the table, with the gaps to ProMoE

Gaps (``--gaps``): for each variant and metric, d_s = metric(variant, seed s) - metric(reference, seed s) over the
seeds both have (paired by seed), mean and 95% Student-t interval mean +- t_{0.975, n-1} sd / sqrt(n); an interval
that excludes 0 separates the two.
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
RAW_COLUMNS = {"raw FID-cls@1.5": "fid_cls_raw_cfg1.5", "raw FID-cls@1.0": "fid_cls_raw_cfg1.0",
               "raw test loss": "test_loss_raw"}
GAP_KEYS = ("fid_cls_cfg1.5", "fid_cls_cfg1.0", "sample_acc_cfg1.5", "sample_acc_cfg1.0", "test_loss")


def _test(variant: str, ckpt: str, cfg: str, common: list[str], extra: list[str] = ()) -> dict:
    moezoo(["test", "--task", f"dit/{variant}", "--ckpt_path", ckpt, "--model.init_args.cfg_scale", cfg, *extra,
            *common])
    return json.loads((Path(common[1]) / "metrics.json").read_text())


def run_cell(variant: str, seed: int, epochs: int, root: str | None, out: Path, raw: bool = False) -> dict:
    common = ["--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false"]
    if root:
        common += ["--data.root", root]
    moezoo(["fit", "--task", f"dit/{variant}", "--seed_everything", str(seed), "--trainer.max_epochs", str(epochs),
            *common])
    fit = json.loads((out / "metrics.json").read_text())
    best = fit["best_model_path"]
    cfg1 = _test(variant, best, "1.0", common)
    cell = {
        "seed": seed, "fid_cls_cfg1.5": fit["test/fid_cls"], "sample_acc_cfg1.5": fit["test/sample_acc"],
        "fid_cls_cfg1.0": cfg1["test/fid_cls"], "sample_acc_cfg1.0": cfg1["test/sample_acc"],
        "test_loss": fit["test/loss"], "train_seconds_per_step": fit["train_seconds_per_step"],
        "steps": fit["global_step"], "class_expert_nmi": fit.get("test/routing/class_nmi", float("nan")),
        "timestep_expert_nmi": fit.get("test/routing/timestep_nmi", float("nan")),
    }
    if raw:  # the trained weights of the same checkpoint, without the EMA
        no_ema = ["--model.init_args.ema_decay", "null"]
        raw15 = _test(variant, best, "1.5", common, no_ema)
        raw10 = _test(variant, best, "1.0", common, no_ema)
        cell.update({"fid_cls_raw_cfg1.5": raw15["test/fid_cls"], "fid_cls_raw_cfg1.0": raw10["test/fid_cls"],
                     "sample_acc_raw_cfg1.5": raw15["test/sample_acc"],
                     "sample_acc_raw_cfg1.0": raw10["test/sample_acc"], "test_loss_raw": raw15["test/loss"]})
    return cell


def summarise(cells: list[dict]) -> dict:
    summary = {}
    keys = [*COLUMNS.values(), *(k for k in RAW_COLUMNS.values() if all(k in c for c in cells))]
    for key in keys:
        values = [c[key] for c in cells]
        if any(math.isnan(v) for v in values):  # e.g. the NMIs of the dense model, which has no router
            summary[key] = {"mean": math.nan, "std": math.nan}
            continue
        summary[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return summary


def paired_gap(cells: list[dict], reference: list[dict], key: str) -> dict:
    """Mean and 95% t-interval of metric(variant) - metric(reference), paired by seed."""
    from scipy import stats

    ref = {c["seed"]: c[key] for c in reference}
    diffs = [c[key] - ref[c["seed"]] for c in cells if c["seed"] in ref]
    n = len(diffs)
    if n == 0:
        return {"n": 0}
    mean = statistics.mean(diffs)
    if n == 1:
        return {"n": 1, "mean": mean, "low": math.nan, "high": math.nan, "separates": False}
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half,
            "separates": bool(mean - half > 0 or mean + half < 0)}


def merge(paths: list[str]) -> dict:
    merged = {}
    for path in paths:
        for variant, entry in json.loads(Path(path).read_text()).items():
            cells = {c["seed"]: c for c in merged.get(variant, {}).get("cells", [])}
            cells.update({c["seed"]: c for c in entry["cells"]})
            merged[variant] = {"epochs": entry["epochs"], "cells": sorted(cells.values(), key=lambda c: c["seed"])}
    for entry in merged.values():
        entry["summary"] = summarise(entry["cells"])
    return merged


def print_gaps(results: dict, reference: str = "promoe") -> None:
    print(f"{'variant':10s} seeds " + " ".join(f"{k:>34s}" for k in GAP_KEYS))
    for variant, entry in results.items():
        seeds = [c["seed"] for c in entry["cells"]]
        means = " ".join(f"{entry['summary'][k]['mean']:>16.3f} ± {entry['summary'][k]['std']:<15.3f}"
                         for k in GAP_KEYS)
        print(f"{variant:10s} {seeds} {means}")
        if variant == reference or reference not in results:
            continue
        parts = []
        for key in GAP_KEYS:
            gap = paired_gap(entry["cells"], results[reference]["cells"], key)
            if gap["n"] < 2:
                parts.append(f"{'n<2':>34s}")
                continue
            mark = "*" if gap["separates"] else " "
            parts.append(f"{gap['mean']:>+9.3f} [{gap['low']:+9.3f}, {gap['high']:+9.3f}]{mark} n={gap['n']}")
        print(f"{'  - ' + reference:10s} {'':>9s} " + " ".join(f"{p:>34s}" for p in parts))
    for variant, entry in results.items():
        if all("fid_cls_raw_cfg1.5" in c for c in entry["cells"]):
            for cfg in ("1.5", "1.0"):
                ema = [{"seed": c["seed"], "v": c[f"fid_cls_cfg{cfg}"]} for c in entry["cells"]]
                raw = [{"seed": c["seed"], "v": c[f"fid_cls_raw_cfg{cfg}"]} for c in entry["cells"]]
                gap = paired_gap(ema, raw, "v")
                interval = f"[{gap.get('low', math.nan):+.3f}, {gap.get('high', math.nan):+.3f}]"
                print(f"{variant}: EMA - trained FID-cls at CFG {cfg}: {gap.get('mean', math.nan):+.3f} {interval}, "
                      f"n={gap['n']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--raw", action="store_true", help="also test the trained weights without the EMA")
    parser.add_argument("--root", default=None, help="image folder (default: the embedded digits)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--gaps", nargs="+", default=None, metavar="JSON",
                        help="print the merged table of these result files with the gaps to ProMoE, run nothing")
    args = parser.parse_args()
    if args.gaps:
        print_gaps(merge(args.gaps))
        return
    results = {}
    print(f"{'variant':10s} seed " + " ".join(f"{name:>15s}" for name in COLUMNS), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for variant in args.variants:
                cell = run_cell(variant, seed, args.epochs, args.root, Path(tmp) / f"{variant}-{seed}", args.raw)
                entry = results.setdefault(variant, {"epochs": args.epochs, "cells": []})
                entry["cells"].append(cell)
                entry["summary"] = summarise(entry["cells"])
                row = " ".join(f"{cell[k]:>15.3f}" for k in COLUMNS.values())
                print(f"{variant:10s} {seed:4d} {row}", flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
