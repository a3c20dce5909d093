"""DeweatherModel: one restorer for rain, snow and haze, with a dense, MoE or MoFME FFN (``network``, ``layers``).

Loss: L1(restored, clean) (+ ``perceptual_weight`` * the VGG-16 perceptual loss with user-given weights). Metrics
per weather type and over all images, on the whole evaluation images: PSNR and SSIM (torchmetrics, data range 1),
and the degraded input's PSNR for reference (``<stage>/psnr_<weather>``, ``<stage>/ssim``, ``<stage>/input_psnr``).
The routing is counted by weather type through the core's label mechanism (``<stage>/routing/weather_nmi``). Each
validation epoch writes input | restored | clean triptychs and, for a mixture, the per-token expert map
(``<root>/triptychs/epoch_<n>.png``).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from moezoo.errors import MoezooError
from moezoo.moe import MoE
from moezoo.training import TaskModule

from .layers import FFNS, ROUTERS
from .network import Restorer
from .plots import save_triptychs

METRICS = ("psnr", "ssim", "input_psnr")


def image_quality(restored: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PSNR (dB) and SSIM of each image [B] against its clean image, both [B, 3, H, W] clamped to [0, 1]."""
    restored, clean = restored.float().clamp(0, 1), clean.float().clamp(0, 1)
    psnr = peak_signal_noise_ratio(restored, clean, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(restored, clean, data_range=1.0, reduction="none")
    return psnr, ssim


class DeweatherModel(TaskModule):
    """All-weather image restoration: degraded [B, 3, H, W] in [0, 1] -> restored.

    Args:
        ffn: ``dense``, ``moe`` (E FFN experts) or ``mofme`` (E feature-modulated experts).
        router: ``topk`` (softmax top-k) or ``uncertainty`` (MoFME's UaR); ignored by ``dense``.
        num_experts, k: experts per MoE layer and experts per token.
        channels, patch_size, dim, depth, num_heads, mlp_ratio, global_residual: the restorer (``network``).
        uar_samples, uar_dropout: the uncertainty router's MC-dropout passes and rate.
        balance_loss_weight: Switch balancing (0: none, as the official MoFME).
        perceptual_weights, perceptual_weight: a torchvision vgg16 state dict and its loss weight (0: L1 only).
        weather_names: the weather type of each id in the data (linked from the data module).
        triptychs: evaluation images drawn into each epoch's triptych (0: none).
    """

    monitor = "val/psnr"
    monitor_mode = "max"

    def __init__(self, ffn: str = "mofme", router: str = "topk", num_experts: int = 4, k: int = 2,
                 channels: int = 16, patch_size: int = 8, dim: int = 128, depth: int = 2, num_heads: int = 4,
                 mlp_ratio: float = 4.0, global_residual: bool = True, uar_samples: int = 5,
                 uar_dropout: float = 0.1, balance_loss_weight: float = 0.0, perceptual_weights: str | None = None,
                 perceptual_weight: float = 0.0, weather_names: list[str] | None = None, triptychs: int = 4,
                 lr: float = 2e-4, weight_decay: float = 0.0, warmup_epochs: float = 0.0, cosine: bool = True):
        super().__init__(lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, cosine=cosine)
        if ffn not in FFNS:
            raise MoezooError(f"model.init_args.ffn: {ffn!r} is not one of {', '.join(FFNS)}")
        if router not in ROUTERS:
            raise MoezooError(f"model.init_args.router: {router!r} is not one of {', '.join(ROUTERS)}")
        if ffn != "dense" and not 1 <= k <= num_experts:
            raise MoezooError(f"model.init_args.k: {k} must be between 1 and num_experts ({num_experts})")
        if dim % num_heads:
            raise MoezooError(f"model.init_args.dim: {dim} must be divisible by num_heads ({num_heads})")
        if perceptual_weight > 0 and not perceptual_weights:
            raise MoezooError("model.init_args.perceptual_weight > 0 needs model.init_args.perceptual_weights (a "
                              "torchvision vgg16 state dict: none can be downloaded)")
        self.save_hyperparameters()
        self.weather_names = list(weather_names or ["all"])
        self.routing_label_names = {"weather": self.weather_names}
        self.restorer = Restorer(ffn, router=router, num_experts=num_experts, k=k, channels=channels,
                                 patch_size=patch_size, dim=dim, depth=depth, num_heads=num_heads,
                                 mlp_ratio=mlp_ratio, global_residual=global_residual,
                                 balance_loss_weight=balance_loss_weight, uar_samples=uar_samples,
                                 uar_dropout=uar_dropout)
        self._drawn = []  # validation images of the epoch for its triptych: (degraded, restored, clean, weather)
        self._perceptual = [None]  # held outside the module tree: the frozen VGG is not part of the checkpoint
        self.metrics = nn.ModuleDict({
            f"{stage}_{metric}_{weather}": MeanMetric()
            for stage in ("val", "test") for metric in METRICS for weather in [*self.weather_names, "all"]})

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.restorer(image)

    # -- loss -------------------------------------------------------------------------------------------------------
    def perceptual(self, restored: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        if self._perceptual[0] is None:
            from .perceptual import PerceptualLoss

            self._perceptual[0] = PerceptualLoss(self.hparams.perceptual_weights)
        loss_fn = self._perceptual[0].to(restored.device)
        return loss_fn(restored, clean)

    def routing_labels(self, batch, stage):
        """Count each MoE layer's routing by the weather type of the image its tokens come from."""
        return {"weather": batch[2]}

    def task_step(self, batch, stage: str) -> torch.Tensor:
        degraded, clean, weather = batch
        restored = self(degraded)
        loss = F.l1_loss(restored.float(), clean.float())
        size = degraded.shape[0]
        if self.hparams.perceptual_weight > 0:
            perceptual = self.perceptual(restored, clean)
            self.log(f"{stage}/perceptual", perceptual, on_step=stage == "train", on_epoch=True, batch_size=size)
            loss = loss + self.hparams.perceptual_weight * perceptual
        self.log(f"{stage}/task_loss" if stage == "train" else f"{stage}/loss", loss, on_step=stage == "train",
                 on_epoch=True, batch_size=size)
        if stage != "train":
            self._update_quality(stage, degraded, restored, clean, weather)
            if stage == "val":
                self._keep_for_triptych(degraded, restored, clean, weather)
        return loss

    def _keep_for_triptych(self, degraded, restored, clean, weather) -> None:
        """Keep the first image of each weather type met (then any) until ``triptychs`` images are kept."""
        for i, w in enumerate(weather.tolist()):
            if len(self._drawn) >= self.hparams.triptychs:
                return
            seen = {kept[3] for kept in self._drawn}
            if w not in seen or len(seen) == len(self.weather_names):
                self._drawn.append((degraded[i].detach(), restored[i].detach().clamp(0, 1), clean[i].detach(), w))

    def _update_quality(self, stage, degraded, restored, clean, weather) -> None:
        psnr, ssim = image_quality(restored, clean)
        values = {"psnr": psnr, "ssim": ssim, "input_psnr": image_quality(degraded, clean)[0]}
        for metric, value in values.items():
            self.metrics[f"{stage}_{metric}_all"].update(value)
            for w in weather.unique().tolist():
                self.metrics[f"{stage}_{metric}_{self.weather_names[w]}"].update(value[weather == w])

    def _log_quality(self, stage: str) -> None:
        for weather in [*self.weather_names, "all"]:
            for metric in METRICS:
                meter = self.metrics[f"{stage}_{metric}_{weather}"]
                if meter.update_count == 0:
                    continue
                name = f"{stage}/{metric}" if weather == "all" else f"{stage}/{metric}_{weather}"
                self.log(name, meter.compute(), prog_bar=name in ("val/psnr", "test/psnr"))
                meter.reset()

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._drawn = []

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        self._log_quality("val")
        if self._drawn and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / "triptychs" / f"epoch_{self.current_epoch:03d}.png"
            self.save_triptychs(path, self._drawn)

    def save_triptychs(self, path: Path, kept) -> Path:
        """Draw kept (degraded, restored, clean, weather) images, each with its expert map, into one PNG."""
        rows = []
        for degraded, restored, clean, _ in kept:
            experts = self.expert_map(degraded[None])[0] if self.is_mixture else None
            rows.append((degraded, restored, clean, experts))
        return save_triptychs(path, rows, self.hparams.num_experts)

    def on_test_epoch_end(self):
        super().on_test_epoch_end()
        self._log_quality("test")

    # -- inspection -----------------------------------------------------------------------------------------------
    @property
    def is_mixture(self) -> bool:
        return self.hparams.ffn != "dense"

    def moe_layers(self) -> list[MoE]:
        return [m for m in self.restorer.modules() if isinstance(m, MoE)]

    @contextmanager
    def evaluating(self):
        """Eval mode inside the block (the deterministic router, no dropout); the previous mode after it."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @torch.no_grad()
    def expert_map(self, degraded: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """The expert of highest gate weight for each patch token of an MoE layer (the last by default), as a map
        [B, rows, cols] over the image (long)."""
        moe = self.moe_layers()[layer]
        seen = []
        handle = moe.router.register_forward_hook(lambda module, args, out: seen.append(out))
        try:
            with self.evaluating():
                self(degraded)
        finally:
            handle.remove()
        routing = seen[-1]
        best = torch.full((routing.num_tokens,), -1.0, device=routing.weight.device)
        best = best.scatter_reduce(0, routing.token_index, routing.weight.float(), reduce="amax")
        top = routing.weight.float() >= best[routing.token_index]
        expert = torch.zeros(routing.num_tokens, dtype=torch.long, device=best.device)
        expert[routing.token_index[top]] = routing.expert_index[top]
        rows, cols = self.restorer.token_grid(*degraded.shape[-2:])
        return expert.view(degraded.shape[0], rows, cols)

    @torch.no_grad()
    def restore(self, degraded: torch.Tensor, tile: int | None = None, overlap: int = 32) -> torch.Tensor:
        """Restore images [B, 3, H, W] whole, or (``tile``) in overlapping tiles of that side averaged where they
        overlap: attention over a whole large image costs memory quadratic in its tokens."""
        with self.evaluating():
            height, width = degraded.shape[-2:]
            if tile is None or (height <= tile and width <= tile):
                return self(degraded).clamp(0, 1)
            if not 0 <= overlap < tile:
                raise MoezooError(f"restore: overlap={overlap} must be in [0, tile={tile})")
            out = torch.zeros_like(degraded)
            count = torch.zeros_like(degraded[:, :1])
            step = tile - overlap
            tops = sorted({*range(0, max(height - tile, 0) + 1, step), max(height - tile, 0)})
            lefts = sorted({*range(0, max(width - tile, 0) + 1, step), max(width - tile, 0)})
            for top in tops:
                for left in lefts:
                    window = (..., slice(top, top + tile), slice(left, left + tile))
                    out[window] += self(degraded[window]).clamp(0, 1)
                    count[window] += 1
            return out / count
