"""Callbacks every moezoo run gets: an expert-load heatmap per epoch and metrics.json at the end of each stage."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from moezoo.moe import take_expert_load


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (runs write PNGs; no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_expert_load(loads: dict[str, torch.Tensor], path: Path, title: str) -> None:
    """Heatmap of the fraction of assignments each expert (column) of each MoE layer (row) received."""
    plt = pyplot()
    names = list(loads)
    width = max(t.numel() for t in loads.values())
    table = torch.full((len(names), width), float("nan"))
    for row, name in enumerate(names):
        counts = loads[name].float().cpu()
        table[row, : counts.numel()] = counts / counts.sum().clamp_min(1.0)
    fig, ax = plt.subplots(figsize=(max(4.5, 2.5 + 0.6 * width), 1.4 + 0.5 * len(names)))
    image = ax.imshow(table.numpy(), cmap="viridis", vmin=0.0, aspect="auto")
    if width <= 16:  # the share of each expert, written in its cell
        for (row, col), value in zip(torch.cartesian_prod(torch.arange(len(names)), torch.arange(width)).tolist(),
                                     table.flatten().tolist()):
            if math.isfinite(value):
                ax.text(col, row, f"{value:.0%}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks(range(width))
    ax.set_yticks(range(len(names)), labels=names, fontsize=7)
    ax.set_xlabel("expert")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="fraction of assignments")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_load_by_label(tables: dict[str, dict], path: Path, label: str, row_labels: list[str]) -> None:
    """One heatmap per routing module (side by side): rows = the values of ``label``, columns = experts, each row the
    fraction of that value's load per expert; the module's label-expert NMI in its title. ``tables`` maps a module
    name to its ``load_by_label`` entry for the label (``counts`` [V, E], ``nmi``)."""
    plt = pyplot()
    names = list(tables)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1, 0.3 * len(row_labels) + 2), squeeze=False)
    image = None
    for ax, name in zip(axes[0], names):
        counts = tables[name]["counts"].float().cpu()
        share = counts / counts.sum(1, keepdim=True).clamp_min(1e-12)
        image = ax.imshow(share.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_title(f"{name}\nNMI {tables[name]['nmi']:.3f}", fontsize=8)
        ax.set_xlabel("expert")
        ax.set_yticks(range(counts.shape[0]), labels=row_labels[: counts.shape[0]], fontsize=6)
    axes[0][0].set_ylabel(label)
    fig.colorbar(image, ax=axes[0].tolist(), label="fraction of the value's load")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


class ExpertLoadHeatmap(L.Callback):
    """Writes ``<run dir>/expert_load/epoch_NNN.png``: training load per expert per MoE layer over the epoch."""

    def __init__(self, dirname: str = "expert_load"):
        self.dirname = dirname

    def on_train_epoch_start(self, trainer, pl_module):
        take_expert_load(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        loads = take_expert_load(pl_module, sync=trainer.world_size > 1)  # every rank's tokens
        if loads and trainer.is_global_zero:
            epoch = trainer.current_epoch
            path = Path(trainer.default_root_dir) / self.dirname / f"epoch_{epoch:03d}.png"
            plot_expert_load(loads, path, f"expert load, epoch {epoch}")


def _number(value):
    value = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


class MetricsJson(L.Callback):
    """Merges the final metrics of each fit / validate / test into ``<run dir>/metrics.json`` (flat, by metric name),
    so results can be scripted. Fit also records the best checkpoint and its score, and ``train_seconds_per_step``:
    the mean wall time of a training batch (forward, backward, optimizer step), the first one (warm-up) left out.
    ``run_info`` (the CLI's task variant and command line, written by fit; the ``--weights`` a run started from, by
    any stage) is written with them: ``moezoo export`` reads it."""

    def __init__(self, filename: str = "metrics.json", run_info: dict | None = None):
        self.filename = filename
        self.run_info = {k: v for k, v in (run_info or {}).items() if v is not None}
        self._step_start: float | None = None
        self._step_times: list[float] = []

    def on_fit_start(self, trainer, pl_module):
        self._step_times = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._step_start is not None:
            self._step_times.append(time.perf_counter() - self._step_start)

    def _write(self, trainer, extra: dict | None = None) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        path = Path(trainer.default_root_dir) / self.filename
        metrics = json.loads(path.read_text()) if path.exists() else {}
        for name, value in trainer.callback_metrics.items():
            number = _number(value)
            if number is not None:
                metrics[name] = number
        metrics.update(extra or {})
        for key, value in self.run_info.items():  # the command that trained the weights: fit's, not a later test's
            if key == "weights" or trainer.state.fn == "fit":  # the weights a run started from: any stage's
                metrics[key] = value
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)

    def on_fit_end(self, trainer, pl_module):
        extra = {"epochs": trainer.current_epoch, "global_step": trainer.global_step}
        timed = self._step_times[1:] or self._step_times
        if timed:
            extra["train_seconds_per_step"] = sum(timed) / len(timed)
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "best_model_path", ""):
            extra["best_model_path"] = ckpt.best_model_path
            extra["best_model_score"] = _number(ckpt.best_model_score)
        self._write(trainer, extra)

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "validate":
            self._write(trainer)

    def on_test_end(self, trainer, pl_module):
        self._write(trainer)


class PredictionWriter(BasePredictionWriter):
    """Writes ``<run dir>/predictions.pt``: the predict outputs concatenated over batches (a dict of tensors when
    ``predict_step`` returns dicts), and ``predictions.csv`` when there is a ``pred`` entry of one value per sample."""

    def __init__(self):
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        if not trainer.is_global_zero or not predictions:
            return
        batches = predictions[0] if isinstance(predictions[0], list) else predictions
        if isinstance(batches[0], dict):
            merged = {key: torch.cat([b[key].detach().cpu() for b in batches]) for key in batches[0]}
        else:
            merged = torch.cat([b.detach().cpu() for b in batches])
        root = Path(trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        torch.save(merged, root / "predictions.pt")
        pred = merged.get("pred") if isinstance(merged, dict) else None
        if pred is not None and pred.ndim == 1:
            lines = ["index,pred"] + [f"{i},{int(v) if not v.is_floating_point() else float(v)}"
                                      for i, v in enumerate(pred)]
            (root / "predictions.csv").write_text("\n".join(lines) + "\n")
