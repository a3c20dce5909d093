"""Next-location quality of the mobility variants side by side, through the CLI (`moezoo fit --task mobility/<v>`):
the Markov baseline, the dense transformer, the plain top-2 MoE, MoveGCL's and TrajMoE's routers, on the generated
default and on the shared real data (the same split for every variant).

Each cell is one fit (best checkpoint by val/acc1, then test) per seed; the table gives mean ± std over seeds of test
Acc@1, Acc@5 and MRR, and for the MoE variants the city-expert NMI of their routing (generated data: 3 cities).

    python benchmarks/mobility_variants.py --seeds 3 --json mobility.json
    python benchmarks/mobility_variants.py --datasets synthetic --seeds 1 --epochs 2      # a smoke run
    python benchmarks/mobility_variants.py --datasets stan --seeds 1 --shared ../shared/data/mobility

Datasets: ``synthetic`` (the default data), ``nyc`` (GETNext's TSMC2014 NYC val + test files), ``stan`` (STAN's whole
NYC set), ``geolife`` (mie-lab's GeoLife stay points, train + valid + test files), ``foursquare`` (mie-lab's
Foursquare); real files are read from ``--shared`` and re-split chronologically per user.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from moezoo.cli import main as moezoo

VARIANTS = ["markov", "dense", "moe", "movegcl", "trajmoe"]


def dataset_args(name: str, shared: Path) -> list[str]:
    if name == "synthetic":
        return []
    files = {
        "nyc": ("getnext", [shared / "foursquare_nyc_getnext" / f"NYC_{s}.csv.gz" for s in ("val", "test")], "NYC"),
        "stan": ("stan", [shared / "foursquare_nyc_stan" / "checkins.csv.gz"], "NYC"),
        "geolife": ("mielab", [shared / "geolife_mielab" / f"geolife_{s}.csv.gz" for s in ("train", "valid", "test")],
                    "Beijing"),
        "foursquare": ("mielab", [shared / "foursquare_mielab" / f"foursquare_{s}.csv.gz"
                                  for s in ("train", "valid", "test")], "NYC"),
    }
    fmt, paths, city = files[name]
    args = ["--data.init_args.format", fmt, "--data.init_args.path", json.dumps([str(p) for p in paths]),
            "--data.init_args.city", city]
    if name == "stan":
        args += ["--data.init_args.pois", str(shared / "foursquare_nyc_stan" / "pois.csv.gz")]
    return args


def run(variant: str, dataset: str, seed: int, args) -> dict:
    out = args.root / f"{dataset}-{variant}-s{seed}"
    argv = ["fit", "--task", f"mobility/{variant}", "--seed_everything", str(seed), "--trainer.default_root_dir",
            str(out), "--trainer.enable_progress_bar", "false", *dataset_args(dataset, args.shared)]
    if args.epochs and variant != "markov":
        argv += ["--trainer.max_epochs", str(args.epochs)]
    moezoo(argv)
    metrics = json.loads((out / "metrics.json").read_text())
    row = {"dataset": dataset, "variant": variant, "seed": seed, "acc1": metrics["test/acc1"],
           "acc5": metrics["test/acc5"], "acc10": metrics["test/acc10"], "mrr": metrics["test/mrr"],
           "city_nmi": metrics.get("test/routing/city_nmi"),
           "seconds_per_step": metrics.get("train_seconds_per_step"), "steps": metrics.get("global_step")}
    row["per_city"] = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("test/acc1/")}
    return row


def summary(rows: list[dict]) -> list[str]:
    def cell(values, fmt=".3f"):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        if len(values) == 1:
            return format(values[0], fmt)
        return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"

    lines = ["| data | variant | seeds | Acc@1 | Acc@5 | MRR | city NMI |", "|---|---|---|---|---|---|---|"]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for variant in VARIANTS:
            mine = [r for r in rows if r["dataset"] == dataset and r["variant"] == variant]
            if mine:
                lines.append(f"| {dataset} | {variant} | {len(mine)} | {cell([r['acc1'] for r in mine])} | "
                             f"{cell([r['acc5'] for r in mine])} | {cell([r['mrr'] for r in mine])} | "
                             f"{cell([r['city_nmi'] for r in mine])} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "nyc", "geolife"],
                        choices=["synthetic", "nyc", "stan", "geolife", "foursquare"])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=0, help="epochs of the transformers (0: the configs' 30)")
    parser.add_argument("--shared", type=Path, default=Path("../shared/data/mobility"))
    parser.add_argument("--root", type=Path, default=Path("runs/bench-mobility"))
    parser.add_argument("--json", type=Path, help="write the rows and the table here")
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets:
        for seed in range(args.seeds):
            for variant in args.variants:
                if variant == "markov" and seed > 0:  # counting is deterministic: one seed is the answer
                    continue
                rows.append(run(variant, dataset, seed, args))
                print(json.dumps(rows[-1]))
                if args.json:
                    args.json.write_text(json.dumps({"rows": rows, "table": summary(rows)}, indent=1) + "\n")
    table = summary(rows)
    print("\n".join(table))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "table": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
