"""Graph family at scale: seconds per epoch and peak RSS, full-batch against sampled (NeighborLoader) training.

For each graph size a stochastic-block graph is generated (4 classes, 80 % of the edges inside a block, 16 features,
train/val/test 5/5/10 % of the nodes; the npz layout of the heterophilous sets) and each path trains Mowst-GCN
(``moezoo fit --task graph/mowst-gcn``, registered config) for ``--epochs`` epochs in its own process, so that each
peak RSS is its own run's (``getrusage``: data loading, training, the whole-graph validation and test included).

    python benchmarks/graph_scale.py --sizes 250000 1000000 --json out.json

Per run: training seconds per epoch (first batch to last, validation excluded), the whole-graph validation's seconds,
peak RSS in GB (``setup``: data read and model built; ``train``: after the first training epoch, before any
validation; ``peak``: the whole run, evaluation included), steps, test accuracy. Three cells per size: full-batch
training, sampled training (``--data.sampler neighbor --data.num_neighbors [15, 10] --data.batch_size 1024``), both
scored by one whole-graph pass, and sampled training scored by layer-wise inference (``--data.inference layerwise
--data.inference_batch_size 4096``). ``--run-one`` runs a single cell (the tests' memory check uses it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

HERE = Path(__file__).resolve().parent


def _peak_rss_gb() -> float:
    """This process's peak resident set so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class EpochTimer(Callback):
    """Wall seconds of each training epoch (first batch start to last batch end) and of each validation, and the
    peak RSS when training starts (data read, model built) and when the first training epoch ends."""

    def __init__(self, out: str):
        self.out, self.train, self.val, self.steps = Path(out), [], [], 0
        self.rss = {}

    def on_train_start(self, trainer, pl_module):
        self.rss["setup_peak_rss_gb"] = _peak_rss_gb()

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._end, self.steps = time.perf_counter(), self.steps + 1

    def on_validation_epoch_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.train.append(self._end - self._start)
            self.rss.setdefault("train_peak_rss_gb", _peak_rss_gb())
            self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val.append(time.perf_counter() - self._val_start)

    def on_fit_end(self, trainer, pl_module):
        self.out.write_text(json.dumps({"train_seconds": self.train, "val_seconds": self.val, "steps": self.steps,
                                        **self.rss}))


def run_one(args) -> dict:
    """One fit in this process; its timings, peak RSS and test accuracy."""
    from moezoo.cli import main as moezoo

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        sampled = ["--data.sampler", "neighbor", "--data.num_neighbors", "[15, 10]", "--data.batch_size",
                   str(args.batch_size)] if args.sampler == "neighbor" else []
        sampled += ["--data.inference", args.inference, "--data.inference_batch_size", str(args.inference_batch_size)]
        sys.path.insert(0, str(HERE))  # the CLI imports graph_scale.EpochTimer from here
        moezoo(["fit", "--task", args.task, "--data.root", args.root, "--data.name", args.name, *sampled,
                "--trainer.max_epochs", str(args.epochs), "--trainer.default_root_dir", str(work / "run"),
                "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
                "--trainer.callbacks+=graph_scale.EpochTimer", f"--trainer.callbacks.out={work / 'times.json'}"])
        times = json.loads((work / "times.json").read_text())
        metrics = json.loads((work / "run" / "metrics.json").read_text())
    return {"task": args.task, "sampler": args.sampler, "inference": args.inference, "epochs": metrics["epochs"],
            "steps": times["steps"],
            "train_seconds_per_epoch": times["train_seconds"], "val_seconds": times["val_seconds"],
            "setup_peak_rss_gb": times["setup_peak_rss_gb"], "train_peak_rss_gb": times["train_peak_rss_gb"],
            "peak_rss_gb": _peak_rss_gb(), "test_acc": metrics["test/acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000], help="nodes per graph")
    parser.add_argument("--edges-per-node", type=float, default=2.5, help="generated edges per node (undirected)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--task", default="graph/mowst-gcn")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--run-one", action="store_true", help="one fit in this process (--root, --name, --sampler)")
    parser.add_argument("--root"), parser.add_argument("--name"), parser.add_argument("--out")
    parser.add_argument("--sampler", choices=["full", "neighbor"], default="neighbor")
    parser.add_argument("--inference", choices=["full", "layerwise"], default="full")
    parser.add_argument("--inference-batch-size", type=int, default=4096)
    args = parser.parse_args()
    if args.run_one:
        result = run_one(args)
        if args.out:
            Path(args.out).write_text(json.dumps(result))
        print(json.dumps(result))
        return
    from moezoo.tasks.graph.synthetic import write_block_graph

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes:
            write_block_graph(Path(work) / f"sbm{size}.npz", size, int(args.edges_per_node * size))
            for sampler, inference in (("full", "full"), ("neighbor", "full"), ("neighbor", "layerwise")):
                out = Path(work) / f"{size}-{sampler}-{inference}.json"
                cmd = [sys.executable, __file__, "--run-one", "--root", work, "--name", f"sbm{size}", "--sampler",
                       sampler, "--inference", inference, "--inference-batch-size", str(args.inference_batch_size),
                       "--task", args.task, "--epochs", str(args.epochs), "--batch-size",
                       str(args.batch_size), "--out", str(out)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"{size} nodes, {sampler}, {inference}: the fit failed:\n{done.stderr[-3000:]}")
                row = {"nodes": size, "edges": int(args.edges_per_node * size), **json.loads(out.read_text())}
                rows.append(row)
                print(f"{size:>9} nodes  {sampler:>8} {inference:>9}: {row['train_seconds_per_epoch']} s/epoch, "
                      f"val {row['val_seconds']} s, {row['steps']} steps, peak RSS setup/train/all "
                      f"{row['setup_peak_rss_gb']:.2f}/{row['train_peak_rss_gb']:.2f}/{row['peak_rss_gb']:.2f} GB, "
                      f"test acc {row['test_acc']:.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
