"""The expert MLP over routed assignments: gather, grouped GEMM, activation, grouped GEMM, weighted scatter."""

from __future__ import annotations

import torch

from .activations import apply_activation
from .reference import grouped_mm, sort_by_expert


def moe_mlp_reference(
    x: torch.Tensor,
    token_index: torch.Tensor,
    expert_index: torch.Tensor,
    weight: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    b1: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    activation: str = "gelu",
    glu: bool = False,
) -> torch.Tensor:
    """y[t] = sum over assignments a of token t: weight[a] * FFN_{expert[a]}(x[t]).

    FFN_e(x) = act(x W1_e + b1_e) W2_e + b2_e, or for glu=True act(x A_e) * (x B_e) with W1_e = [A_e, B_e].
    Shapes: x [T, d], token_index/expert_index/weight [A], w1 [E, d, h] (or [E, d, 2h]), w2 [E, h, d],
    b1 [E, h or 2h], b2 [E, d] -> y [T, d]. Experts with no assignment cost nothing and get zero gradient.

    Measured choices (CPU, benchmarks/moe_layer.py): the gather is ``index_select`` (its backward is an index_add,
    3x faster than the accumulating index_put behind ``x[tokens]``); without b2 the routing weight scales the
    narrower of the second GEMM's input and output (w (h W2) = (w h) W2).
    """
    num_experts = w1.shape[0]
    order, offsets = sort_by_expert(expert_index, num_experts)
    tokens = token_index[order]
    experts = expert_index[order]
    gate = weight[order].unsqueeze(-1).to(x.dtype)
    h = grouped_mm(x.index_select(0, tokens), w1, offsets)
    if b1 is not None:
        h = h + b1.index_select(0, experts)
    h = apply_activation(h, activation, glu)
    scale_before = b2 is None and h.shape[-1] < w2.shape[-1]
    if scale_before:
        h = h * gate
    out = grouped_mm(h, w2, offsets)
    if b2 is not None:
        out = out + b2.index_select(0, experts)
    if not scale_before:
        out = out * gate
    return x.new_zeros(x.shape[0], w2.shape[-1]).index_add(0, tokens, out)
