"""ImageClassifier: an MoE ViT (timm's VisionTransformer with MoE MLPs) trained with cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from moezoo.backbones import moe_vit
from moezoo.moe import MoEArgs
from moezoo.training import TaskModule


class ImageClassifier(TaskModule):
    """MoE-ViT classifier. Loss: CE(logits, y) (+ the routers' aux losses); metric: top-1 accuracy.

    The backbone arguments are timm's (``img_size``, ``patch_size``, ``embed_dim``, ...); ``moe`` configures the MoE
    FFN placed in every ``moe_every``-th block. Under the CLI ``num_classes``, ``img_size`` and ``in_chans`` come from
    the data module (linked), so an image folder of any number of classes needs no model flag.
    """

    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(
        self,
        num_classes: int = 10,
        img_size: int = 8,
        in_chans: int = 1,
        patch_size: int = 2,
        embed_dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        moe: MoEArgs | None = None,
        moe_every: int = 2,
        drop_path_rate: float = 0.0,
        label_smoothing: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 0.0,
        cosine: bool = True,
    ):
        super().__init__(lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, cosine=cosine)
        self.save_hyperparameters()
        self.num_classes, self.img_size, self.in_chans = num_classes, img_size, in_chans
        self.label_smoothing = label_smoothing
        self.net = moe_vit(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                           embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           moe=moe or MoEArgs(num_experts=4, k=2), moe_every=moe_every,
                           drop_path_rate=drop_path_rate, global_pool="avg", class_token=False)
        self.train_acc, self.val_acc, self.test_acc = (MulticlassAccuracy(num_classes, average="micro")
                                                       for _ in range(3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def routing_labels(self, batch, stage):
        """Count each MoE layer's load by the class of the image its patch tokens come from."""
        return {"class": batch[1]}

    def task_step(self, batch, stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing if stage == "train" else 0.0)
        accuracy = getattr(self, f"{stage}_acc")
        accuracy(logits, labels)
        on_step = stage == "train"
        self.log(f"{stage}/task_loss" if stage == "train" else f"{stage}/loss", loss, on_step=on_step,
                 on_epoch=True, batch_size=labels.shape[0])
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=stage != "train",
                 batch_size=labels.shape[0])
        return loss

    def predict_step(self, batch, batch_idx):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        probs = self(images).softmax(-1)
        return {"pred": probs.argmax(-1), "prob": probs}
