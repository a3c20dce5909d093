"""Deep stacked-expert banks: E MLPs of widths d -> h_1 -> ... -> h_L with weights stacked [E, d_l, d_{l+1}].

Layer l of expert e:  h <- act(norm(h W^l_e + b^l_e)), then dropout; with ``output_layer`` the last layer is plain
(no norm, activation or dropout), as towers and logit heads are.

- ``StackedMLP``, a dense bank: every expert on every sample, ``bank(x) -> [E, B, h_L]``; one GEMM per layer for a
  shared input, one ``bmm`` for a private input per expert. MMoE / PLE / HoME experts and towers.
- ``RoutedStackedMLP``, a routed bank: ``bank(x, routing) -> [T, h_L]``, each assignment through its expert only, one
  grouped GEMM per layer; optionally STAR-factored (AdaptDHM's cluster networks).

Peer CTR libraries (FuxiCTR, torch-rechub, DeepCTR-Torch) loop over an ``nn.ModuleList`` of experts instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from moezoo import kernels
from moezoo.kernels.activations import activation as activation_fn
from moezoo.kernels.activations import canonical_activation

from .experts import init_stacked_linear_
from .routing import Routing


def _widths(bank: str, in_dim: int, hidden: Sequence[int]) -> list[int]:
    if not hidden:
        raise ValueError(f"{bank}: hidden must name at least one layer width, got {list(hidden)!r}")
    return [in_dim, *hidden]


class StackedMLP(nn.Module):
    """E independent MLPs with stacked weights, all run on every sample (a dense bank).

    Args:
        num_experts: E.
        in_dim: input width d.
        hidden: widths of the layers; the last is the output width.
        activation: a name of ``moezoo.kernels.activations`` (``relu``, ``silu`` alias ``swish``, ``identity``
            alias ``none``, ...) after every layer.
        batch_norm: BatchNorm over each expert's own units before the activation (HoME: Swish(BN(W v + b))).
        dropout: dropout after every activation.
        output_layer: the last layer is a plain linear output (no norm, activation or dropout): towers.

    Shapes: x [B, d] (every expert sees the same input) or [E, B, d] (a private input per expert) -> [E, B, h_last];
    weights[l] [E, d_l, d_{l+1}], biases[l] [E, 1, d_{l+1}], norms[l] over E * d_{l+1} units.
    """

    def __init__(self, num_experts: int, in_dim: int, hidden: Sequence[int], activation: str = "relu",
                 batch_norm: bool = False, dropout: float = 0.0, output_layer: bool = False, *, device=None,
                 dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        dims = _widths("StackedMLP", in_dim, hidden)
        self.num_experts, self.activation = num_experts, canonical_activation(activation)
        self.output_layer = output_layer
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(num_experts, i, o, **dd))
                                        for i, o in zip(dims, dims[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(num_experts, 1, o, **dd)) for o in dims[1:])
        plain = len(hidden) - 1 if output_layer else len(hidden)
        self.norms = (nn.ModuleList(nn.BatchNorm1d(num_experts * o, **dd) for o in hidden[:plain])
                      if batch_norm else None)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w, b in zip(self.weights, self.biases):
            init_stacked_linear_(w, b)
        for norm in self.norms or ():
            norm.reset_parameters()

    @property
    def out_dim(self) -> int:
        return self.weights[-1].shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = activation_fn(self.activation)
        last = len(self.weights) - 1
        h = x
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            if h.dim() == 2:  # shared input: one GEMM against all experts' weights side by side
                num_experts, d_in, d_out = w.shape
                h = (h @ w.permute(1, 0, 2).reshape(d_in, num_experts * d_out)).view(-1, num_experts, d_out)
                h = h.transpose(0, 1) + b
            else:  # private input per expert: h_e W_e + b_e as one batched GEMM
                h = torch.baddbmm(b, h, w)
            if self.output_layer and layer == last:
                break
            if self.norms is not None:  # BN over [B, E * width]: each expert's units have their own statistics
                num_experts, batch, width = h.shape
                h = self.norms[layer](h.transpose(0, 1).reshape(batch, num_experts * width))
                h = h.view(batch, num_experts, width).transpose(0, 1)
            h = self.dropout(act(h))
        return h

    def extra_repr(self) -> str:
        widths = [self.weights[0].shape[1], *(w.shape[-1] for w in self.weights)]
        return (f"num_experts={self.num_experts}, widths={widths}, activation={self.activation}, "
                f"batch_norm={self.norms is not None}, output_layer={self.output_layer}")


class RoutedStackedMLP(nn.Module):
    """E deep MLP experts over routed assignments, one grouped GEMM per layer (a routed bank).

    y_t = sum_{(t, e, w) in routing} w * MLP_e(x_t), layer l of MLP_e being h <- act(h W^l_e + b^l_e).
    With ``factored`` (STAR, Sheng et al. 2021; AdaptDHM's cluster networks) each expert's weights are a shared
    network times its own factor, element-wise:

        W^l_e = W^l_shared * F^l_e,   b^l_e = b^l_shared + c^l_e

    The assignments are sorted by expert once (``moezoo.kernels.sort_by_expert``), every layer is one
    ``moezoo.kernels.grouped_mm`` over the sorted rows, and the weighted rows are summed back into their tokens.

    Args:
        num_experts, in_dim, hidden, activation, dropout, output_layer: as ``StackedMLP``.
        factored: STAR's shared * specific weights.
        backend: the kernel backend of the grouped GEMMs (default: ``moezoo.kernels``' choice).

    Shapes: x [T, d], routing over E experts -> y [T, h_last]; weights[l] [E, d_l, d_{l+1}] (F^l with ``factored``),
    biases[l] [E, d_{l+1}] (c^l), shared_weights[l] [d_l, d_{l+1}], shared_biases[l] [d_{l+1}].
    Init: plain experts as nn.Linear, each on its own. Factored: the shared network Xavier-uniform with zero biases
    and every F = 1, c = 0, so that every expert starts as the shared network.
    """

    def __init__(self, num_experts: int, in_dim: int, hidden: Sequence[int], activation: str = "relu",
                 dropout: float = 0.0, output_layer: bool = False, *, factored: bool = False,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        dims = _widths("RoutedStackedMLP", in_dim, hidden)
        self.num_experts, self.activation = num_experts, canonical_activation(activation)
        self.output_layer, self.backend = output_layer, backend
        pairs = list(zip(dims, dims[1:]))
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(num_experts, i, o, **dd)) for i, o in pairs)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(num_experts, o, **dd)) for _, o in pairs)
        self.shared_weights = self.shared_biases = None
        if factored:
            self.shared_weights = nn.ParameterList(nn.Parameter(torch.empty(i, o, **dd)) for i, o in pairs)
            self.shared_biases = nn.ParameterList(nn.Parameter(torch.empty(o, **dd)) for _, o in pairs)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    @property
    def factored(self) -> bool:
        return self.shared_weights is not None

    @property
    def out_dim(self) -> int:
        return self.weights[-1].shape[-1]

    def reset_parameters(self) -> None:
        if not self.factored:
            for w, b in zip(self.weights, self.biases):
                init_stacked_linear_(w, b)
            return
        for w, b, shared_b in zip(self.weights, self.biases, self.shared_biases):
            nn.init.ones_(w)
            nn.init.zeros_(b)
            nn.init.zeros_(shared_b)
        for shared_w in self.shared_weights:  # the only random draws, in layer order (as AdaptDHM made them)
            nn.init.xavier_uniform_(shared_w)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s effective weights [E, d_l, d_{l+1}] and biases [E, d_{l+1}]."""
        if not self.factored:
            return self.weights[index], self.biases[index]
        return (self.shared_weights[index] * self.weights[index],
                self.shared_biases[index] + self.biases[index])

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        act = activation_fn(self.activation)
        order, offsets = kernels.sort_by_expert(routing.expert_index, self.num_experts)
        tokens, experts = routing.token_index[order], routing.expert_index[order]
        h = x.index_select(0, tokens)
        last = len(self.weights) - 1
        for layer in range(last + 1):
            weight, bias = self.layer(layer)
            h = kernels.grouped_mm(h, weight, offsets, backend=self.backend) + bias.index_select(0, experts)
            if not (self.output_layer and layer == last):
                h = self.dropout(act(h))
        h = h * routing.weight[order].unsqueeze(-1).to(h.dtype)
        return h.new_zeros(x.shape[0], h.shape[-1]).index_add(0, tokens, h)

    def extra_repr(self) -> str:
        widths = [self.weights[0].shape[1], *(w.shape[-1] for w in self.weights)]
        return (f"num_experts={self.num_experts}, widths={widths}, activation={self.activation}, "
                f"factored={self.factored}, output_layer={self.output_layer}")
