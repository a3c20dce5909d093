"""Mowst and Mowst*: a weak MLP expert and a strong GNN expert mixed per node by the weak expert's confidence."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

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


def sampled_draws(conf: torch.Tensor, weak_probs: torch.Tensor, strong_probs: torch.Tensor, num_draws: int,
                  seed: int = 0):
    """Sampled inference's draws, yielded one at a time ([N, classes] each, so that only one is held): node i takes
    the weak prediction with probability C_i, else the strong one; seeded, the same draws on every call."""
    generator = torch.Generator(device=conf.device).manual_seed(seed)
    for _ in range(num_draws):
        use_weak = torch.rand(conf.shape, generator=generator, device=conf.device) < conf
        yield torch.where(use_weak.unsqueeze(-1), weak_probs, strong_probs)


class Mowst(GraphTask):
    """Mowst (``star: false``) or Mowst* (``star: true``) with a GNN strong expert.

    Args:
        strong: the strong expert, gcn | sage | gat | gin (PyG's basic GNNs); the weak expert is a PyG MLP.
        confidence: Mowst's C: ``gate`` (the official rule: sigmoid(GateMLP([D_var, D_ent] (, x))), trained with the
            weak expert), ``variance`` or ``entropy`` (the dispersion raised to ``alpha``, Sec. 3's form; no
            parameters), or ``learned`` (sigmoid head on the MLP's last hidden layer). Dispersions carry no
            gradient. Mowst* always uses the gate.
        gate_features: the gate also sees the node's features (the official ``--original_data true``).
        star_loss: Mowst*: ``joint`` (mixture cross-entropy) or ``separate`` (gated sum of the two losses).
        pretrain: train the ``weak`` expert, the ``strong`` one or ``both`` (weak, then strong) alone on its own
            cross-entropy before the mixture trains (the official ``--submethod pretrain_model1|pretrain_model2|
            pretrain_both``, ``vanilla_train_test_wrapper``); ``null``: none.
        pretrain_epochs: each pre-trained expert trains this many epochs and keeps its last weights; 0 (default):
            until its validation loss has gone more than ``phase_patience`` epochs without improving, then its
            best weights are restored (the official early stop on ``val_loss``).
        first_phase: Mowst: which expert trains first in each round (``weak``: the paper's Algorithm 1 and the
            official loop; ``strong``, the default, trains the GNN first, as the official commands' GNN pre-training
            ``--submethod pretrain_model2`` does: weak first, the gate learns C -> 1 against a random GNN, see README).
        phase_patience: Mowst: a phase ends on the first epoch that makes more than this many epochs without a
            better validation score; its best weights are then restored if they beat everything before the
            phase, otherwise all weights revert to the phase's start (``on_validation_epoch_end``).
        round_patience: Mowst: training stops once more than this many rounds in a row brought no better score.
        inference: ``expected`` (the deterministic mixture; also picks the best checkpoint) or ``sampled``;
            both are always logged, the sampled one averaged over ``num_draws`` seeded draws (``*_sampled``).
    """

    def __init__(self, strong: Literal["gcn", "sage", "gat", "gin"] = "gcn", star: bool = False,
                 confidence: Literal["gate", "variance", "entropy", "learned"] = "gate", alpha: float = 1.0,
                 gate_features: bool = False, star_loss: Literal["joint", "separate"] = "joint",
                 pretrain: Literal["weak", "strong", "both"] | None = None, pretrain_epochs: int = 0,
                 first_phase: Literal["weak", "strong"] = "strong", phase_patience: int = 100,
                 round_patience: int = 10, inference: Literal["expected", "sampled"] = "expected",
                 num_draws: int = 50, hidden: int = 64, num_layers: int = 2, dropout: float = 0.5,
                 lr: float = 0.01, weight_decay: float = 5e-4, num_features: int | None = None,
                 num_classes: int | None = None, metric: Literal["acc", "roc_auc"] | None = None):
        for key, value, valid in (("strong", strong, tuple(GNNS)),
                                  ("confidence", confidence, ("gate", "variance", "entropy", "learned")),
                                  ("star_loss", star_loss, ("joint", "separate")),
                                  ("first_phase", first_phase, ("weak", "strong")),
                                  ("pretrain", pretrain, (None, "weak", "strong", "both")),
                                  ("inference", inference, ("expected", "sampled"))):
            if value not in valid:
                raise ValueError(f"model.init_args.{key}={value!r} is not one of {', '.join(map(str, valid))}")
        if pretrain_epochs < 0:
            raise ValueError(f"model.init_args.pretrain_epochs={pretrain_epochs} must be >= 0")
        self.strong_kind, self.star, self.confidence_kind, self.alpha = strong, star, confidence, alpha
        self.gate_features, self.star_loss, self.first_phase = gate_features, star_loss, first_phase
        self.pretrain, self.pretrain_epochs = pretrain, pretrain_epochs
        self.phase_patience, self.round_patience = phase_patience, round_patience
        self.inference, self.num_draws = inference, num_draws
        super().__init__(hidden, num_layers, dropout, lr, weight_decay, num_features, num_classes, metric)
        self.save_hyperparameters()
        self.automatic_optimization = star  # Mowst alternates two optimisers by hand
        # the schedule's state (saved in checkpoints): the training phase (``pretrain-weak``, ``pretrain-strong``,
        # then ``weak``/``strong`` alternating), its best score and epochs since, the score of the weights kept so far
        # ("kept", what a phase must beat), the best score at a round's end, rounds without a better one; and the
        # weights at the phase's start and at its best (``_snapshot``)
        first = {"weak": "pretrain-weak", "both": "pretrain-weak", "strong": "pretrain-strong"}.get(pretrain)
        self.phase = {"name": first or first_phase, "best": -math.inf, "since": 0, "kept": -math.inf,
                      "round_best": -math.inf, "rounds_without": 0, "rounds": 0, "forget_best": False}
        self.phase_weights: dict[str, dict | None] = {"start": None, "best": None}

    def build(self, num_features, num_classes):
        self.weak = build_expert("mlp", num_features, self.hidden, num_classes, self.num_layers, self.dropout)
        self.strong = build_expert(self.strong_kind, num_features, self.hidden, num_classes, self.num_layers,
                                   self.dropout)
        if self.star or self.confidence_kind == "gate":
            self.gate = DispersionGate(self.hidden, num_features if self.gate_features else 0, self.num_layers,
                                       self.dropout)
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
        conf = self.gate(probs, x=x, hidden=hidden)
        return logits, conf

    def forward(self, data):
        """(weak logits, strong logits, confidence C)."""
        weak_logits, conf = self.weak_forward(data)
        return weak_logits, expert_logits(self.strong, data), conf

    # -- training -------------------------------------------------------------------------------------------------
    def pretraining(self) -> str | None:
        """The expert trained alone in this epoch (``weak`` or ``strong``), None once the mixture trains."""
        name = self.phase["name"]
        return name.removeprefix("pretrain-") if name.startswith("pretrain-") else None

    def training_step(self, data, batch_idx):
        mask = seed_rows(data, "train_mask")  # a sampled batch: its seeds (all train nodes); else the whole mask
        y = seed_rows(data, "y")[mask]
        if self.pretraining() is not None:
            loss = self._pretraining_step(data, mask, y)
        elif self.star:
            weak_logits, strong_logits, conf = self(data)
            loss_fn = mixture_loss if self.star_loss == "joint" else mowst_loss
            loss = loss_fn(conf[mask], weak_logits[mask], strong_logits[mask], y)
        else:
            loss = self._alternating_step(data, mask, y)
        self.log("train/loss", loss, batch_size=1, prog_bar=True)
        return loss

    def _pretraining_step(self, data, mask, y):
        """One expert alone on its own cross-entropy (Mowst: with its own optimiser; the other expert, the gate and
        their optimiser untouched)."""
        name = self.pretraining()
        loss = F.cross_entropy(expert_logits(getattr(self, name), data)[mask], y)
        self.log("train/pretraining_is_weak", float(name == "weak"), batch_size=1)
        if self.star:
            return loss
        opt = self.optimizers()[0 if name == "weak" else 1]
        opt.zero_grad()
        with torch.autocast(loss.device.type, enabled=False):  # as in _alternating_step
            self.manual_backward(loss)
        opt.step()
        return loss

    def _alternating_step(self, data, mask, y):
        weak_opt, strong_opt = self.optimizers()
        training_weak = self.phase["name"] == "weak"
        # the frozen expert runs in train mode (dropout, batch-norm statistics) under no_grad, as in the official
        # train_mowst1_simple_gate / train_mowst2_simple_gate
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
        """(expected mixture probs [N, C], the ``num_draws`` sampled probs (a generator, ``sampled_draws``),
        confidence C [N])."""
        weak_logits, strong_logits, conf = self(data)
        self.gate.record.add(Routing.from_weights(torch.stack([conf, 1 - conf], -1)), training=False)
        weak_probs, strong_probs = weak_logits.softmax(-1), strong_logits.softmax(-1)
        draws = sampled_draws(conf, weak_probs, strong_probs, self.num_draws)
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
            name = self.pretraining()
            if name is not None:  # a pre-training phase stops on its expert's own validation loss
                logits = expert_logits(getattr(self, name), data)
                expert_loss = F.cross_entropy(logits[mask], data.y[mask])
                self.log("val/pretraining_loss", expert_loss, batch_size=1)
                self._val_score = -float(expert_loss)
        return loss

    # -- the alternating schedule ---------------------------------------------------------------------------------
    # The official loop (facebookresearch/mowst-gnn, train_test_engine.py: mowst_train_test_wrapper_simple_gate,
    # mowst_train_test_model{1,2}_turn_wrapper_simple_gate): each round trains the weak expert with the gate, then
    # the strong one; a phase stops once its epochs without a better validation score exceed the patience, then
    # keeps its best weights if they beat the score kept before it, else reverts to the weights it started from;
    # training stops once the rounds without a better score exceed the round patience. The restored weights are
    # always those of the best score so far, so the round's score is the kept score.
    def _snapshot(self) -> dict:
        """A copy of the experts' and the gate's weights (what a phase end restores)."""
        return {name: {k: v.detach().clone() for k, v in getattr(self, name).state_dict().items()}
                for name in ("weak", "strong", "gate")}

    def _restore(self, weights: dict) -> None:
        for name, state in weights.items():
            getattr(self, name).load_state_dict(state)

    def on_train_start(self):
        if not self.star and self.phase_weights["start"] is None:
            self.phase_weights["start"] = self._snapshot()

    def on_train_epoch_start(self):
        if self.phase["forget_best"]:  # in the schedule's state, so a run resumed at this epoch still forgets
            self._forget_best_checkpoint()
            self.phase["forget_best"] = False

    def _forget_best_checkpoint(self) -> None:
        """The mixture's first epoch: the pre-training epochs (one expert trained alone) are no candidates for the
        best checkpoint, so each checkpoint callback that keeps the best ``monitor`` score starts over and its file
        is removed. (Run here, not when pre-training ends: that epoch's checkpoint is saved after this module's
        ``on_validation_epoch_end``.)"""
        trainer = self._trainer
        for callback in getattr(trainer, "checkpoint_callbacks", []):
            if callback.monitor != self.monitor:
                continue
            for path in callback.best_k_models:
                trainer.strategy.remove_checkpoint(path)
            callback.best_k_models, callback.best_model_path, callback.kth_best_model_path = {}, "", ""
            callback.best_model_score = None
            callback.kth_value = torch.tensor(-math.inf if callback.mode == "max" else math.inf)

    def on_train_end(self):
        if self.pretraining() is not None:  # e.g. Mowst*'s 300 epochs spent pre-training with early stopping
            rank_zero_warn(f"Mowst: training ended during {self.phase['name']} (epoch {self.current_epoch}): the "
                           "mixture never trained; raise --trainer.max_epochs or set --model.init_args.pretrain_epochs")

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking or not hasattr(self, "_val_score"):
            return
        if self.pretraining() is not None:
            if self.pretrain_epochs:
                self.phase["since"] += 1  # epochs of this pre-training
                if self.phase["since"] >= self.pretrain_epochs:
                    self._end_pretraining()
            elif self._track_best():
                self._end_pretraining()
        elif not self.star and self._track_best():
            self._end_phase()

    def _track_best(self) -> bool:
        """Count this epoch's validation score into the phase; True when the phase has run out of patience."""
        state, score = self.phase, self._val_score
        if score > state["best"]:
            state["best"], state["since"] = score, 0
            self.phase_weights["best"] = self._snapshot()
        else:
            state["since"] += 1
        return state["since"] > self.phase_patience

    def _end_pretraining(self) -> None:
        """End an expert's pre-training: keep its best weights (early-stopped) or its last ones (fixed epochs), then
        pre-train the strong expert (``both``) or start the mixture with nothing kept yet."""
        state = self.phase
        if not self.pretrain_epochs and self.phase_weights["best"] is not None:
            self._restore(self.phase_weights["best"])
        both = state["name"] == "pretrain-weak" and self.pretrain == "both"
        state["name"] = "pretrain-strong" if both else self.first_phase
        state["best"], state["since"] = -math.inf, 0
        state["forget_best"] = not both
        self.phase_weights = {"start": self._snapshot(), "best": None}

    def _end_phase(self) -> None:
        state = self.phase
        if state["best"] > state["kept"]:
            state["kept"] = state["best"]
            self._restore(self.phase_weights["best"])
        elif self.phase_weights["start"] is not None:
            self._restore(self.phase_weights["start"])
        self.phase_weights = {"start": self._snapshot(), "best": None}
        state["name"] = "strong" if state["name"] == "weak" else "weak"
        state["best"], state["since"] = -math.inf, 0
        if state["name"] == self.first_phase:  # both phases of a round have ended
            state["rounds"] += 1
            if state["kept"] > state["round_best"]:
                state["round_best"], state["rounds_without"] = state["kept"], 0
            else:
                state["rounds_without"] += 1
            if state["rounds_without"] > self.round_patience:
                self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint):
        checkpoint["mowst_phase"] = dict(self.phase)
        checkpoint["mowst_phase_weights"] = dict(self.phase_weights)

    def on_load_checkpoint(self, checkpoint):
        self.phase.update(checkpoint.get("mowst_phase", {}))
        self.phase_weights.update(checkpoint.get("mowst_phase_weights", {}))

    def predict_step(self, data, batch_idx):
        expected, draws, conf = self.predictions(data)
        probs = expected if self.inference == "expected" else sum(draws) / self.num_draws
        return {"pred": probs.argmax(-1), "prob": probs, "confidence": conf}
