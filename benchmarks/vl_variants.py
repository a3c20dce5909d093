"""Quality and cost of the vision-language variants side by side on easy-VQA, through the CLI
(`moezoo fit --task vl/<variant>`): dense, the modality-agnostic MoE, MoMa, and MoE-LLaVA (MoE-tuning upcycled
from that seed's dense run).

Each cell is one fit (best checkpoint by val/acc, then test) per seed; the table gives mean ± std over seeds of test
accuracy, FLOPs per sample (one forward, ``FlopCounterMode``, logged by the model at test), seconds per epoch, and,
for the mixtures, the share of each modality's tokens taken by the image experts (0, 1) and by the others, mean over
layers: with MoMa it is 1 / 0 by construction, the agnostic MoE shows whether it learns a split by itself (and its
modality NMI).

    python benchmarks/vl_variants.py --seeds 3 --json vl.json
    python benchmarks/vl_variants.py --first-seed 2 --seeds 1 --json vl-s2.json     # one more seed alone
    python benchmarks/vl_variants.py --seeds 1 --epochs 1 --tuning-epochs 1 --limit 20   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from moezoo.cli import main as moezoo

VARIANTS = ["dense", "moe", "moma", "moe-llava"]


def load_by_modality(metrics: dict) -> dict[str, list[float]]:
    """{modality: [share of its tokens on each expert]} averaged over the MoE layers, from metrics.json."""
    per = {}
    for key, value in metrics.items():
        match = re.fullmatch(r"test/routing/(.+)/modality=(\w+)/e(\d+)", key)
        if match:
            per.setdefault(match.group(2), {}).setdefault(match.group(1), {})[int(match.group(3))] = value
    out = {}
    for modality, layers in per.items():
        rows = [[layer[e] for e in sorted(layer)] for layer in layers.values()]
        out[modality] = [sum(col) / len(col) for col in zip(*rows)]
    return out


def run(variant: str, seed: int, root: Path, args, dense_ckpt: str | None) -> dict:
    out = root / f"{variant}-s{seed}"
    epochs = args.tuning_epochs if variant == "moe-llava" else args.epochs
    argv = ["fit", "--task", f"vl/{variant}", "--seed_everything", str(seed), "--trainer.default_root_dir", str(out),
            "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false"]
    if args.limit:
        argv += ["--trainer.limit_train_batches", str(args.limit), "--trainer.limit_val_batches", str(args.limit),
                 "--trainer.limit_test_batches", str(args.limit)]
    if variant == "moe-llava":
        argv += ["--model.init_args.init_from", dense_ckpt]
    moezoo(argv)
    metrics = json.loads((out / "metrics.json").read_text())
    steps = metrics["global_step"] / max(1, metrics["epochs"])
    row = {"variant": variant, "seed": seed, "test_acc": metrics["test/acc"], "val_acc": metrics["val/acc"],
           "flops_per_sample": metrics["test/flops_per_sample"],
           "seconds_per_epoch": metrics["train_seconds_per_step"] * steps, "best": metrics["best_model_path"],
           "modality_nmi": metrics.get("test/routing/modality_nmi")}
    load = load_by_modality(metrics)
    if load:
        row["load_by_modality"] = load
    return row


def summary(rows: list[dict]) -> list[str]:
    def cell(values, fmt):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        if len(values) == 1:
            return format(values[0], fmt)
        return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"

    lines = ["| variant | test acc | MFLOPs / sample | s / epoch | image tokens on experts | text tokens on experts "
             "| modality NMI |", "|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        loads = {}
        for modality in ("image", "text"):
            shares = [r["load_by_modality"][modality] for r in mine if modality in r.get("load_by_modality", {})]
            loads[modality] = " / ".join(f"{sum(c) / len(c):.2f}" for c in zip(*shares)) if shares else "-"
        lines.append(f"| {variant} | {cell([r['test_acc'] for r in mine], '.4f')} | "
                     f"{cell([r['flops_per_sample'] / 1e6 for r in mine], '.1f')} | "
                     f"{cell([r['seconds_per_epoch'] for r in mine], '.0f')} | {loads['image']} | {loads['text']} | "
                     f"{cell([r['modality_nmi'] for r in mine], '.3f')} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds, from --first-seed on")
    parser.add_argument("--first-seed", type=int, default=0, help="e.g. --first-seed 2 --seeds 1 adds seed 2 alone")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of dense, moe and moma (the configs: 4)")
    parser.add_argument("--tuning-epochs", type=int, default=2, help="MoE-tuning epochs after dense (the config: 2)")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--limit", type=int, default=0, help="batches per stage (0: all), for a smoke run")
    parser.add_argument("--root", type=Path, default=Path("runs/bench-vl"))
    parser.add_argument("--json", type=Path, help="write the rows and the table here")
    args = parser.parse_args()
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        dense_ckpt = None
        for variant in args.variants:
            if variant == "moe-llava" and dense_ckpt is None:
                dense = next((r for r in rows if r["variant"] == "dense" and r["seed"] == seed), None)
                if dense is None:
                    dense = run("dense", seed, args.root, args, None)
                dense_ckpt = dense["best"]
            row = run(variant, seed, args.root, args, dense_ckpt)
            rows.append(row)
            if variant == "dense":
                dense_ckpt = row["best"]
            print(json.dumps(row))
    table = summary(rows)
    print("\n".join(table))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "table": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
