"""MoezooCLI: LightningCLI with the omegaconf parser, moezoo's run-directory callbacks, and a test after fit."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.model_helpers import is_overridden

from .callbacks import ExpertLoadHeatmap, MetricsJson, PredictionWriter
from .task import TaskModule


class _NoAdverts(logging.Filter):
    """Drops Lightning's "try installing litlogger" tip, printed on every run: not the user's concern."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())

# What the data decides and the model is built with, linked at instantiation (LightningCLI's link_arguments):
# (data module attribute, model argument). A link applies when the data module has the attribute and the chosen
# model class takes the argument; the data's value then replaces any given one. The model is thus built from its
# own arguments (saved in its checkpoint and config), never by reading the trainer's datamodule.
LINKED_SIZES = (
    ("num_classes", "num_classes"),
    ("in_chans", "in_chans"),  # image classification
    ("img_size", "img_size"),
    ("image_size", "image_size"),  # diffusion
    ("channels", "channels"),
    ("fid_classifier", "fid_classifier"),  # a callable: the FID-cls classifier of the training images
    ("num_features", "num_features"),  # graph
    ("metric", "metric"),
    ("field_cardinalities", "cardinalities"),  # CTR
    ("num_numeric", "num_numeric"),
    ("tasks", "tasks"),
    ("domains", "domains"),
    ("user_column", "has_user"),
)


class MoezooCLI(LightningCLI):
    """Every run writes into ``--trainer.default_root_dir`` (its run directory):

    - ``checkpoints/last.ckpt`` after every epoch (resume with ``--ckpt_path last``) and ``checkpoints/best-*.ckpt``
      by the task's validation metric;
    - ``expert_load/epoch_NNN.png`` and ``metrics.json``; Lightning's own logs under ``lightning_logs/``;
    - for ``predict``, ``predictions.pt`` (and ``predictions.csv`` for one label per sample).

    ``fit`` ends by testing the best checkpoint when the datamodule has a test split. Sizes the data decides
    (classes, channels, feature widths, vocabularies: ``LINKED_SIZES``) reach the model's arguments by
    ``link_arguments`` when both are instantiated.

    With ``--ckpt_path``, Lightning takes the model's arguments from the checkpoint (so the architecture matches it);
    ``--model.*`` flags typed on the command line still win over them (e.g. ``moezoo test ... --model.cfg_scale 1``).
    """

    def __init__(self, args: list[str]):
        self._args = list(args)
        super().__init__(
            TaskModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf"},
            save_config_kwargs={"overwrite": True},
            args=args,
        )

    def add_arguments_to_parser(self, parser) -> None:
        for attribute, argument in LINKED_SIZES:
            parser.link_arguments(f"data.{attribute}", f"model.init_args.{argument}", apply_on="instantiate")

    def _model_flags(self) -> dict:
        """The ``--model.*`` flags of the command line as a nested dict of YAML-typed values under ``init_args``."""
        flags, args = {}, self._args
        for i, arg in enumerate(args):
            if not arg.startswith("--model."):
                continue
            key, value = arg.split("=", 1) if "=" in arg else (arg, args[i + 1] if i + 1 < len(args) else "true")
            path = key[len("--model."):].split(".")
            if path[0] not in ("init_args", "class_path", "dict_kwargs"):
                path = ["init_args", *path]
            node = flags
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = yaml.safe_load(value)
        return flags

    def _parse_ckpt_path(self) -> None:
        super()._parse_ckpt_path()
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        flags = self._model_flags()
        if flags and ckpt_path and Path(ckpt_path).is_file():  # only then did Lightning replace the model's args
            model = self.config[subcommand].model
            flags.setdefault("class_path", model.class_path)  # the flags refine the model chosen so far
            self.config = self.parser.parse_object({subcommand: {"model": flags}}, self.config)

    def instantiate_trainer(self, **kwargs):
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks = trainer_config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        root = Path(trainer_config.get("default_root_dir") or ".")
        # the model's metric (the data may have decided it through a link, e.g. ROC-AUC for two-class graphs)
        monitor, mode = self.model.monitor, self.model.monitor_mode
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
