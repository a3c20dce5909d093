"""DiTTask: trains a MoEDiT with a diffusers objective, writes sample grids, and tests with FID-cls.

Training: ``objective`` rectified_flow (velocity target, logit-normal sigma) or ddpm (epsilon target), plus the MoE
aux losses (TaskModule). Validation: the same loss at fixed noise (seeded) so epochs compare. Each validation epoch
writes ``samples/epoch_NNN.png`` (one row per class, ``cfg_scale``). Test (``moezoo test``): ``test/fid_cls`` between
``samples_per_class`` generated images per class and the test split, and ``test/sample_acc`` (the classifier's
accuracy on the generated images, against the class they were asked for); see ``fid.py``. With
``inception_weights`` also ``test/fid_inception`` (the standard Inception FID, torchmetrics). Validation counts the
routing by class; test routes the test images at fixed timesteps (``specialisation.py``) and the core reports the
expert load by timestep and by class (``expert_load/test_by_{timestep,class}.png``, ``routing_by_label.json``) and
their normalised mutual information with the expert choice (``test/routing/class_nmi``, ``test/routing/timestep_nmi``).

EMA (``ema_decay``, ``ema_warmup``; ``ema.py``): the EMA of the transformer's weights is updated after every optimizer
step and swapped in for the whole of validation and test (the loss that picks the best checkpoint, the sample grids,
FID-cls, the routing counts), as the official ProMoE samples and scores with its EMA. A checkpoint holds it beside
the trained weights (``checkpoint["ema"]``: weights by parameter name, update count); a hub folder (``export``,
``save_pretrained``) holds the EMA weights as the model's weights, and a model loaded from weights alone starts its
EMA from them. ``ema_weights()`` swaps the EMA in elsewhere (the demo).

Latent space: ``vae`` names a diffusers ``AutoencoderKL`` folder (``save_pretrained`` layout, local or a hub id in the
cache); the model then trains on its latents (``latent_dist.sample() * scaling_factor``) and samples are decoded.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from lightning.pytorch.utilities import rank_zero_warn
from torchvision.utils import save_image

from moezoo.errors import MoezooError
from moezoo.training import TaskModule

from .ema import WARMUPS, WeightEMA
from .fid import fid_cls, inception_fid
from .model import MoEDiT
from .objectives import ddpm_loss, rectified_flow_loss
from .pipeline import MoEDiTPipeline
from .specialisation import route_over_timesteps, timestep_bin_names


def load_vae(path: str) -> AutoencoderKL:
    """A frozen diffusers AutoencoderKL from ``path``; a clear error when it is not one."""
    try:
        vae = AutoencoderKL.from_pretrained(path)
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0]
        raise MoezooError(f"model.vae: {path} is not a diffusers AutoencoderKL folder ({reason})") from None
    return vae.eval().requires_grad_(False)


class DiTTask(TaskModule):
    """Class-conditional MoE DiT on an image data module (``DiffusionImageData``).

    Args:
        transformer: the diffusion transformer, injected (LightningCLI's dependency injection): a class called as
            ``transformer(sample_size, in_channels, num_classes)`` with its architecture given in the config, e.g.
            ``transformer: {class_path: moezoo.tasks.dit.MoEDiT, init_args: {routing: promoe, num_experts: 4}}``;
            default ``MoEDiT`` with its defaults. The sample size and channels are the data's, or the VAE's latent
            ones with ``vae``.
        objective: ``rectified_flow`` (velocity target) or ``ddpm`` (epsilon target).
        cfg_scale, sample_steps: the classifier-free guidance scale and the sampler's steps of the sample grids and
            of the test samples; ``samples_per_class``: generated images per class at test.
        ema_decay: the decay of the EMA of the weights that validation and test use (the official ProMoE's
            0.9999); None: no EMA, the trained weights. ``ema_warmup``: ``none`` (constant decay, the official),
            ``num_updates`` (diffusers' min(decay, (1 + t) / (10 + t))) or ``power`` (see ``ema.py``).
        vae: an AutoencoderKL folder for latent diffusion; ``inception_weights``: torch-fidelity's InceptionV3
            weights file for the standard FID at test; ``timestep_bins``: the bins of the expert-load-by-timestep
            table.
        image_size, channels, num_classes: the data's (linked from the data module by the CLI); ``fid_classifier``:
            a callable returning (FID-cls classifier, its accuracy), the data module's ``fid_classifier`` under the
            CLI.
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(self, transformer: Callable[[int, int, int], MoEDiT] | None = None,
                 objective: Literal["rectified_flow", "ddpm"] = "rectified_flow", cfg_scale: float = 1.5,
                 sample_steps: int = 20, samples_per_class: int = 20, lr: float = 3e-4, weight_decay: float = 0.0,
                 warmup_epochs: float = 0.0, vae: str | None = None, inception_weights: str | None = None,
                 timestep_bins: int = 10, image_size: int = 16, channels: int = 1, num_classes: int = 10,
                 fid_classifier: Callable[[], tuple] | None = None, ema_decay: float | None = None,
                 ema_warmup: Literal["none", "num_updates", "power"] = "num_updates"):
        super().__init__(lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, cosine=False)
        if inception_weights is not None and not Path(inception_weights).expanduser().is_file():
            raise MoezooError(f"model.inception_weights: {inception_weights} is not a file (torch-fidelity's "
                              "weights-inception-2015-12-05-6726825d.pth)")
        if ema_decay is not None and (isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float))
                                      or not 0 < ema_decay < 1):
            raise MoezooError(f"model.init_args.ema_decay: must be a number in (0, 1) or null, got {ema_decay!r}")
        if ema_warmup not in WARMUPS:
            raise MoezooError(f"model.init_args.ema_warmup: must be one of {', '.join(WARMUPS)}, got {ema_warmup!r}")
        self.save_hyperparameters(ignore=["fid_classifier"])
        self.make_transformer = transformer or MoEDiT
        self.fid_classifier = fid_classifier
        self.routing_label_names = {"timestep": timestep_bin_names(timestep_bins)}
        self.model: MoEDiT | None = None
        self.vae: AutoencoderKL | None = None
        self.ema: WeightEMA | None = None
        self._evaluating_ema = ExitStack()

    def configure_model(self) -> None:
        if self.model is not None:
            return
        h = self.hparams
        sample_size, channels = h.image_size, h.channels
        if h.vae is not None:
            self.vae = load_vae(h.vae)
            if self.vae.config.in_channels != h.channels:
                raise MoezooError(f"model.vae: {h.vae} reads {self.vae.config.in_channels}-channel images but the "
                                  f"data has {h.channels} channels")
            sample_size = h.image_size // 2 ** (len(self.vae.config.block_out_channels) - 1)
            channels = self.vae.config.latent_channels
        self.model = self.make_transformer(sample_size, channels, h.num_classes)
        if h.get("ema_decay") is not None:
            self.ema = WeightEMA(self.model, h.ema_decay, h.get("ema_warmup", "num_updates"))
        self.train_scheduler = DDPMScheduler(num_train_timesteps=1000)

    def scheduler(self):
        if self.hparams.objective == "rectified_flow":
            return FlowMatchEulerDiscreteScheduler()
        return DDPMScheduler(num_train_timesteps=1000)

    def state_dict(self, *args, **kwargs):
        # the VAE is frozen and loaded from its own folder: keep it out of the checkpoints
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if not k.startswith("vae.")}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.vae is not None:
            state_dict = {**state_dict, **{f"vae.{k}": v for k, v in self.vae.state_dict().items()}}
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if self.ema is not None:
            pending, self._checkpoint_ema = getattr(self, "_checkpoint_ema", None), None
            if pending is not None:  # a checkpoint's EMA (on_load_checkpoint came first)
                self.ema.load_state_dict(pending["weights"])
                self.ema.steps = int(pending["steps"])
            else:  # weights alone (a hub folder: its weights are the EMA ones): the EMA starts from them
                self.ema.reset()
        return result

    def on_save_checkpoint(self, checkpoint):
        if self.ema is not None:  # the averaged weights beside the trained ones, and the warm-up's step count
            checkpoint["ema"] = {"weights": {k: v.detach().clone() for k, v in self.ema.state_dict().items()},
                                 "steps": self.ema.steps}

    def on_load_checkpoint(self, checkpoint):
        if self.ema is None:
            return
        self._checkpoint_ema = checkpoint.get("ema")
        if self._checkpoint_ema is None:
            rank_zero_warn("model.init_args.ema_decay: the checkpoint holds no EMA (trained without one); the EMA "
                           "starts from its weights")

    def _save_pretrained(self, save_directory) -> None:
        # a hub folder holds the weights the model samples with: the EMA ones (as diffusers' training scripts save
        # their EMA model), so the folder loads into any DiTTask, with or without an EMA
        with self.ema_weights():
            super()._save_pretrained(save_directory)

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update()

    def ema_weights(self):
        """A context in which the transformer holds its EMA weights (nothing changes without an EMA)."""
        return self.ema.applied() if self.ema is not None else nullcontext()

    def _start_evaluation(self) -> None:
        self._evaluating_ema.close()
        self._evaluating_ema.enter_context(self.ema_weights())

    def to_model_space(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> what the model diffuses: the images, or the VAE's scaled latents."""
        if self.vae is None:
            return images
        with torch.no_grad():
            latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.sample(generator)
        return latents * self.vae.config.scaling_factor

    def routing_labels(self, batch, stage):
        # at test the routing is counted over fixed timesteps instead (on_test_epoch_end), not on the random ones
        return {"class": batch[1]} if stage == "val" else None

    def task_step(self, batch, stage):
        images, labels = batch
        generator = None
        if stage != "train":  # fixed noise: validation losses compare across epochs
            generator = torch.Generator(device=images.device).manual_seed(1234)
        if stage == "test":
            self._test_images.append(images.detach().cpu())
            self._test_labels.append(labels.detach().cpu())
        images = self.to_model_space(images, generator)
        if self.hparams.objective == "rectified_flow":
            loss = rectified_flow_loss(self.model, images, labels, generator=generator)
        else:
            loss = ddpm_loss(self.model, self.train_scheduler, images, labels, generator=generator)
        self.log("train/task_loss" if stage == "train" else f"{stage}/loss", loss, batch_size=len(labels),
                 prog_bar=stage == "val")
        return loss

    def sample(self, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Images in [0, 1] for ``labels``, with the configured guidance and steps."""
        pipe = MoEDiTPipeline(transformer=self.model, scheduler=self.scheduler(), vae=self.vae)
        pipe.set_progress_bar_config(disable=True)
        was_training = self.model.training
        self.model.eval()
        generator = torch.Generator(device=self.device).manual_seed(seed)
        images = pipe(labels, guidance_scale=self.hparams.cfg_scale, num_inference_steps=self.hparams.sample_steps,
                      generator=generator).images
        self.model.train(was_training)
        return images

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._start_evaluation()

    def on_validation_epoch_end(self):
        try:
            self._validation_epoch_end()
        finally:
            self._evaluating_ema.close()  # the trained weights again, before the checkpoint is written

    def _validation_epoch_end(self):
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        classes = self.model.config.num_classes
        labels = torch.arange(classes, device=self.device).repeat_interleave(4)
        grid = self.sample(labels)
        path = Path(self.trainer.default_root_dir) / "samples" / f"epoch_{self.current_epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path, nrow=4)

    def on_test_epoch_start(self):
        super().on_test_epoch_start()
        self._test_images, self._test_labels = [], []
        self._start_evaluation()

    def on_test_epoch_end(self):
        try:
            self._test_epoch_end()
        finally:
            self._evaluating_ema.close()

    def _test_epoch_end(self):
        if self.fid_classifier is None:
            raise MoezooError("test needs the FID-cls classifier of the training images: run it through the moezoo "
                              "CLI with the data module (data.fid_classifier), or pass model.fid_classifier")
        classifier, _ = self.fid_classifier()
        classifier = classifier.to(self.device)
        classes = self.model.config.num_classes
        labels = torch.arange(classes, device=self.device).repeat_interleave(self.hparams.samples_per_class)
        fakes = torch.cat([self.sample(chunk, seed=i) for i, chunk in enumerate(labels.split(256))])
        real_images = torch.cat(self._test_images).to(self.device)
        with torch.no_grad():
            fake = classifier.features(fakes * 2 - 1)  # the classifier reads [-1, 1] images like the data
            accuracy = (classifier.head(fake).argmax(-1) == labels).float().mean()
        metrics = {"test/fid_cls": fid_cls(classifier, real_images, fakes * 2 - 1), "test/sample_acc": accuracy}
        if self.hparams.inception_weights is not None:
            weights = Path(self.hparams.inception_weights).expanduser()
            metrics["test/fid_inception"] = inception_fid(real_images / 2 + 0.5, fakes, weights)
        self.log_dict(metrics)
        generator = torch.Generator(device=self.device).manual_seed(4321)
        latents = torch.cat([self.to_model_space(chunk, generator) for chunk in real_images.split(256)])
        route_over_timesteps(self.model, latents, torch.cat(self._test_labels).to(self.device),
                             objective=self.hparams.objective, scheduler=self.train_scheduler,
                             bins=self.hparams.timestep_bins)
        super().on_test_epoch_end()  # logs and plots the load by class and timestep the routing just counted
