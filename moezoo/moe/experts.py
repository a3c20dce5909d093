"""Expert banks: E experts applied to routed assignments, ``bank(x, routing) -> y``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from moezoo import kernels

from .routing import Routing


class GroupedMLP(nn.Module):
    """E MLP experts with stacked weights, run through ``moezoo.kernels.moe_mlp`` in one call.

    FFN_e(x) = act(x W1_e + b1_e) W2_e + b2_e, or with ``glu`` act(x A_e) * (x B_e) W2_e (SwiGLU: act="silu").
    y_t = sum_{(t, e, w) in routing} w * FFN_e(x_t).

    Shapes: w1 [E, d, h] ([E, d, 2h] with glu), w2 [E, h, d], b1 [E, h], b2 [E, d].
    """

    def __init__(self, num_experts: int, dim: int, hidden: int, *, activation: str = "gelu", glu: bool = False,
                 bias: bool = True, backend: str | None = None):
        super().__init__()
        kernels.apply_activation(torch.zeros(2), activation, False)  # fail early on an unknown name
        self.num_experts, self.dim, self.hidden = num_experts, dim, hidden
        self.activation, self.glu, self.backend = activation, glu, backend
        width = 2 * hidden if glu else hidden
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, width))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.b1 = nn.Parameter(torch.empty(num_experts, width)) if bias else None
        self.b2 = nn.Parameter(torch.empty(num_experts, dim)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # each expert initialised as nn.Linear would be: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        for w, b, fan_in in ((self.w1, self.b1, self.dim), (self.w2, self.b2, self.hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            if b is not None:
                nn.init.uniform_(b, -bound, bound)

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        return kernels.moe_mlp(
            x, routing.token_index, routing.expert_index, routing.weight, self.w1, self.w2, self.b1, self.b2,
            self.activation, self.glu, backend=self.backend,
        )

    def extra_repr(self) -> str:
        kind = f"{self.activation}-glu" if self.glu else self.activation
        return f"num_experts={self.num_experts}, dim={self.dim}, hidden={self.hidden}, activation={kind}"


class ModuleExperts(nn.Module):
    """E arbitrary expert modules (a GNN, a conv head, a tower), applied in a loop over experts.

    Each module maps [n, d_in] -> [n, d_out]; y_t = sum_{(t, e, w)} w * expert_e(x_t). Experts that receive no
    token are not called.
    """

    def __init__(self, experts: Sequence[nn.Module], out_dim: int | None = None):
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.num_experts = len(self.experts)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        y = None
        for e, expert in enumerate(self.experts):
            mine = routing.expert_index == e
            if not bool(mine.any()):
                continue
            tokens = routing.token_index[mine]
            out = expert(x[tokens]) * routing.weight[mine].unsqueeze(-1).to(x.dtype)
            if y is None:
                y = out.new_zeros(x.shape[0], out.shape[-1])
            y = y.index_add(0, tokens, out)
        if y is None:
            y = x.new_zeros(x.shape[0], self.out_dim or x.shape[-1])
        return y


class DenseMLP(nn.Module):
    """One dense FFN, act(x W1 + b1) W2 + b2 (or its GLU form), with the activations the expert banks use.

    Serves as the always-on shared expert (DeepSeekMoE) and as the dense baseline of an MoE FFN.
    """

    def __init__(self, dim: int, hidden: int, *, activation: str = "gelu", glu: bool = False, bias: bool = True):
        super().__init__()
        self.activation, self.glu = activation, glu
        self.fc1 = nn.Linear(dim, 2 * hidden if glu else hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(kernels.apply_activation(self.fc1(x), self.activation, self.glu))
