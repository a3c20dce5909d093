"""WarmupEMA: Lightning's weight averaging (an EMA of the weights for validation, checkpoints and test) with a warm-up.

    ema <- d_n * ema + (1 - d_n) * theta,   d_n = min(decay, (1 + n) / (10 + n))   (n: the updates made before)

Lightning's ``EMAWeightAveraging`` keeps ``decay`` from its second update on, so over a short run the average still
holds the first steps' weights (0.995^94 = 0.62 of its weight after 94 steps: a 4-epoch CTR run of 6,000 rows
scored 0.53 AUC with it against 0.67 without). The warm-up is the formula of diffusers' ``EMAModel`` default
(``get_decay`` without ``use_ema_warmup``); as in ``AveragedModel`` the first update copies, the average spans about
the last n steps early on, and d_n reaches ``decay`` after (10 decay - 1) / (1 - decay) updates (1,790 for 0.995).
Everything else is Lightning's ``WeightAveraging``: an ``AveragedModel`` of the module updated after every optimizer
step, swapped in for validation, written as the checkpoint's ``state_dict`` (the trained weights under
``current_model_state``) and copied into the module when training ends.

In a YAML config::

    trainer:
      callbacks:
        - class_path: moezoo.training.WarmupEMA
          init_args: {decay: 0.995}
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging

from moezoo.errors import MoezooError


def warmup_decay(decay: float, num_averaged: int) -> float:
    """d_n = min(decay, (1 + n) / (10 + n)) for the update after n earlier ones."""
    return min(decay, (1 + num_averaged) / (10 + num_averaged))


class WarmupEMA(WeightAveraging):
    """An EMA of the weights after every optimizer step at ``min(decay, (1 + n) / (10 + n))`` (module docstring)."""

    def __init__(self, decay: float = 0.999, use_buffers: bool = True, device: str | None = None):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
            raise MoezooError(f"trainer.callbacks: WarmupEMA decay must be a number in (0, 1), got {decay!r}")
        self.decay = float(decay)
        super().__init__(device=device, use_buffers=use_buffers, avg_fn=self.average)

    def average(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        """``AveragedModel``'s ``avg_fn``: one EMA step after ``num_averaged`` earlier updates."""
        d = warmup_decay(self.decay, int(num_averaged))
        return d * averaged + (1 - d) * current
