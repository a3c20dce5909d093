"""Quality benchmark of the diffusion family: FID-cls and sample accuracy of each routing, through the CLI.

Each cell runs `moezoo fit --task dit/<variant> --seed_everything S --trainer.max_epochs N` (best checkpoint by
validation loss, then test: FID-cls and the classifier's accuracy on the generated samples) and reads metrics.json.

    python benchmarks/dit_variants.py --variants promoe tc ec dense --epochs 10 --seeds 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from moezoo.cli import main as moezoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["promoe", "tc", "ec", "dense"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--root", default=None, help="image folder (default: the embedded digits)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            cells = []
            for seed in range(args.seeds):
                out = Path(tmp) / f"{variant}-{seed}"
                flags = ["fit", "--task", f"dit/{variant}", "--seed_everything", str(seed), "--trainer.max_epochs",
                         str(args.epochs), "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar",
                         "false"]
                if args.root:
                    flags += ["--data.root", args.root]
                start = time.perf_counter()
                moezoo(flags)
                metrics = json.loads((out / "metrics.json").read_text())
                cells.append({"seed": seed, "seconds": time.perf_counter() - start,
                              **{k: metrics[k] for k in ("test/fid_cls", "test/sample_acc", "test/loss")}})
            summary = {k: statistics.mean(c[k] for c in cells) for k in ("test/fid_cls", "test/sample_acc",
                                                                          "test/loss", "seconds")}
            results[variant] = {"summary": summary, "cells": cells}
            print(f"{variant:8s} fid_cls {summary['test/fid_cls']:8.2f}  sample_acc {summary['test/sample_acc']:.3f}"
                  f"  test loss {summary['test/loss']:.4f}  ({len(cells)} seeds, {summary['seconds']:.0f} s/run)",
                  flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
