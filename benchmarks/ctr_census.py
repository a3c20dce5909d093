"""Quality benchmark of the CTR family: test AUC per task of each model over seeds, through the CLI.

Each cell runs `moezoo fit --task ctr/<method> --seed_everything S ...` (best-validation checkpoint by mean AUC,
then test) and reads its metrics.json (test AUC per task, and the checkpoint's mean validation AUC, by which settings
are to be compared); then the best checkpoint runs over the test split once more to measure each
kind of gate's mean entropy (nats, over the samples; ``max`` is log of the experts the gate may use, the entropy of a
uniform gate). ``--flag`` passes extra CLI flags to every cell (e.g. ``--flag=--model.numeric_embedding=none``).

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

import torch
from omegaconf import OmegaConf

from moezoo.cli import main as moezoo
from moezoo.moe import GatedMixture
from moezoo.tasks.ctr import CTRData, CTRTask


def gate_entropy(checkpoint: str, run_dir: Path) -> dict:
    """{gate kind: {"entropy", "max"}}: mean per-sample entropy of each kind of gate over the test split (kinds: the
    gate's module path with task and domain names removed, e.g. ``net.task_gates``, ``net.meta_gates``). The data
    module is rebuilt from the run's own saved config, so ``--flag`` data settings (fields, ``min_count``) hold."""
    model = CTRTask.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    if len(model.domains) > 1:  # per-domain gates each see their domain's rows only: not measured here
        return {}
    config = next(run_dir.glob("lightning_logs/version_*/config.yaml"))
    data = CTRData(**OmegaConf.to_container(OmegaConf.load(config).data.init_args))
    data.setup()
    gates = {name: m for name, m in model.named_modules() if isinstance(m, GatedMixture)}
    sums: dict[str, list[float]] = {}
    with torch.no_grad():
        for batch in data.test_dataloader():
            model(batch)
            for name, gate in gates.items():
                kind = ".".join(part for part in name.split(".")[:2] if not part.isdigit())
                allowed = gate.router.num_experts if gate.router.expert_groups is None else \
                    len(gate.router.expert_groups[0])
                rows = len(batch["labels"])
                total = sums.setdefault(kind, [0.0, 0.0, float(torch.tensor(float(allowed)).log())])
                total[0] += float(gate.record.last["entropy"]) * rows
                total[1] += rows
    return {kind: {"entropy": s[0] / s[1], "max": s[2]} for kind, s in sums.items() if s[1]}


def run_cell(method: str, seed: int, args, workdir: Path) -> dict:
    out = workdir / f"{method}-{seed}"
    flags = ["fit", "--task", f"ctr/{method}", "--seed_everything", str(seed), "--trainer.default_root_dir", str(out),
             "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", str(args.epochs)]
    if args.path:
        flags += ["--data.path", args.path, "--data.preset", args.preset]
    flags += list(args.flag)
    start = time.perf_counter()
    moezoo(flags)
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return {"seed": seed, "seconds": seconds, "epochs": metrics.get("epochs"),
            "val_auc": metrics.get("best_model_score"),  # the mean validation AUC of the checkpoint tested
            "gate_entropy": gate_entropy(metrics["best_model_path"], out),
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
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--flag", action="append", default=[], help="an extra CLI flag for every cell (repeat it)")
    parser.add_argument("--json", default=None, help="write all cells and the summary here")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            cells = [run_cell(method, seed, args, Path(tmp))
                     for seed in range(args.first_seed, args.first_seed + args.seeds)]
            tasks = sorted(cells[0]["auc"])
            summary = {task: {"mean": statistics.mean(c["auc"][task] for c in cells),
                              "std": statistics.stdev(c["auc"][task] for c in cells) if len(cells) > 1 else 0.0}
                       for task in tasks}
            usage_keys = sorted(cells[0]["usage"])
            usage = {k: statistics.mean(c["usage"][k] for c in cells) for k in usage_keys}
            val = [c["val_auc"] for c in cells if c["val_auc"] is not None]
            results[method] = {"auc": summary, "usage": usage, "cells": cells,
                               "val_auc": statistics.mean(val) if val else None,
                               "seconds": statistics.mean(c["seconds"] for c in cells)}
            kinds = sorted(cells[0]["gate_entropy"])
            results[method]["gate_entropy"] = {
                k: {"entropy": statistics.mean(c["gate_entropy"][k]["entropy"] for c in cells),
                    "max": cells[0]["gate_entropy"][k]["max"]} for k in kinds}
            line = "  ".join(f"{task} {s['mean']:.4f} ± {s['std']:.4f}" for task, s in summary.items())
            if val:
                line += f"  (val mean AUC {statistics.mean(val):.4f})"
            line += "  gate entropy " + ", ".join(f"{k} {v['entropy']:.3f}/{v['max']:.3f}"
                                                 for k, v in results[method]["gate_entropy"].items())
            print(f"{method:10s} {line}  ({len(cells)} seeds, {results[method]['seconds']:.0f} s/run)", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
