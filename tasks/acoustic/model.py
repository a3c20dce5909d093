"""AcousticClassifier: a ResNet-18 on a time-frequency map with one linear head (``resnet``), CMoE's hard top-1
mixture of heads (``cmoe``) or its residual form RCMoE (``rcmoe``).

CMoE (Xie et al. 2024, "Unraveling Complex Data Diversity in Underwater Acoustic Target Recognition through
Convolution-based Mixture of Experts"; official code github.com/xy980523/UATR-CMoE ``cmoe_model.py``), on the pooled
ResNet feature r [B, 512], one "token" per sample:

    s = score(r W_g)  (sigmoid; softmax or linear as options)      e* = argmax_e s_e
    logits = head_{e*}(r)                                          gate_output: false (the official code)
    logits = s_{e*} * head_{e*}(r)                                 gate_output: true
    RCMoE:   logits = [s_{e*} *] head_{e*}(r) + head_shared(r)
    L = CE(logits, y) + 0.01 * E * sum_i f_i P_i,   f_i = share of samples choosing i, P_i = mean_b s_{b,i}

With ``gate_output: false`` the router's score does not touch the logits, so the router learns from the balance
loss alone (as in the official code). The router, the expert heads and the balance loss are the core's
(``TopKRouter`` with k = 1, ``weighted`` / ``balance_probs: raw``; ``RoutedStackedMLP``; the ``MoE`` layer), so the
routing statistics, the aux loss and the load by class flow as in every family.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, ResNet
from torchaudio.transforms import SpecAugment
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from moezoo.errors import MoezooError
from moezoo.moe import MoE, RoutedStackedMLP, TopKRouter
from moezoo.training import TaskModule

from .features import FEATURES, SpectralFrontend
from .recordings import mono_at

HEADS = ("linear", "cmoe", "rcmoe")


def resnet18_1ch(channels: tuple[int, ...] = (64, 128, 256, 512)) -> ResNet:
    """timm's ResNet-18 (BasicBlock, 2-2-2-2) with a one-channel stem and no classifier: [B, 1, F, T] -> [B, c_4]."""
    return ResNet(BasicBlock, [2, 2, 2, 2], in_chans=1, num_classes=0, channels=tuple(channels))


def cmoe_head(dim: int, num_classes: int, num_experts: int, *, score: str = "sigmoid", gate_output: bool = False,
              residual: bool = False, expert_hidden: int | None = None, balance_loss_weight: float = 0.01) -> MoE:
    """CMoE's mixture of E heads over per-sample features [B, dim] -> logits [B, C]: hard top-1 (k = 1), heads
    Linear(dim, C) (an MLP dim -> ``expert_hidden`` -> C when set), the balance loss on the raw scores; with
    ``residual`` an always-on shared head (RCMoE)."""
    router = TopKRouter(dim, num_experts, k=1, score=score, weighted=gate_output,
                        balance_loss_weight=balance_loss_weight, balance_probs="raw")
    widths = [num_classes] if expert_hidden is None else [expert_hidden, num_classes]
    experts = RoutedStackedMLP(num_experts, dim, widths, activation="relu", output_layer=True)
    return MoE(dim, router, experts, nn.Linear(dim, num_classes) if residual else None)


