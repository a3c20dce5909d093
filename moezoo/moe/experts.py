"""Expert banks: E experts behind one of two interfaces, so that routers, layers and gates can swap them.

- Routed banks compute each expert on the tokens routed to it, ``bank(x [T, d], routing) -> y [T, d_out]``:

      y_t = sum_{(t, e, w) in routing} w * f_e(x_t)

  ``GroupedMLP`` (an FFN per expert, one fused kernel call), ``RoutedStackedMLP`` (a deep MLP per expert, optionally
  STAR-factored, one grouped GEMM per layer; ``moezoo.moe.stacked``), ``FiLMExperts`` (feature-modulated experts,
  MoFME: a scale and a shift per expert, one grouped GEMM) and ``ModuleExperts`` (any modules, a loop).
  The ``MoE`` layer holds one; a hard top-1 choice (a cluster, a task) is a Routing with weight 1.
- Dense banks run every expert on every token, ``bank(x [T, d]) -> h [E, T, d_out]`` with h_e = f_e(x) (``StackedMLP``
  in ``moezoo.moe.stacked``), for gates that mix precomputed outputs: ``GatedMixture`` (MMoE, PLE, HoME: several
  gates share one bank's outputs).

``DenseMLP`` is one FFN, the always-on shared expert and the dense baseline. Stacked weights [E, d_in, d_out] are
initialised per expert as ``nn.Linear`` is (``init_stacked_linear_``), activations are looked up by name in
``moezoo.kernels.activations``, and every bank that owns parameters takes ``device`` and ``dtype`` for them (as
timm's layers do), so a model can be built on ``device="meta"`` and materialised with ``moezoo.moe.materialize``
(``to_empty``, the non-persistent buffers, optionally ``reset_parameters``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from moezoo import kernels
from moezoo.kernels.activations import canonical_activation

from .routing import Routing


def init_stacked_linear_(weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Initialise each expert of stacked weights [E, d_in, d_out] (and biases [E, ..., d_out]) as nn.Linear would:
    U(-1/sqrt(d_in), 1/sqrt(d_in))."""
    bound = 1.0 / math.sqrt(weight.shape[-2])
    nn.init.uniform_(weight, -bound, bound)
    if bias is not None:
        nn.init.uniform_(bias, -bound, bound)


class GroupedMLP(nn.Module):
    """E MLP experts with stacked weights, run through ``moezoo.kernels.moe_mlp`` in one call (a routed bank).

    FFN_e(x) = act(x W1_e + b1_e) W2_e + b2_e, or with ``glu`` act(x A_e) * (x B_e) W2_e (SwiGLU: act="silu").
    y_t = sum_{(t, e, w) in routing} w * FFN_e(x_t).

    Shapes: x [T, d], routing over E experts -> y [T, d]; w1 [E, d, h] ([E, d, 2h] with glu), w2 [E, h, d],
    b1 [E, h], b2 [E, d].
    """

    def __init__(self, num_experts: int, dim: int, hidden: int, *, activation: str = "gelu", glu: bool = False,
                 bias: bool = True, backend: str | None = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num_experts, self.dim, self.hidden = num_experts, dim, hidden
        self.activation, self.glu, self.backend = canonical_activation(activation), glu, backend
        width = 2 * hidden if glu else hidden
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, width, **dd))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim, **dd))
        self.b1 = nn.Parameter(torch.empty(num_experts, width, **dd)) if bias else None
        self.b2 = nn.Parameter(torch.empty(num_experts, dim, **dd)) if bias else None
        self.reset_parameters()

    @classmethod
    def from_dense(cls, dense: DenseMLP, num_experts: int, *, backend: str | None = None) -> GroupedMLP:
        """Sparse upcycling (Komatsuzaki et al. 2023): E experts, each a copy of the dense FFN ``dense``.

        Behind a router whose weights sum to 1 per token (top-k renormalised), the MoE computes the dense FFN at
        first: sum_e w_e FFN(x) = FFN(x). The copies then train apart.
        """
        fc1, fc2 = dense.fc1, dense.fc2
        bank = cls(num_experts, fc1.in_features, fc2.in_features, activation=dense.activation, glu=dense.glu,
                   bias=fc1.bias is not None, backend=backend, device="meta", dtype=fc1.weight.dtype)
        bank = bank.to_empty(device=fc1.weight.device)  # no init to throw away: every value is copied
        with torch.no_grad():
            bank.w1.copy_(fc1.weight.t().expand_as(bank.w1))
            bank.w2.copy_(fc2.weight.t().expand_as(bank.w2))
            if bank.b1 is not None:
                bank.b1.copy_(fc1.bias.expand_as(bank.b1))
                bank.b2.copy_(fc2.bias.expand_as(bank.b2))
        return bank

    def reset_parameters(self) -> None:
        init_stacked_linear_(self.w1, self.b1)
        init_stacked_linear_(self.w2, self.b2)

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        return kernels.moe_mlp(
            x, routing.token_index, routing.expert_index, routing.weight, self.w1, self.w2, self.b1, self.b2,
            self.activation, self.glu, backend=self.backend,
        )

    def extra_repr(self) -> str:
        kind = f"{self.activation}-glu" if self.glu else self.activation
        return f"num_experts={self.num_experts}, dim={self.dim}, hidden={self.hidden}, activation={kind}"


