"""DiTTask: trains a MoEDiT with a diffusers objective, writes sample grids, and tests with FID-cls.

Training: ``objective`` rectified_flow (velocity target, logit-normal sigma) or ddpm (epsilon target), plus the MoE
aux losses (TaskModule). Validation: the same loss at fixed noise (seeded) so epochs compare. Each validation epoch
writes ``samples/epoch_NNN.png`` (one row per class, ``cfg_scale``). Test (``moezoo test``): ``test/fid_cls`` between
``samples_per_class`` generated images per class and the test split, and ``test/sample_acc`` (the classifier's
accuracy on the generated images, against the class they were asked for); see ``fid.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from torchvision.utils import save_image

from moezoo.training import TaskModule

from .fid import frechet_distance, load_or_train_classifier
from .model import MoEDiT
from .objectives import ddpm_loss, rectified_flow_loss
from .pipeline import MoEDiTPipeline


class DiTTask(TaskModule):
    """Class-conditional MoE DiT on an image data module (``DiffusionImageData``)."""

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(self, routing: Literal["dense", "token_choice", "expert_choice", "promoe"] = "promoe",
                 patch_size: int = 2, hidden_size: int = 96, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, num_experts: int = 4, top_k: int = 2, capacity_factor: float = 1.0,
                 moe_every: int = 2, class_dropout_prob: float = 0.1, balance_loss_weight: float = 0.01,
                 contrastive_loss_weight: float = 1.0,
                 objective: Literal["rectified_flow", "ddpm"] = "rectified_flow", cfg_scale: float = 1.5,
                 sample_steps: int = 20, samples_per_class: int = 20, lr: float = 3e-4, weight_decay: float = 0.0,
                 warmup_epochs: float = 0.0):
        super().__init__(lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, cosine=False)
        self.save_hyperparameters()
        self.model: MoEDiT | None = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        data = self.trainer.datamodule
        h = self.hparams
        self.model = MoEDiT(sample_size=data.image_size, patch_size=h.patch_size, in_channels=data.channels,
                            hidden_size=h.hidden_size, depth=h.depth, num_heads=h.num_heads, mlp_ratio=h.mlp_ratio,
                            num_classes=data.num_classes, class_dropout_prob=h.class_dropout_prob,
                            routing=h.routing, num_experts=h.num_experts, top_k=h.top_k,
                            capacity_factor=h.capacity_factor, moe_every=h.moe_every,
                            balance_loss_weight=h.balance_loss_weight,
                            contrastive_loss_weight=h.contrastive_loss_weight)
        self.train_scheduler = DDPMScheduler(num_train_timesteps=1000)

    def scheduler(self):
        if self.hparams.objective == "rectified_flow":
            return FlowMatchEulerDiscreteScheduler()
        return DDPMScheduler(num_train_timesteps=1000)

    def task_step(self, batch, stage):
        images, labels = batch
        generator = None
        if stage != "train":  # fixed noise: validation losses compare across epochs
            generator = torch.Generator(device=images.device).manual_seed(1234)
        if self.hparams.objective == "rectified_flow":
            loss = rectified_flow_loss(self.model, images, labels, generator=generator)
        else:
            loss = ddpm_loss(self.model, self.train_scheduler, images, labels, generator=generator)
        self.log("train/task_loss" if stage == "train" else f"{stage}/loss", loss, batch_size=len(labels),
                 prog_bar=stage == "val")
        if stage == "test":
            self._test_images.append(images.detach().cpu())
        return loss

    def sample(self, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Images in [0, 1] for ``labels``, with the configured guidance and steps."""
        pipe = MoEDiTPipeline(transformer=self.model, scheduler=self.scheduler())
        pipe.set_progress_bar_config(disable=True)
        was_training = self.model.training
        self.model.eval()
        generator = torch.Generator(device=self.device).manual_seed(seed)
        images = pipe(labels, guidance_scale=self.hparams.cfg_scale, num_inference_steps=self.hparams.sample_steps,
                      generator=generator).images
        self.model.train(was_training)
        return images

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        classes = self.model.config.num_classes
        labels = torch.arange(classes, device=self.device).repeat_interleave(4)
        grid = self.sample(labels)
        path = Path(self.trainer.default_root_dir) / "samples" / f"epoch_{self.current_epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path, nrow=4)

    def on_test_epoch_start(self):
        self._test_images = []

    def on_test_epoch_end(self):
        classifier, _ = load_or_train_classifier(self.trainer.datamodule)
        classifier = classifier.to(self.device)
        classes = self.model.config.num_classes
        labels = torch.arange(classes, device=self.device).repeat_interleave(self.hparams.samples_per_class)
        fakes = torch.cat([self.sample(chunk, seed=i) for i, chunk in enumerate(labels.split(256))])
        with torch.no_grad():
            real = classifier.features(torch.cat(self._test_images).to(self.device))
            fake = classifier.features(fakes * 2 - 1)  # the classifier reads [-1, 1] images like the data
            accuracy = (classifier.head(fake).argmax(-1) == labels).float().mean()
        self.log_dict({"test/fid_cls": frechet_distance(real, fake), "test/sample_acc": accuracy})
