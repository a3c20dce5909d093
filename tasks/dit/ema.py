"""WeightEMA: an exponential moving average of a module's weights (diffusers' ``EMAModel``), swapped in to evaluate.

    ema <- decay_t * ema + (1 - decay_t) * theta        after every optimizer step (theta: the trained weights)

The official ProMoE (ali-vilab/ProMoE ``train.py``, ``update_ema``) starts the EMA at the initial weights, updates
it after every step at a constant decay 0.9999 and samples and computes FID with it (``sample.py`` loads
``ema_model_state_dict``). ``warmup`` picks decay_t (t = 0, 1, ... the updates before this one; diffusers'
``EMAModel.get_decay``):

- ``none``: decay_t = decay from the first step (the official rule). 0.9999 over a 690-step run leaves
  0.9999^690 = 0.93 of the weight on the initial (untrained) weights.
- ``num_updates`` (diffusers' default): decay_t = min(decay, (1 + t) / (10 + t)), the first update a copy; at step
  690 it is 0.987 (an average over about the last 80 steps), and it reaches 0.9999 only after 90,000 steps.
- ``power`` (diffusers' ``use_ema_warmup``): decay_t = min(decay, 1 - (1 + t)^(-2/3)).

Only the parameters are averaged; buffers stay the live ones (the official copies them into its EMA every step).
``applied()`` puts the averaged weights into the module in place (the optimizer keeps its tensors) and puts the
trained ones back on exit. ``state_dict()`` / ``load_state_dict()`` hold the averages by parameter name (a task keeps
them in its checkpoints); ``reset()`` starts the EMA again from the module's weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn as nn
from diffusers.training_utils import EMAModel

WARMUPS = ("none", "num_updates", "power")


class ConstantDecayEMA(EMAModel):
    """diffusers' ``EMAModel`` at a constant decay from the first update (the official ProMoE's ``update_ema``)."""

    def get_decay(self, optimization_step: int) -> float:
        return self.decay


class WeightEMA:
    """The EMA of ``module``'s parameters, started at their current values (see the module docstring)."""

    def __init__(self, module: nn.Module, decay: float = 0.9999,
                 warmup: Literal["none", "num_updates", "power"] = "num_updates"):
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay!r}")
        if warmup not in WARMUPS:
            raise ValueError(f"ema warmup must be one of {', '.join(WARMUPS)}, got {warmup!r}")
        self.module, self.warmup = module, warmup
        parameters = list(module.parameters())
        if warmup == "none":
            self.ema = ConstantDecayEMA(parameters, decay=decay)
        else:
            self.ema = EMAModel(parameters, decay=decay, use_ema_warmup=warmup == "power")

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.module.named_parameters()]

    @property
    def steps(self) -> int:
        """The updates so far (the warm-up's t)."""
        return self.ema.optimization_step

    @steps.setter
    def steps(self, value: int) -> None:
        self.ema.optimization_step = value

    def reset(self) -> None:
        """The EMA starts again from the module's current weights, with no update made."""
        with torch.no_grad():
            for shadow, param in zip(self.ema.shadow_params, self.module.parameters()):
                shadow.copy_(param.detach())
        self.steps = 0

    def _follow_device(self) -> None:
        param = next(self.module.parameters())
        if self.ema.shadow_params[0].device != param.device:
            self.ema.to(device=param.device)

    def update(self) -> None:
        """One EMA step toward the module's current parameters (call after each optimizer step)."""
        self._follow_device()
        self.ema.step(self.module.parameters())

    @contextmanager
    def applied(self):
        """The module holds the averaged weights inside the block and its trained weights again after it."""
        self._follow_device()
        parameters = list(self.module.parameters())
        self.ema.store(parameters)
        self.ema.copy_to(parameters)
        try:
            yield self.module
        finally:
            self.ema.restore(parameters)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights by parameter name."""
        return dict(zip(self.names, self.ema.shadow_params))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        names = self.names
        missing, extra = sorted(set(names) - state.keys()), sorted(state.keys() - set(names))
        if missing or extra:
            raise KeyError(f"EMA weights do not fit the model: {len(missing)} missing, {len(extra)} unexpected "
                           f"(e.g. {(missing or extra)[0]})")
        with torch.no_grad():
            for name, shadow in zip(names, self.ema.shadow_params):
                shadow.copy_(state[name])
