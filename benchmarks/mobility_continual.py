"""Forgetting when a city is added, with and without MoveGCL's replay, through the CLI, side by side in one run.

1. a teacher: `moezoo fit --task mobility/movegcl --data.cities OLD` (the old cities only);
2. two students: `moezoo fit --task mobility/movegcl-continual --model.teacher T --data.vocabulary T
   --data.cities NEW`, with replay (distillation on the teacher's generated old-city trajectories) and without
   (the new city's cross-entropy alone; the experts are frozen the same way);
3. each model tested on the old cities' test split (`moezoo test ... --data.cities OLD`) and the students on the new
   city's. Forgetting = the teacher's old-city Acc@1 minus the student's.

    python benchmarks/mobility_continual.py --seeds 3 --json continual.json
    python benchmarks/mobility_continual.py --seeds 1 --epochs 2 --tuning-epochs 1      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from moezoo.cli import main as moezoo


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def run(seed: int, args) -> dict:
    root = args.root / f"s{seed}"
    old, new = json.dumps(args.old), json.dumps(args.new)
    common = ["--seed_everything", str(seed), "--trainer.enable_progress_bar", "false"]
    moezoo(["fit", "--task", "mobility/movegcl", "--trainer.default_root_dir", str(root / "teacher"), *common,
            "--trainer.max_epochs", str(args.epochs), "--data.init_args.cities", old])
    teacher = metrics(root / "teacher")["best_model_path"]
    row = {"seed": seed, "teacher_old_acc1": metrics(root / "teacher")["test/acc1"]}
    for name, replay in (("replay", "true"), ("no_replay", "false")):
        moezoo(["fit", "--task", "mobility/movegcl-continual", "--trainer.default_root_dir", str(root / name), *common,
                "--trainer.max_epochs", str(args.tuning_epochs), "--model.init_args.teacher", teacher,
                "--model.init_args.replay", replay, "--data.init_args.vocabulary", teacher,
                "--data.init_args.cities", new])
        student = metrics(root / name)["best_model_path"]
        row[f"{name}_new_acc1"] = metrics(root / name)["test/acc1"]
        moezoo(["test", "--task", "mobility/movegcl-continual", "--trainer.default_root_dir", str(root / f"{name}-old"),
                "--ckpt_path", student, *common, "--data.init_args.vocabulary", student, "--data.init_args.cities",
                old])
        row[f"{name}_old_acc1"] = metrics(root / f"{name}-old")["test/acc1"]
        row[f"{name}_forgetting"] = row["teacher_old_acc1"] - row[f"{name}_old_acc1"]
    return row


def summary(rows: list[dict]) -> list[str]:
    def cell(key):
        values = [r[key] for r in rows]
        return f"{values[0]:.3f}" if len(values) == 1 else \
            f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

    return ["| model | old cities Acc@1 | new city Acc@1 | forgetting (old Acc@1 lost) |", "|---|---|---|---|",
            f"| teacher (old cities only) | {cell('teacher_old_acc1')} | - | - |",
            f"| + new city, with replay | {cell('replay_old_acc1')} | {cell('replay_new_acc1')} | "
            f"{cell('replay_forgetting')} |",
            f"| + new city, without replay | {cell('no_replay_old_acc1')} | {cell('no_replay_new_acc1')} | "
            f"{cell('no_replay_forgetting')} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="the teacher's epochs (the movegcl config: 30)")
    parser.add_argument("--tuning-epochs", type=int, default=15, help="the students' (the continual config: 15)")
    parser.add_argument("--old", nargs="+", default=["Compact", "Metro"])
    parser.add_argument("--new", nargs="+", default=["Sprawl"])
    parser.add_argument("--root", type=Path, default=Path("runs/bench-mobility-continual"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for seed in range(args.seeds):
        rows.append(run(seed, args))
        print(json.dumps(rows[-1]))
    table = summary(rows)
    print("\n".join(table))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "table": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
