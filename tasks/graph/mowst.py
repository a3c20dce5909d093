"""Mowst and Mowst*: a weak MLP expert and a strong GNN expert mixed per node by the weak expert's confidence."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from moezoo.moe import Routing, RoutingRecord

from .confidence import DispersionConfidence, DispersionGate, LearnedConfidence
from .model import GNNS, GraphTask, build_expert, expert_logits, seed_rows


def mowst_loss(conf: torch.Tensor, weak_logits: torch.Tensor, strong_logits: torch.Tensor, y: torch.Tensor):
    """Mowst's per-node loss, averaged: mean_i C_i * CE(weak_i, y_i) + (1 - C_i) * CE(strong_i, y_i)."""
    weak = F.cross_entropy(weak_logits, y, reduction="none")
    strong = F.cross_entropy(strong_logits, y, reduction="none")
    return (conf * weak + (1.0 - conf) * strong).mean()


def mixture(conf: torch.Tensor, weak_probs: torch.Tensor, strong_probs: torch.Tensor) -> torch.Tensor:
    """The expected prediction C * p_weak + (1 - C) * p_strong, [N, classes]."""
    c = conf.unsqueeze(-1)
    return c * weak_probs + (1.0 - c) * strong_probs


def mixture_loss(conf, weak_logits, strong_logits, y):
    """Mowst* "joint": cross-entropy of the mixture, -mean_i log(C_i p_weak + (1 - C_i) p_strong)[y_i]."""
    probs = mixture(conf, weak_logits.softmax(-1), strong_logits.softmax(-1))
    return F.nll_loss(probs.clamp_min(1e-12).log(), y)


