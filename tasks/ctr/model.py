"""CTRTask: the LightningModule of the CTR family (features -> a multi-task network -> one logit per task).

Loss: sum_t w_t BCE(y_t, sigmoid(logit_t)). Metrics per stage (``val``/``test``): AUC and logloss per task
(``<stage>/auc_<task>``, ``<stage>/logloss_<task>``), their means (``<stage>/auc``, the checkpoint monitor, and
``<stage>/logloss``), per domain when the data has several (``<stage>/<domain>/auc_<task>``), and GAUC per task when
the data names a user column (``<stage>/gauc_<task>``). Validation and test also report each gate's expert usage
over the stage (``<stage>/routing/<gate>/load_e<i>``; gates are named by task and domain) and, for the routers that
see every domain, the usage per domain and its NMI with the expert (``<stage>/routing/<gate>/domain=<d>/e<i>``,
``<stage>/routing/domain_nmi``), and for the experts that several tasks' gates share (MMoE's experts, each PLE
level's, HoME's task level) their usage by task and its NMI with the expert
(``<stage>/routing/<experts>/task=<t>/e<i>``, ``<stage>/routing/task_nmi``): the core's load by label, the numbers
users look at to see which experts each task and domain uses.

The network is injected (``network``: MMoE, PLE/CGC, HoME or AdaptDHM with its own arguments) and built in
``configure_model`` from the data's fields, tasks and domains (arguments linked from the data module by the CLI).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAUROC

from moezoo.errors import MoezooError
from moezoo.training import TaskModule

from .features import FeatureEmbedding
from .gates import module_key
from .metrics import gauc

STAGES = ("val", "test")


class CTRTask(TaskModule):
    """A CTR model: the shared feature embedding, the multi-task ``network``, BCE per task, and the CTR metrics.

    Args:
        network: the network, injected (LightningCLI's dependency injection): a class called as
            ``network(in_dim, tasks, domains)`` with its own arguments given in the config, e.g.
            ``network: {class_path: moezoo.tasks.ctr.HoMENet, init_args: {num_shared: 2}}`` (``MMoENet``,
            ``PLENet`` (CGC with ``num_levels: 1``), ``HoMENet``, ``AdaptDHMNet``).
        embed_dim: width of every categorical field's embedding (and numeric field's, when embedded).
        numeric_embedding: ``none`` (numeric values enter as they are), ``piecewise`` (piecewise-linear embeddings
            over bin edges from the training split, ``numeric_bins``) or ``periodic`` (``numeric.py``).
        lr: Adam learning rate.
        weight_decay: L2 on the network's weights (Adam's, as FuxiCTR's ``net_regularizer``).
        embedding_weight_decay: L2 on the embedding tables (FuxiCTR's ``embedding_regularizer``).
        task_weights: loss weight per task (default 1 each).
        cardinalities, num_numeric, tasks, domains, has_user: the data's encoded fields (the vocabulary size of each
            categorical field, the number of numeric ones), task and domain names, and whether a user column exists;
            under the CLI they come from the data module (linked), so the model is built from its own arguments.
        numeric_bins: the bin edges of each numeric field for ``piecewise`` (linked from the data's
            ``numeric_bins``, fitted on its training split).
    """

    monitor = "val/auc"
    monitor_mode = "max"

    def __init__(self, network: Callable[[int, list[str], list[str]], nn.Module] | None = None,
                 embed_dim: int = 16, numeric_embedding: Literal["none", "piecewise", "periodic"] = "none",
                 lr: float = 1e-3, weight_decay: float = 0.0,
                 embedding_weight_decay: float = 1e-6, task_weights: list[float] | None = None,
                 cardinalities: list[int] | None = None, num_numeric: int = 0, tasks: list[str] | None = None,
                 domains: list[str] | None = None, has_user: bool = False,
                 numeric_bins: list[list[float]] | None = None):
        super().__init__(lr=lr, weight_decay=weight_decay, cosine=False)
        if network is None:
            raise MoezooError("model.init_args.network is not set: give a network class (MMoENet, PLENet, HoMENet, "
                              "AdaptDHMNet) with its init_args")
        self.save_hyperparameters()
        self.network = network
        self.embed_dim, self.embedding_weight_decay, self.task_weights = embed_dim, embedding_weight_decay, task_weights
        self.numeric_embedding, self.numeric_bins = numeric_embedding, numeric_bins
        self.data_sizes = (cardinalities, num_numeric, tasks, domains or ["all"], has_user)
        self.built = False

    # -- building from the data's sizes -------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.built:
            return
        cardinalities, num_numeric, tasks, domains, has_user = self.data_sizes
        if cardinalities is None or tasks is None:
            raise MoezooError("model.init_args.cardinalities and tasks are not set: run through the moezoo CLI (they "
                              "come from the data module) or pass them")
        self.build(list(cardinalities), num_numeric, list(tasks), list(domains), bool(has_user))

    def build(self, cardinalities: list[int], num_numeric: int, tasks: list[str], domains: list[str],
              has_user: bool = False) -> None:
        if self.task_weights is not None and len(self.task_weights) != len(tasks):
            raise MoezooError(f"model.task_weights has {len(self.task_weights)} values but the data has "
                             f"{len(tasks)} tasks ({', '.join(tasks)})")
        self.tasks, self.domains, self.has_user = tasks, domains, has_user
        self.features = FeatureEmbedding(cardinalities, num_numeric, self.embed_dim, self.numeric_embedding,
                                         self.numeric_bins)
        self.net = self.network(self.features.out_dim, list(tasks), list(domains))
        weights = self.task_weights or [1.0] * len(tasks)
        self.register_buffer("loss_weights", torch.tensor(weights, dtype=torch.float), persistent=False)
        self.auroc = nn.ModuleDict({
            f"{stage}_{t}_{d}": BinaryAUROC() for stage in STAGES for t in range(len(tasks))
            for d in range(len(domains) + 1 if len(domains) > 1 else 1)})  # d = len(domains): all domains
        self.logloss = nn.ModuleDict({f"{stage}_{t}": MeanMetric() for stage in STAGES for t in range(len(tasks))})
        self._gauc_buffer: dict[str, list] = {stage: [] for stage in STAGES}
        self.routing_label_names = {"domain": list(domains), "task": list(tasks)}
        self.built = True

    # -- forward, loss, metrics ---------------------------------------------------------------------------------
    def forward(self, batch) -> torch.Tensor:
        """Logits [B, T]."""
        v = self.features(batch["categorical"], batch["numeric"])
        return self.net(v, batch["domain"])

    def routing_labels(self, batch, stage):
        """Count every gate's usage over the stage, and by domain where the data has several."""
        return {"domain": batch["domain"]} if len(self.domains) > 1 else {}

    def task_step(self, batch, stage):
        logits = self(batch)
        labels = batch["labels"]
        per_task = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)
        loss = (self.loss_weights * per_task).sum()
        batch_size = labels.shape[0]
        self.log("train/task_loss" if stage == "train" else f"{stage}/loss", loss, batch_size=batch_size)
        if stage in STAGES:
            self._update_metrics(stage, logits.detach(), labels, batch)
        return loss

    def _update_metrics(self, stage, logits, labels, batch) -> None:
        probs = torch.sigmoid(logits)
        domain, num_domains = batch["domain"], len(self.domains)
        target = labels.long()
        for t in range(len(self.tasks)):
            key = f"{stage}_{t}"
            self.auroc[f"{key}_0" if num_domains == 1 else f"{key}_{num_domains}"].update(probs[:, t], target[:, t])
            if num_domains > 1:
                for d in range(num_domains):
                    rows = domain == d
                    if rows.any():
                        self.auroc[f"{key}_{d}"].update(probs[rows, t], target[rows, t])
            self.logloss[key].update(F.binary_cross_entropy_with_logits(logits[:, t], labels[:, t], reduction="none"))
        if self.has_user and "user" in batch:
            self._gauc_buffer[stage].append((probs.cpu(), labels.cpu(), batch["user"].cpu()))

    def _log_epoch_metrics(self, stage: str) -> None:
        values, num_domains = {}, len(self.domains)
        aucs, loglosses = [], []
        for t, task in enumerate(self.tasks):
            key = f"{stage}_{t}"
            overall = self.auroc[f"{key}_0" if num_domains == 1 else f"{key}_{num_domains}"]
            if overall.update_count == 0:
                return
            aucs.append(overall.compute())
            loglosses.append(self.logloss[key].compute())
            values[f"{stage}/auc_{task}"], values[f"{stage}/logloss_{task}"] = aucs[-1], loglosses[-1]
            if num_domains > 1:
                for d, name in enumerate(self.domains):
                    metric = self.auroc[f"{key}_{d}"]
                    if metric.update_count:
                        values[f"{stage}/{name}/auc_{task}"] = metric.compute()
        for metric in list(self.auroc.values()) + list(self.logloss.values()):
            metric.reset()
        values[f"{stage}/auc"] = torch.stack(aucs).mean()
        values[f"{stage}/logloss"] = torch.stack(loglosses).mean()
        if self._gauc_buffer[stage]:
            probs, labels, users = (torch.cat(parts) for parts in zip(*self._gauc_buffer[stage]))
            for t, task in enumerate(self.tasks):
                values[f"{stage}/gauc_{task}"] = gauc(probs[:, t], labels[:, t], users)
            self._gauc_buffer[stage] = []
        self.log(f"{stage}/auc", values.pop(f"{stage}/auc"), prog_bar=True)
        self.log_dict(values)

    def on_validation_epoch_end(self):
        self._log_epoch_metrics("val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self):
        self._log_epoch_metrics("test")
        super().on_test_epoch_end()

    def predict_step(self, batch, batch_idx):
        probs = torch.sigmoid(self(batch))
        return {"prob": probs, **{f"prob_{module_key(t)}": probs[:, i] for i, t in enumerate(self.tasks)}}

    # -- optimisation -------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        embeddings = list(self.features.embeddings.parameters())
        others = [p for name, p in self.named_parameters() if not name.startswith("features.embeddings")]
        return torch.optim.Adam([
            {"params": embeddings, "weight_decay": self.embedding_weight_decay},
            {"params": others, "weight_decay": self.weight_decay},
        ], lr=self.lr)
