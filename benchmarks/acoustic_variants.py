"""Quality benchmark of the acoustic family: test accuracy of the single-head ResNet, CMoE and RCMoE, side by side,
on the generated default and on real audio, through the CLI (`moezoo fit --task acoustic/<variant>`).

Datasets (``--datasets``):
- ``synthetic``: the embedded default (generated ship noise, 4 classes, split by vessel);
- ``fsdd``: the Free Spoken Digit Dataset manifest (``--fsdd DIR``: its folder with ``manifest.csv``), split by
  *speaker* (group_column speaker: each speaker's takes in one split), 1-s windows, short clips zero-padded;
- ``deepship``: a DeepShip class-folder tree (``--deepship DIR``, e.g. the extracted ``DeepShip/`` of the shared
  subset; a ``.tar.xz`` is extracted to a temporary folder), split by recording, 3-s windows every 1.5 s at 16 kHz.

Each cell is one fit (best checkpoint by val/acc, then test); the table gives mean ± std over seeds of test accuracy
(windows), test accuracy per recording (summed window log-probabilities), macro-F1, seconds per epoch, and the
head's class-expert NMI.

    python benchmarks/acoustic_variants.py --datasets synthetic --seeds 3 --json out.json
    python benchmarks/acoustic_variants.py --datasets fsdd --fsdd ../shared/data/audio/fsdd --epochs 15
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tarfile
import tempfile
from pathlib import Path

from moezoo.cli import main as moezoo

VARIANTS = ["resnet", "cmoe", "rcmoe"]
COLUMNS = {"test acc": "test_acc", "recording acc": "recording_acc", "macro-F1": "macro_f1",
           "s/epoch": "seconds_per_epoch", "NMI class": "class_nmi"}


def dataset_args(name: str, args, scratch: Path) -> list[str]:
    if name == "synthetic":
        return []
    if name == "fsdd":
        return ["--data.manifest", str(Path(args.fsdd) / "manifest.csv"), "--data.label_column", "digit",
                "--data.group_column", "speaker", "--data.window_seconds", "1.0", "--data.hop_seconds", "1.0",
                "--data.pad_short", "true", "--data.sample_rate", "8000", "--model.init_args.hop_length", "64"]
    if name == "deepship":
        root = Path(args.deepship)
        if root.suffix in (".xz", ".tar") or root.name.endswith(".tar.xz"):
            with tarfile.open(root) as archive:
                archive.extractall(scratch, filter="data")
            root = scratch / "DeepShip"
        classes = [p for p in root.iterdir() if p.is_dir() and p.name != "metadata"]
        tree = scratch / "deepship-tree"
        tree.mkdir(exist_ok=True)
        for c in classes:  # the tree without the metadata folder
            link = tree / c.name
            if not link.exists():
                link.symlink_to(c.resolve())
        return ["--data.root", str(tree), "--data.sample_rate", "16000", "--data.window_seconds", "3.0",
                "--data.hop_seconds", "1.5", "--model.init_args.n_fft", "1024", "--model.init_args.hop_length", "512"]
    raise SystemExit(f"unknown dataset {name!r}")


def run_cell(variant: str, seed: int, epochs: int, data: list[str], out: Path) -> dict:
    moezoo(["fit", "--task", f"acoustic/{variant}", "--seed_everything", str(seed), "--trainer.max_epochs",
            str(epochs), "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false", *data])
    m = json.loads((out / "metrics.json").read_text())
    steps_per_epoch = m["global_step"] / m["epochs"]
    return {"seed": seed, "test_acc": m["test/acc"], "recording_acc": m["test/recording_acc"],
            "macro_f1": m["test/macro_f1"], "seconds_per_epoch": m["train_seconds_per_step"] * steps_per_epoch,
            "class_nmi": m.get("test/routing/class_nmi", math.nan), "epochs": m["epochs"]}


def summarise(cells: list[dict]) -> dict:
    out = {}
    for key in COLUMNS.values():
        values = [c[key] for c in cells]
        if any(math.isnan(v) for v in values):
            out[key] = {"mean": math.nan, "std": math.nan}
        else:
            out[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def table(results: dict) -> str:
    lines = ["| data | variant | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for dataset, variants in results.items():
        for variant, entry in variants.items():
            cells = []
            for key in COLUMNS.values():
                s = entry["summary"][key]
                digits = 1 if key == "seconds_per_epoch" else 3
                cells.append("-" if math.isnan(s["mean"]) else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}")
            lines.append(f"| {dataset} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["synthetic"], choices=["synthetic", "fsdd", "deepship"])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--fsdd", default="../shared/data/audio/fsdd")
    parser.add_argument("--deepship", default="../shared/data/audio/deepship/deepship_subset.tar.xz")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further CLI flags for every run")
    parser.add_argument("--json", help="write the cells and the summary here")
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for dataset in args.datasets:
            data = dataset_args(dataset, args, scratch) + list(args.extra)
            results[dataset] = {}
            for variant in args.variants:  # seeds inside variants: the variants' cells alternate over one run
                cells = [run_cell(variant, seed, args.epochs, data, scratch / f"{dataset}-{variant}-{seed}")
                         for seed in range(args.seeds)]
                results[dataset][variant] = {"cells": cells, "summary": summarise(cells)}
                if args.json:
                    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