class Mowst(GraphTask):
    """Mowst (``star: false``) or Mowst* (``star: true``) with a GNN strong expert.

    Args:
        strong: the strong expert, gcn | sage | gat | gin (PyG's basic GNNs); the weak expert is a PyG MLP.
        confidence: Mowst's C: ``variance`` or ``entropy`` dispersion (raised to ``alpha``) or ``learned``
            (sigmoid head on the MLP's last hidden layer). Mowst* always uses the dispersion gate MLP.
        gate_features: Mowst*: the gate also sees the node's features.
        star_loss: Mowst*: ``joint`` (mixture cross-entropy) or ``separate`` (gated sum of the two losses).
        pretrain, pretrain_epochs: Mowst*: train only the ``weak`` or ``strong`` expert, on its own cross-entropy,
            for the first ``pretrain_epochs`` epochs (``pretrain: null`` for none).
        first_phase: Mowst: which expert trains first (``strong`` pre-trains the GNN before the weak expert
            learns where it can take over; ``weak`` is the order of the paper's algorithm).
        phase_patience: Mowst: a phase ends after this many epochs without a better validation score.
        round_patience: Mowst: training stops after this many weak+strong rounds without a better score.
        inference: ``expected`` (the deterministic mixture; also picks the best checkpoint) or ``sampled``;
            both are always logged, the sampled one averaged over ``num_draws`` seeded draws (``*_sampled``).
    """

    def __init__(self, strong: Literal["gcn", "sage", "gat", "gin"] = "gcn", star: bool = False,
                 confidence: Literal["variance", "entropy", "learned"] = "variance", alpha: float = 1.0,
                 gate_features: bool = False, star_loss: Literal["joint", "separate"] = "joint",
                 pretrain: Literal["weak", "strong"] | None = None, pretrain_epochs: int = 0,
                 first_phase: Literal["weak", "strong"] = "strong", phase_patience: int = 50,
                 round_patience: int = 3, inference: Literal["expected", "sampled"] = "expected",
                 num_draws: int = 50, hidden: int = 64, num_layers: int = 2, dropout: float = 0.5,
                 lr: float = 0.01, weight_decay: float = 5e-4, num_features: int | None = None,
                 num_classes: int | None = None, metric: Literal["acc", "roc_auc"] | None = None):
        for key, value, valid in (("strong", strong, tuple(GNNS)),
                                  ("confidence", confidence, ("variance", "entropy", "learned")),
                                  ("star_loss", star_loss, ("joint", "separate")),
                                  ("first_phase", first_phase, ("weak", "strong")),
                                  ("pretrain", pretrain, (None, "weak", "strong")),
                                  ("inference", inference, ("expected", "sampled"))):
            if value not in valid:
                raise ValueError(f"model.init_args.{key}={value!r} is not one of {', '.join(map(str, valid))}")
        self.strong_kind, self.star, self.confidence_kind, self.alpha = strong, star, confidence, alpha
        self.gate_features, self.star_loss, self.first_phase = gate_features, star_loss, first_phase
        self.pretrain, self.pretrain_epochs = pretrain, pretrain_epochs
        self.phase_patience, self.round_patience = phase_patience, round_patience
        self.inference, self.num_draws = inference, num_draws
        super().__init__(hidden, num_layers, dropout, lr, weight_decay, num_features, num_classes, metric)
        self.save_hyperparameters()
        self.automatic_optimization = star  # Mowst alternates two optimisers by hand
        self.phase = {"name": first_phase, "best": -math.inf, "since": 0, "round_best": -math.inf,
                      "rounds_without": 0, "overall_best": -math.inf}

    def build(self, num_features, num_classes):
        self.weak = build_expert("mlp", num_features, self.hidden, num_classes, self.num_layers, self.dropout)
        self.strong = build_expert(self.strong_kind, num_features, self.hidden, num_classes, self.num_layers,
                                   self.dropout)
        if self.star:
            self.gate = DispersionGate(self.hidden, num_features if self.gate_features else 0)
        elif self.confidence_kind == "learned":
            self.gate = LearnedConfidence(self.hidden)
        else:
            self.gate = DispersionConfidence(self.confidence_kind, self.alpha)
        # the gate routes each node to the weak (expert 0, weight C) or the strong expert (1, weight 1 - C): its
        # record gives Mowst the core's routing statistics (load, and by class and degree in val/test)
        self.gate.record = RoutingRecord()

    # -- the model ------------------------------------------------------------------------------------------------
    def weak_forward(self, data):
        """(weak logits, confidence C [N]); of a sampled batch, of its seed nodes only."""
        x = seed_rows(data, "x")
        logits, hidden = self.weak(x, return_emb=True)
        probs = logits.softmax(-1)
        conf = self.gate(probs, x) if self.star else self.gate(probs, hidden)
        return logits, conf

    def forward(self, data):
        """(weak logits, strong logits, confidence C)."""
        weak_logits, conf = self.weak_forward(data)
        return weak_logits, expert_logits(self.strong, data), conf

    # -- training -------------------------------------------------------------------------------------------------
    def training_step(self, data, batch_idx):
        mask = seed_rows(data, "train_mask")  # a sampled batch: its seeds (all train nodes); else the whole mask
        y = seed_rows(data, "y")[mask]
        if self.star and self.pretrain is not None and self.current_epoch < self.pretrain_epochs:
            expert = self.weak if self.pretrain == "weak" else self.strong
            loss = F.cross_entropy(expert_logits(expert, data)[mask], y)
        elif self.star:
            weak_logits, strong_logits, conf = self(data)
            loss_fn = mixture_loss if self.star_loss == "joint" else mowst_loss
            loss = loss_fn(conf[mask], weak_logits[mask], strong_logits[mask], y)
        else:
            loss = self._alternating_step(data, mask, y)
        self.log("train/loss", loss, batch_size=1, prog_bar=True)
        return loss

    def _alternating_step(self, data, mask, y):
        weak_opt, strong_opt = self.optimizers()
        training_weak = self.phase["name"] == "weak"
        frozen = (self.strong,) if training_weak else (self.weak, self.gate)
        for module in frozen:
            module.eval()
        with torch.no_grad():
            if training_weak:
                strong_logits = expert_logits(self.strong, data)
            else:
                weak_logits, conf = self.weak_forward(data)
        if training_weak:
            weak_logits, conf = self.weak_forward(data)
        else:
            strong_logits = expert_logits(self.strong, data)
        loss = mowst_loss(conf[mask], weak_logits[mask], strong_logits[mask], y)
        opt = weak_opt if training_weak else strong_opt
        opt.zero_grad()
        # Lightning calls training_step inside its autocast context and the backward would inherit it; the backward
        # of the CPU sparse matmul (GCN's adj_t) has no bfloat16 kernel, so the backward runs outside autocast (as
        # automatic optimisation does: Lightning's own backward is outside the forward context)
        with torch.autocast(loss.device.type, enabled=False):
            self.manual_backward(loss)
        opt.step()
        self.log("train/phase_is_weak", float(training_weak), batch_size=1)
        return loss

    def configure_optimizers(self):
        if self.star:
            return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        weak_params = [*self.weak.parameters(), *self.gate.parameters()]
        return (torch.optim.Adam(weak_params, lr=self.lr, weight_decay=self.weight_decay),
                torch.optim.Adam(self.strong.parameters(), lr=self.lr, weight_decay=self.weight_decay))

    # -- evaluation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predictions(self, data):
        """(expected mixture probs [N, C], list of sampled probs, confidence C [N])."""
        weak_logits, strong_logits, conf = self(data)
        self.gate.record.add(Routing.from_weights(torch.stack([conf, 1 - conf], -1)), training=False)
        weak_probs, strong_probs = weak_logits.softmax(-1), strong_logits.softmax(-1)
        generator = torch.Generator(device=conf.device).manual_seed(0)
        draws = []
        for _ in range(self.num_draws):
            use_weak = torch.rand(conf.shape, generator=generator, device=conf.device) < conf
            draws.append(torch.where(use_weak.unsqueeze(-1), weak_probs, strong_probs))
        return mixture(conf, weak_probs, strong_probs), draws, conf

    def task_step(self, data, stage):
        expected, draws, conf = self.predictions(data)
        expected_metrics = self.metrics(expected, data, stage)
        per_draw = [self.metrics(p, data, stage) for p in draws]
        sampled_metrics = {k: torch.stack([m[k] for m in per_draw]).mean() for k in expected_metrics}
        main, other, suffix = ((expected_metrics, sampled_metrics, "_sampled") if self.inference == "expected"
                               else (sampled_metrics, expected_metrics, "_expected"))
        self.log_dict(main, batch_size=1, prog_bar=stage == "val")
        self.log_dict({k + suffix: v for k, v in other.items()}, batch_size=1)
        mask = getattr(data, f"{stage}_mask")
        loss = F.nll_loss(expected[mask].clamp_min(1e-12).log(), data.y[mask])
        self.log(f"{stage}/loss", loss, batch_size=1)
        if stage == "val":
            self._val_score = float(main.get(self.monitor, main["val/acc"]))
        return loss

    # -- the alternating schedule ---------------------------------------------------------------------------------
    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        if self.star or self.trainer.sanity_checking or not hasattr(self, "_val_score"):
            return
        state, score = self.phase, self._val_score
        state["overall_best"] = max(state["overall_best"], score)
        if score > state["best"]:
            state["best"], state["since"] = score, 0
        else:
            state["since"] += 1
        if state["since"] < self.phase_patience:
            return
        state["name"] = "strong" if state["name"] == "weak" else "weak"
        state["best"], state["since"] = -math.inf, 0
        if state["name"] == self.first_phase:  # a weak+strong round has ended
            if state["overall_best"] > state["round_best"]:
                state["round_best"], state["rounds_without"] = state["overall_best"], 0
            else:
                state["rounds_without"] += 1
            if state["rounds_without"] >= self.round_patience:
                self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint):
        checkpoint["mowst_phase"] = dict(self.phase)

    def on_load_checkpoint(self, checkpoint):
        self.phase.update(checkpoint.get("mowst_phase", {}))

    def predict_step(self, data, batch_idx):
        expected, draws, conf = self.predictions(data)
        probs = expected if self.inference == "expected" else torch.stack(draws).mean(0)
        return {"pred": probs.argmax(-1), "prob": probs, "confidence": conf}
