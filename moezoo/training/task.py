"""TaskModule: the LightningModule every task family builds on (task loss + MoE aux loss, routing logs)."""

from __future__ import annotations

import math

import lightning as L
import torch

from moezoo.moe import after_optimizer_step, aux_loss_terms, routing_stats


class TaskModule(L.LightningModule):
    """Base for tasks. A subclass implements ``task_step(batch, stage) -> loss`` (updating and logging its metrics)
    and may set ``monitor`` / ``monitor_mode`` (the validation metric that picks the best checkpoint).

    Training adds the aux losses the MoE layers recorded during the step (``moezoo.moe.aux_loss``) to the task
    loss, logs each kind (``train/aux/<kind>``), and logs routing statistics per MoE layer
    (``moe/<layer>/{imbalance,entropy,dropped,load_e<i>}``). After every optimizer step the routers update their
    balancing state (aux-loss-free bias, global-batch counts).

    Optimisation: AdamW(lr, weight_decay) with linear warmup over ``warmup_epochs`` and cosine decay to 0 over the
    run; LightningCLI's ``--optimizer`` / ``--lr_scheduler`` replace it.
    """

    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.05, warmup_epochs: float = 0.0,
                 cosine: bool = True):
        super().__init__()
        self.lr, self.weight_decay, self.warmup_epochs, self.cosine = lr, weight_decay, warmup_epochs, cosine

    def task_step(self, batch, stage: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        task_loss = self.task_step(batch, "train")
        terms = aux_loss_terms(self)
        aux = sum(terms.values(), task_loss.new_zeros(()))
        batch_size = _batch_size(batch)
        for kind, value in terms.items():
            self.log(f"train/aux/{kind}", value, batch_size=batch_size)
        loss = task_loss + aux
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if self._is_logging_step():
            self._log_routing_stats()
        return loss

    def validation_step(self, batch, batch_idx):
        return self.task_step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self.task_step(batch, "test")

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        after_optimizer_step(self)

    def _is_logging_step(self) -> bool:
        trainer = self._trainer
        return trainer is not None and trainer.global_step % max(1, trainer.log_every_n_steps) == 0

    def _log_routing_stats(self) -> None:
        values = {}
        for layer, stats in routing_stats(self).items():
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
