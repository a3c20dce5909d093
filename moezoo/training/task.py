"""TaskModule: the LightningModule every task family builds on (task loss + MoE aux loss, routing logs)."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from huggingface_hub import ModelHubMixin

from moezoo import hub
from moezoo.errors import MoezooError
from moezoo.moe import after_optimizer_step, aux_loss_terms, load_by_label, routing_labels, routing_stats

from .callbacks import plot_load_by_label


class TaskModule(L.LightningModule, ModelHubMixin, library_name="moezoo", tags=["moezoo", "mixture-of-experts"]):
    """Base for tasks. A subclass implements ``task_step(batch, stage) -> loss`` (updating and logging its metrics)
    and may set ``monitor`` / ``monitor_mode`` (the validation metric that picks the best checkpoint).

    Training adds the aux losses the MoE layers recorded during the step (``moezoo.moe.aux_loss``) to the task
    loss, logs each kind (``train/aux/<kind>``), and logs routing statistics per MoE layer
    (``moe/<layer>/{imbalance,entropy,dropped,load_e<i>}``). After every optimizer step the routers update their
    balancing state (aux-loss-free bias, global-batch counts).

    Routing by label: ``routing_labels(batch, stage)`` may return labels of the batch's samples (name -> ids, e.g.
    ``{"class": y}``; ``{}`` counts only each module's total load); during validation and test every routing module
    then counts its load per label value, and each epoch logs, per routing module and label, the label-expert NMI
    (``<stage>/routing/<layer>/<label>_nmi``, mean over modules ``<stage>/routing/<label>_nmi``) and the load of each
    value
    (``<stage>/routing/<layer>/<label>=<value>/e<i>``), plus the module's load over the stage
    (``<stage>/routing/<layer>/load_e<i>``). Test also writes ``expert_load/test_by_<label>.png`` and
    ``routing_by_label.json``. ``routing_label_names`` names the values (``{"domain": ["tv", "web"]}``).
    A subclass that overrides ``on_validation_epoch_end`` / ``on_test_epoch_end`` calls ``super()`` in it.

    Optimisation: AdamW(lr, weight_decay) with linear warmup over ``warmup_epochs`` and cosine decay to 0 over the
    run; LightningCLI's ``--optimizer`` / ``--lr_scheduler`` replace it.

    Hub folders (``moezoo.hub``, huggingface_hub's ``ModelHubMixin``): ``save_pretrained(dir)`` writes
    ``config.json`` (the model's config, enough to rebuild it without data or trainer), ``model.safetensors`` and a
    model card; ``Class.from_pretrained(dir_or_repo_id)`` rebuilds it in eval mode and refuses another class's
    folder; ``push_to_hub`` is the mixin's. ``hub_task`` names the task variant the weights belong to.
    """

    hub_task: str | None = None
    hub_data_state: dict | None = None  # the data's fitted encoders (a hub folder's data.json), if it has any

    monitor: str = "val/loss"
    monitor_mode: str = "min"
    routing_label_names: dict[str, list[str]] = {}

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.05, warmup_epochs: float = 0.0,
                 cosine: bool = True):
        super().__init__()
        for key, value, ok, need in (("lr", lr, lambda v: v > 0, "a positive number"),
                                     ("weight_decay", weight_decay, lambda v: v >= 0, "a number >= 0"),
                                     ("warmup_epochs", warmup_epochs, lambda v: v >= 0, "a number >= 0")):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value) or value != value:
                raise MoezooError(f"model.init_args.{key}: must be {need}, got {value!r}")
        self.lr, self.weight_decay, self.warmup_epochs, self.cosine = lr, weight_decay, warmup_epochs, cosine

    def task_step(self, batch, stage: str) -> torch.Tensor:
        raise NotImplementedError

    # -- hub folders (huggingface_hub's ModelHubMixin hooks) -----------------------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        hub.save_folder(self, Path(save_directory), task=self.hub_task)

    def generate_model_card(self, *args, **kwargs):
        return hub.model_card(self, task=kwargs.pop("task", self.hub_task), **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, force_download: bool = False,
                        token: str | bool | None = None, cache_dir: str | Path | None = None,
                        local_files_only: bool = False, revision: str | None = None, **model_kwargs):
        """The model saved in a folder or a Hub repo (``config.json`` + ``model.safetensors``), in eval mode.

        Built from its own config (no data module, no trainer); ``cls`` must be its class or a base of it (a
        folder of another task is refused by name). ``model_kwargs`` are not accepted: the config is the model.
        """
        if model_kwargs:
            raise MoezooError(f"from_pretrained: unexpected arguments {', '.join(model_kwargs)} (the saved config "
                              "decides the model; edit config.json to change it)")
        return hub.load_folder(cls, str(pretrained_model_name_or_path), force_download=force_download, token=token,
                               cache_dir=cache_dir, local_files_only=local_files_only, revision=revision)

    def routing_labels(self, batch, stage: str) -> dict[str, torch.Tensor] | None:
        """Labels of the batch's samples (or tokens) to count the routing by, in validation and test; None: none."""
        return None

    def _labelled_step(self, batch, stage: str) -> torch.Tensor:
        labels = self.routing_labels(batch, stage)
        with routing_labels(self, labels) if labels is not None else nullcontext():
            return self.task_step(batch, stage)

    def training_step(self, batch, batch_idx):
        task_loss = self.task_step(batch, "train")
        terms = aux_loss_terms(self)
        aux = sum(terms.values(), task_loss.new_zeros(()))
        batch_size = _batch_size(batch)
        sync = self._synced
        for kind, value in terms.items():
            self.log(f"train/aux/{kind}", value, batch_size=batch_size, sync_dist=sync)
        loss = task_loss + aux
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=sync)
        if self._is_logging_step():
            self._log_routing_stats()
        return loss

    def validation_step(self, batch, batch_idx):
        return self._labelled_step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._labelled_step(batch, "test")

    def on_validation_epoch_start(self):
        load_by_label(self, reset=True)  # start the stage's tally

    def on_test_epoch_start(self):
        load_by_label(self, reset=True)

    def on_validation_epoch_end(self):
        self.log_routing_by_label("val")

    def on_test_epoch_end(self):
        self.log_routing_by_label("test")

    def log_routing_by_label(self, stage: str) -> dict[str, float]:
        """Log (and return) the load by label counted since the stage began; at test also plot and save it."""
        tables = load_by_label(self, reset=True, sync=self._synced)
        if not tables:
            return {}
        values, nmis = {}, {}
        for layer, labels in tables.items():
            for label, entry in labels.items():
                load = entry["load"]
                if "nmi" not in entry:  # the total: one row
                    values.update({f"{stage}/routing/{layer}/load_e{e}": v for e, v in enumerate(load[0].tolist())})
                    continue
                nmis.setdefault(label, []).append(entry["nmi"])
                values[f"{stage}/routing/{layer}/{label}_nmi"] = entry["nmi"]
                names = self._label_value_names(label, load.shape[0])
                for value, row, seen in zip(names, load.tolist(), entry["counts"].sum(-1).tolist()):
                    if seen > 0:
                        values.update({f"{stage}/routing/{layer}/{label}={value}/e{e}": v for e, v in enumerate(row)})
        values.update({f"{stage}/routing/{label}_nmi": sum(v) / len(v) for label, v in nmis.items()})
        if self._trainer is not None:
            self.log_dict(values)
            if stage == "test" and self.trainer.is_global_zero:
                self._save_routing_by_label(tables)
        return values

    def _label_value_names(self, label: str, count: int) -> list[str]:
        names = list(self.routing_label_names.get(label, []))
        return names[:count] + [str(v) for v in range(len(names), count)]

    def _save_routing_by_label(self, tables) -> None:
        run = Path(self.trainer.default_root_dir)
        labels = sorted({label for entries in tables.values() for label in entries if "nmi" in entries[label]})
        for label in labels:
            per_layer = {layer: entries[label] for layer, entries in tables.items() if label in entries}
            rows = max(e["counts"].shape[0] for e in per_layer.values())
            plot_load_by_label(per_layer, run / "expert_load" / f"test_by_{label}.png", label,
                               self._label_value_names(label, rows))
        summary = {layer: {label: {"nmi": entry.get("nmi"), "counts": entry["counts"].tolist()}
                           for label, entry in entries.items()} for layer, entries in tables.items()}
        run.mkdir(parents=True, exist_ok=True)
        (run / "routing_by_label.json").write_text(json.dumps(summary, indent=1) + "\n")

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        after_optimizer_step(self)

    @property
    def _synced(self) -> bool:
        """Whether the logged losses and routing counts are reduced over processes (a multi-process run)."""
        return getattr(self._trainer, "world_size", 1) > 1  # (tests drive hooks with stand-in trainers)

    def _is_logging_step(self) -> bool:
        trainer = self._trainer
        return trainer is not None and trainer.global_step % max(1, trainer.log_every_n_steps) == 0

    def _log_routing_stats(self) -> None:
        values = {}
        for layer, stats in routing_stats(self, sync=self._synced).items():
            prefix = f"moe/{layer}"
            values[f"{prefix}/imbalance"] = stats["imbalance"]
            values[f"{prefix}/entropy"] = stats["entropy"]
            values[f"{prefix}/dropped"] = stats["dropped"]
            for e, load in enumerate(stats["load"]):
                values[f"{prefix}/load_e{e}"] = load
        if values:
            self.log_dict(values, on_step=True, on_epoch=False)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        if not self.cosine and self.warmup_epochs <= 0:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warmup = int(self.warmup_epochs * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not self.cosine:
                return 1.0
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _batch_size(batch) -> int | None:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return first.shape[0] if isinstance(first, torch.Tensor) else None
