"""MoezooCLI: LightningCLI with the omegaconf parser, moezoo's run-directory callbacks, and a test after fit."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.model_helpers import is_overridden

from .callbacks import ExpertLoadHeatmap, MetricsJson, PredictionWriter
from .task import TaskModule


class MoezooCLI(LightningCLI):
    """Every run writes into ``--trainer.default_root_dir`` (its run directory):

    - ``checkpoints/last.ckpt`` after every epoch (resume with ``--ckpt_path last``) and ``checkpoints/best-*.ckpt``
      by the task's validation metric;
    - ``expert_load/epoch_NNN.png`` and ``metrics.json``; Lightning's own logs under ``lightning_logs/``;
    - for ``predict``, ``predictions.pt`` (and ``predictions.csv`` for one label per sample).

    ``fit`` ends by testing the best checkpoint when the datamodule has a test split.
    """

    def __init__(self, args: list[str]):
        super().__init__(
            TaskModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf"},
            save_config_kwargs={"overwrite": True},
            args=args,
        )

    def instantiate_trainer(self, **kwargs):
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks = trainer_config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        root = Path(trainer_config.get("default_root_dir") or ".")
        # the data may decide the metric (e.g. ROC-AUC for two-class graphs)
        monitor = getattr(self.datamodule, "monitor", None) or self.model.monitor
        mode = getattr(self.datamodule, "monitor_mode", None) or self.model.monitor_mode
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            # ModelCheckpoint's save_last only writes when a best checkpoint is written: a second, unmonitored
            # callback writes last.ckpt after every epoch. The best one stays first (trainer.checkpoint_callback).
            callbacks.append(ModelCheckpoint(
                dirpath=root / "checkpoints", filename="best-{epoch:03d}", monitor=monitor, mode=mode,
                save_top_k=1,
            ))
            callbacks.append(ModelCheckpoint(
                dirpath=root / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False,
            ))
        callbacks += [ExpertLoadHeatmap(), MetricsJson()]
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter())
        return super().instantiate_trainer(**{**kwargs, "callbacks": callbacks})

    def after_fit(self):
        if self.datamodule is None or not is_overridden("test_dataloader", self.datamodule):
            return
        if not getattr(self.datamodule, "has_test", True):
            return
        if getattr(self.trainer, "interrupted", False):
            return
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