class AcousticClassifier(TaskModule):
    """Waveform windows [B, N] -> class logits, through a spectral front end, a ResNet-18 and a head.

    Args:
        num_classes, sample_rate, feature, class_names, window_seconds: from the data (linked under the CLI);
            ``window_seconds`` is the window the model was trained on, which ``classify_recording`` cuts.
        head: ``linear`` (the single-head ResNet baseline), ``cmoe`` or ``rcmoe``.
        num_experts, score, gate_output, expert_hidden, balance_loss_weight: the CMoE head (see the module doc).
        n_fft, hop_length, n_bins: the front end (``n_bins``: mel bands or cepstral coefficients).
        channels: the ResNet's stage widths (ResNet-18's by default).
        spec_augment: SpecAugment (torchaudio's) on training maps: 2 time masks of up to ``time_mask`` frames and
            2 frequency masks of up to ``freq_mask`` bins, masked to 0 (the training mean after normalisation).
    """

    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(
        self,
        num_classes: int = 4,
        sample_rate: int = 8000,
        feature: str = "mel",
        class_names: list[str] | None = None,
        window_seconds: float = 2.0,
        head: Literal["linear", "cmoe", "rcmoe"] = "cmoe",
        num_experts: int = 8,
        score: Literal["sigmoid", "softmax", "linear"] = "sigmoid",
        gate_output: bool = False,
        expert_hidden: int | None = None,
        balance_loss_weight: float = 0.01,
        n_fft: int = 512,
        hop_length: int = 128,
        n_bins: int = 64,
        channels: tuple[int, int, int, int] = (64, 128, 256, 512),
        spec_augment: bool = False,
        time_mask: int = 20,
        freq_mask: int = 8,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 0.0,
        cosine: bool = True,
    ):
        super().__init__(lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, cosine=cosine)
        if head not in HEADS:
            raise MoezooError(f"model.init_args.head: {head!r} is not one of {', '.join(HEADS)}")
        if feature not in FEATURES:  # linked from data.feature under the CLI
            raise MoezooError(f"data.feature (model.init_args.feature): {feature!r} is not one of "
                              f"{', '.join(FEATURES)}")
        if class_names is not None and len(class_names) != num_classes:
            raise MoezooError(f"model.init_args.class_names: {len(class_names)} names for num_classes={num_classes}")
        self.save_hyperparameters()
        self.num_classes, self.head_kind = num_classes, head
        self.sample_rate, self.window_seconds = sample_rate, window_seconds
        self.class_names = list(class_names) if class_names else [str(c) for c in range(num_classes)]
        self.routing_label_names = {"class": self.class_names}
        self.frontend = SpectralFrontend(feature, sample_rate, n_fft, hop_length, n_bins)
        self.augment = (SpecAugment(2, time_mask, 2, freq_mask, iid_masks=True, zero_masking=True)
                        if spec_augment else None)
        self.backbone = resnet18_1ch(channels)
        dim = self.backbone.num_features
        if head == "linear":
            self.head = nn.Linear(dim, num_classes)
        else:
            self.head = cmoe_head(dim, num_classes, num_experts, score=score, gate_output=gate_output,
                                  residual=head == "rcmoe", expert_hidden=expert_hidden,
                                  balance_loss_weight=balance_loss_weight)
        metrics = dict(acc=lambda: MulticlassAccuracy(num_classes, average="micro"),
                       macro_f1=lambda: MulticlassF1Score(num_classes, average="macro"))
        self.metrics = nn.ModuleDict({f"{stage}_{name}": make() for stage in ("train", "val", "test")
                                      for name, make in metrics.items()})
        self._recording_votes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # -- the model ------------------------------------------------------------------------------------------------
    def embed(self, waveform: torch.Tensor) -> torch.Tensor:
        """The pooled ResNet feature r [B, c_4] of waveforms [B, N]."""
        maps = self.frontend(waveform)
        if self.augment is not None and self.training:
            maps = self.augment(maps)
        return self.backbone(maps)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(waveform))

    @torch.no_grad()
    def classify(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class probabilities [B, C] and, for a mixture head, the expert each window chose [B] and the router's
        scores [B, E] (a forward in eval mode: nothing is recorded for training)."""
        r = self.embed(waveform)
        out = {"prob": self.head(r).float().softmax(-1)}
        if isinstance(self.head, MoE):
            routing = self.head.router(r)
            out["expert"] = torch.full((r.shape[0],), -1, dtype=torch.long, device=r.device)
            out["expert"][routing.token_index] = routing.expert_index
            out["scores"] = self.head.router.scores(routing.logits)
        return out

    @torch.no_grad()
    def classify_recording(self, waveform: torch.Tensor, sample_rate: int) -> dict[str, torch.Tensor]:
        """A whole recording (samples [N] or channels [C, N] at ``sample_rate``) as the data module reads one: mixed
        to mono, resampled to the model's rate, cut into its full windows (a tail shorter than a window is left
        out, as the data module does; a recording shorter than one window is zero-padded to one). Returns the
        recording's class probabilities ``prob`` [C] (the windows' log-probabilities summed), and per window
        ``window_prob`` [W, C], ``expert`` [W] and ``scores`` [W, E] (a mixture head), ``start`` [W] seconds, and
        the mono ``waveform`` [M] at the model's rate."""
        mono = mono_at(waveform.t() if waveform.dim() == 2 else waveform, sample_rate, self.sample_rate)
        wave = mono
        size = int(round(self.window_seconds * self.sample_rate))
        count = max(1, wave.shape[0] // size)
        wave = F.pad(wave, (0, max(0, size - wave.shape[0])))[: count * size]
        device = next(self.parameters()).device
        out = self.classify(wave.view(count, size).to(device))
        out["window_prob"] = out.pop("prob")
        out["prob"] = out["window_prob"].clamp_min(1e-12).log().sum(0).softmax(-1)
        out["start"] = torch.arange(count) * self.window_seconds
        out["waveform"] = mono
        return out

    @torch.no_grad()
    def fit_normalization(self, loader, max_batches: int | None = None) -> None:
        """Fit the per-frequency normalisation on the windows of ``loader`` (the training split's), once."""
        device = next(self.parameters()).device
        batches = (b[0] if isinstance(b, (list, tuple)) else b for i, b in enumerate(loader)
                   if max_batches is None or i < max_batches)
        self.frontend.norm.fit(self.frontend.raw(w.to(device)) for w in batches)

    def on_train_start(self):
        if not bool(self.frontend.norm.fitted):  # a resumed run keeps the statistics of its checkpoint
            self.fit_normalization(self.trainer.train_dataloader)

    # -- steps ----------------------------------------------------------------------------------------------------
    def routing_labels(self, batch, stage):
        """Count the head's routing by the class of each window."""
        return {"class": batch[1]}

    def task_step(self, batch, stage: str) -> torch.Tensor:
        waveform, labels = batch[0], batch[1]
        logits = self(waveform).float()
        loss = F.cross_entropy(logits, labels)
        size = labels.shape[0]
        self.log(f"{stage}/task_loss" if stage == "train" else f"{stage}/loss", loss, on_step=stage == "train",
                 on_epoch=True, batch_size=size)
        for name in ("acc", "macro_f1"):
            metric = self.metrics[f"{stage}_{name}"]
            metric(logits, labels)
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "acc" and
                     stage != "train", batch_size=size)
        if stage == "test" and len(batch) > 2:
            self._recording_votes.append((batch[2].detach().cpu(), logits.detach().log_softmax(-1).cpu(),
                                          labels.detach().cpu()))
        return loss

    def on_test_epoch_start(self):
        super().on_test_epoch_start()
        self._recording_votes = []

    def on_test_epoch_end(self):
        super().on_test_epoch_end()
        if self._recording_votes:
            groups, logp, labels = (torch.cat(parts) for parts in zip(*self._recording_votes))
            self.log("test/recording_acc", recording_accuracy(groups, logp, labels))
            self._recording_votes = []

    def predict_step(self, batch, batch_idx):
        waveform = batch[0] if isinstance(batch, (list, tuple)) else batch
        out = self.classify(waveform)
        out["pred"] = out["prob"].argmax(-1)
        return out


def recording_accuracy(groups: torch.Tensor, log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy per recording group: the class of summed window log-probabilities (a product of the windows'
    probabilities) against the group's label (a group spanning classes, a speaker, counts per (group, label))."""
    keys = torch.stack([groups, labels], 1).numpy()
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    summed = torch.zeros(len(unique), log_probs.shape[1], dtype=torch.float64)
    summed.index_add_(0, torch.from_numpy(inverse.reshape(-1)), log_probs.double())
    return float((summed.argmax(-1).numpy() == unique[:, 1]).mean())