class FiLMExperts(nn.Module):
    """E feature-modulated experts (MoFME, Zhang et al. AAAI 2024): each expert is a FiLM of its input (a routed bank).

    FME_e(h) = (h A_e + a_e) * h + (h B_e + b_e), an input-dependent scale and shift of the features;
    y_t = sum_{(t, e, w) in routing} w * FME_e(h_t). An expert costs 2 d^2 weights where an FFN expert of hidden
    width 4d costs 8 d^2: MoFME puts the capacity in a shared block before the bank and an adaptor after it (the
    official code, github.com/RoyZry98/MoFME-Pytorch ``models/moe/film.py``: ``Modular_Experts`` are two
    ``nn.Linear(dim, dim)``, ``x = conv_product(x) * x + conv_add(x)``). Scale and shift come from one grouped GEMM
    over the expert-sorted rows (``moezoo.kernels.grouped_mm``) with the stacked ``weight = [A_e | B_e]``.

    Shapes: h [T, d], routing over E experts -> y [T, d]; weight [E, d, 2d], bias [E, 2d].
    """

    def __init__(self, num_experts: int, dim: int, *, bias: bool = True, backend: str | None = None, device=None,
                 dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num_experts, self.dim, self.backend = num_experts, dim, backend
        self.weight = nn.Parameter(torch.empty(num_experts, dim, 2 * dim, **dd))
        self.bias = nn.Parameter(torch.empty(num_experts, 2 * dim, **dd)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_stacked_linear_(self.weight, self.bias)

    def forward(self, h: torch.Tensor, routing: Routing) -> torch.Tensor:
        order, offsets = kernels.sort_by_expert(routing.expert_index, self.num_experts)
        tokens, experts = routing.token_index[order], routing.expert_index[order]
        rows = h[tokens]
        film = kernels.grouped_mm(rows, self.weight, offsets, backend=self.backend)
        if self.bias is not None:
            film = film + self.bias[experts].to(film.dtype)
        scale, shift = film.chunk(2, dim=-1)
        out = (scale * rows + shift) * routing.weight[order].unsqueeze(-1).to(film.dtype)
        return out.new_zeros(h.shape[0], self.dim).index_add(0, tokens, out)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, dim={self.dim}"


class ModuleExperts(nn.Module):
    """E arbitrary expert modules (a GNN, a conv head, a tower), applied in a loop over experts (a routed bank).

    Each module maps [n, d_in] -> [n, d_out]; y_t = sum_{(t, e, w)} w * expert_e(x_t). Experts that receive no
    token are not called. It owns no parameters of its own: the experts are built by the caller, on the caller's
    device and dtype.
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

    Serves as the always-on shared expert (DeepSeekMoE) and as the dense baseline of an MoE FFN; shapes [..., d] ->
    [..., d]. ``GroupedMLP.from_dense`` upcycles it into E experts.
    """

    def __init__(self, dim: int, hidden: int, *, activation: str = "gelu", glu: bool = False, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.activation, self.glu = canonical_activation(activation), glu
        self.fc1 = nn.Linear(dim, 2 * hidden if glu else hidden, bias=bias, **dd)
        self.fc2 = nn.Linear(hidden, dim, bias=bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(kernels.apply_activation(self.fc1(x), self.activation, self.glu))
