"""Benchmark of the deweathering family: the dense, standard-MoE, MoFME and MoFME-UaR restorers side by side.

Two parts, one report:
- cost (``--cost``, no training): parameters (total, in the transformer FFNs, active per token), FLOPs per image
  (``torch.utils.flop_counter``; in the FFNs and in all) and eval-mode inference time per image, each variant
  timed in turn over ``--repeats`` interleaved rounds in one process (machines are noisy: the ratios against the
  standard MoE are the result); ``--size`` and the model flags of the configs.
- quality (``--seeds N``): each variant fit through the CLI (`moezoo fit --task deweather/<variant>`; best
  checkpoint by val/psnr, then test on the synthesised held-out photos), then tested on real pairs
  (``--real DIR``, e.g. ../shared/data/weather: `moezoo test --data.test DIR`); PSNR / SSIM overall and per
  weather type, mean ± std over seeds.

    python benchmarks/deweather_variants.py --cost --json cost.json
    python benchmarks/deweather_variants.py --seeds 3 --epochs 6 --real ../shared/data/weather --json quality.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from moezoo.tasks.deweather.layers import VARIANTS as SETTINGS

VARIANTS = list(SETTINGS)


def build(variant: str, args):
    from moezoo.tasks.deweather import DeweatherModel

    ffn, router = SETTINGS[variant]
    return DeweatherModel(ffn=ffn, router=router, num_experts=args.experts, k=args.k, dim=args.dim,
                          depth=args.depth, patch_size=args.patch, channels=args.channels).eval()


def active_ffn_parameters(model, variant: str, k: int, experts: int) -> int:
    """FFN weights one token uses: every weight but the unchosen experts' (k of E experts)."""
    total = 0
    for block in model.restorer.blocks:
        ffn = block.ffn
        params = sum(p.numel() for p in ffn.parameters())
        if variant != "dense":
            bank = ffn.experts if hasattr(ffn, "experts") else ffn.moe.experts
            per_expert = sum(p.numel() for p in bank.parameters()) // experts
            params -= (experts - k) * per_expert
        total += params
    return total


def ffn_flops(counter: FlopCounterMode) -> int:
    """The FLOPs counted inside the transformer blocks' FFNs (modules ``...blocks.<i>.ffn``)."""
    return sum(sum(ops.values()) for name, ops in counter.get_flop_counts().items()
               if re.search(r"blocks\.\d+\.ffn$", name))


def cost(args) -> dict:
    torch.manual_seed(0)
    models = {v: build(v, args) for v in args.variants}
    image = torch.rand(1, 3, args.size, args.size)
    out = {}
    for variant, model in models.items():
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
        out[variant] = {"params": sum(p.numel() for p in model.parameters()),
                        "ffn_params": sum(p.numel() for b in model.restorer.blocks for p in b.ffn.parameters()),
                        "active_ffn_params": active_ffn_parameters(model, variant, args.k, args.experts),
                        "gflops_per_image": counter.get_total_flops() / 1e9,
                        "ffn_gflops_per_image": ffn_flops(counter) / 1e9, "ms": []}
    with torch.no_grad():
        for model in models.values():
            model(image)  # warm up
        for _ in range(args.repeats):  # interleaved: each round times every variant once
            for variant, model in models.items():
                start = time.perf_counter()
                model(image)
                out[variant]["ms"].append(1e3 * (time.perf_counter() - start))
    for entry in out.values():
        entry["ms_per_image"] = statistics.median(entry.pop("ms"))
    if "moe" in out:
        for entry in out.values():
            for key in ("params", "ffn_params", "gflops_per_image", "ffn_gflops_per_image", "ms_per_image"):
                entry[f"{key}_vs_moe"] = entry[key] / out["moe"][key]
    return out


def fit_and_test(variant: str, seed: int, args, scratch: Path) -> dict:
    from moezoo.cli import main as moezoo

    run = scratch / f"{variant}-{seed}"
    common = ["--trainer.enable_progress_bar", "false", *args.extra]
    moezoo(["fit", "--task", f"deweather/{variant}", "--seed_everything", str(seed), "--trainer.max_epochs",
            str(args.epochs), "--trainer.default_root_dir", str(run), *common])
    fit = json.loads((run / "metrics.json").read_text())
    cell = {"seed": seed, **{k: v for k, v in fit.items() if k.startswith("test/") and "routing" not in k
                             or k == "test/routing/weather_nmi"}}
    cell["train_seconds_per_step"] = fit.get("train_seconds_per_step")
    if args.real:
        real = scratch / f"{variant}-{seed}-real"
        moezoo(["test", "--task", f"deweather/{variant}", "--ckpt_path", fit["best_model_path"], "--data.test",
                str(args.real), "--trainer.default_root_dir", str(real), *common])
        tested = json.loads((real / "metrics.json").read_text())
        cell.update({"real/" + k[len("test/"):]: v for k, v in tested.items() if k.startswith("test/")
                     and "routing" not in k})
    return cell


def quality(args) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.keep) if args.keep else Path(tmp)
        for variant in args.variants:
            cells = [fit_and_test(variant, seed, args, runs) for seed in range(args.seeds)]
            keys = sorted({k for c in cells for k in c if k != "seed" and isinstance(c.get(k), (int, float))})
            summary = {}
            for key in keys:
                values = [c[key] for c in cells if isinstance(c.get(key), (int, float))]
                summary[key] = {"mean": statistics.mean(values),
                                "std": statistics.stdev(values) if len(values) > 1 else 0.0}
            results[variant] = {"cells": cells, "summary": summary}
            if args.json:
                Path(args.json).with_suffix(".partial.json").write_text(json.dumps(results, indent=1))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--cost", action="store_true", help="parameters, FLOPs and time per image only")
    parser.add_argument("--size", type=int, default=256, help="side of the timed image")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--real", help="a folder of real pairs to test each fit on (e.g. ../shared/data/weather)")
    parser.add_argument("--keep", help="keep the runs (checkpoints, triptychs, metrics) in this folder")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further CLI flags for every fit")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    report = {"settings": {k: v for k, v in vars(args).items() if k != "extra"}, "cost": cost(args)}
    if not args.cost:
        report["quality"] = quality(args)
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
