"""The reference backend's routed expert MLP: gather, grouped GEMM, activation, grouped GEMM, weighted scatter, and
its backward written out (``moezoo::moe_mlp`` keeps only the tensors it returns, so autograd cannot record it).

Forward, over the A assignments sorted by expert (row r: token t_r, expert e_r, routing weight w_r):

    h_r = x[t_r] W1_e + b1_e,   z_r = act(h_r)  (GLU: act(a_r) * b_r with h_r = [a_r, b_r])
    o_r = z_r W2_e + b2_e,      y_t = sum over rows r of token t of w_r o_r

Backward, with g_r = dL/dy[t_r]:

    dz_r = w_r g_r W2_e^T,      dh_r = act'(h_r) * dz_r      (torch's own activation backward ops)
    dW2_e = sum_r z_r^T (w_r g_r),  db2_e = sum_r w_r g_r,  dw_r = o_r . g_r
    dW1_e = sum_r x[t_r]^T dh_r,    db1_e = sum_r dh_r,     dx_t = sum over rows r of t of dh_r W1_e^T

The backward runs the very ops autograd ran on this forward before it became an op, so it costs the same. Measured
choices (CPU, benchmarks/moe_layer.py): the gather is ``index_select`` (its backward an index_add, 3x faster than
the accumulating index_put behind ``x[tokens]``); without b2 the routing weight scales the narrower of the second
GEMM's input and output (w (z W2) = (w z) W2), and then dw_r = z_r . (g_r W2_e^T), which needs no o.
"""

from __future__ import annotations

import torch

from .activations import ACTIVATIONS, apply_activation
from .reference import grouped_mm_forward, grouped_weight_grad, sort_by_expert

# d act(h) / dh applied to a gradient, as torch's own backward kernels (what autograd would run)
_ACTIVATION_GRADS = {
    "gelu": lambda grad, h: torch.ops.aten.gelu_backward(grad, h),
    "gelu_tanh": lambda grad, h: torch.ops.aten.gelu_backward(grad, h, approximate="tanh"),
    "relu": lambda grad, h: torch.ops.aten.threshold_backward(grad, h, 0),
    "silu": lambda grad, h: torch.ops.aten.silu_backward(grad, h),
    "identity": lambda grad, h: grad,
}
assert set(_ACTIVATION_GRADS) == set(ACTIVATIONS), "every activation needs its derivative here"


def _activation_grad(grad: torch.Tensor, pre: torch.Tensor, activation: str, glu: bool) -> torch.Tensor:
    """dL/dh from dL/dz for z = act(h), or for a GLU z = act(a) * b with h = [a, b]: [dz b act'(a), dz act(a)]."""
    if not glu:
        return _ACTIVATION_GRADS[activation](grad, pre)
    a, b = pre.chunk(2, dim=-1)
    return torch.cat([_ACTIVATION_GRADS[activation](grad * b, a), grad * apply_activation(a, activation, False)], -1)


def _keeps_hidden(activation: str, glu: bool) -> bool:
    return glu or activation != "identity"  # identity: z is h itself, kept once


def _scale_before(b2: torch.Tensor | None, hidden: int, out: int) -> bool:
    return b2 is None and hidden < out


def forward(x, token_index, expert_index, weight, w1, w2, b1, b2, activation, glu):
    """y [T, d_out] (equation in the module docstring) and what ``backward`` reads: [x[t_r], h, z (empty for
    identity), w z if the weight scales z else o, tokens, experts, w (in x's dtype), order, offsets], rows by expert."""
    order, offsets = sort_by_expert(expert_index, w1.shape[0])
    tokens = token_index[order]
    experts = expert_index[order]
    gate = weight[order].to(x.dtype).unsqueeze(-1)
    rows = x.index_select(0, tokens)
    pre = grouped_mm_forward(rows, w1, offsets)
    if b1 is not None:
        pre = pre + b1.index_select(0, experts)
    hidden = apply_activation(pre, activation, glu)
    if _scale_before(b2, hidden.shape[-1], w2.shape[-1]):
        kept = hidden * gate
        out = grouped_mm_forward(kept, w2, offsets)
    else:
        kept = grouped_mm_forward(hidden, w2, offsets)
        if b2 is not None:
            kept = kept + b2.index_select(0, experts)
        out = kept * gate
    y = x.new_zeros(x.shape[0], w2.shape[-1]).index_add(0, tokens, out)
    if not _keeps_hidden(activation, glu):
        hidden = hidden.new_empty(0, hidden.shape[-1])
    return y, [rows, pre, hidden, kept, tokens, experts, gate, order, offsets]


def saved_like(x, token_index, expert_index, weight, w1, w2, b1, b2, activation, glu):
    """``forward``'s saved tensors as empty tensors of their shapes and dtypes (for the op's fake kernel)."""
    rows, (num_experts, d, width), (hidden, out) = token_index.shape[0], w1.shape, w2.shape[1:]
    return [
        x.new_empty(rows, d),
        x.new_empty(rows, width),
        x.new_empty(rows if _keeps_hidden(activation, glu) else 0, hidden),
        x.new_empty(rows, hidden if _scale_before(b2, hidden, out) else out),
        token_index.new_empty(rows),
        expert_index.new_empty(rows),
        x.new_empty(rows, 1),
        token_index.new_empty(rows, dtype=torch.long),
        token_index.new_empty(num_experts, dtype=torch.int32),
    ]


def backward(grad, saved, x, weight, w1, w2, b1, b2, activation, glu, needs):
    """(dx, dweight, dw1, dw2, db1, db2) by the equations of the module docstring; None where not ``needs``."""
    rows, pre, hidden, kept, tokens, experts, gate, order, offsets = saved
    need_x, need_weight, need_w1, need_w2, need_b1, need_b2 = needs
    if not _keeps_hidden(activation, glu):
        hidden = pre
    grad_x = grad_weight = grad_w1 = grad_w2 = grad_b1 = grad_b2 = None
    grad_rows = grad.index_select(0, tokens).to(x.dtype)
    scale_before = _scale_before(b2, hidden.shape[-1], w2.shape[-1])
    if scale_before:  # kept = w z: the weight reaches dL/dz through W2's backward
        grad_out, grad_kept = grad_rows, None
        if need_w2:
            grad_w2 = grouped_weight_grad(kept, grad_out, offsets)
    else:  # kept = o: dw = o . g
        grad_out = grad_rows * gate
        if need_weight:
            grad_kept = (kept * grad_rows).sum(-1)
        if need_w2:
            grad_w2 = grouped_weight_grad(hidden, grad_out, offsets)
        if need_b2 and b2 is not None:
            grad_b2 = torch.zeros_like(b2).index_add_(0, experts, grad_out.to(b2.dtype))
    if need_weight or need_x or need_w1 or need_b1:
        grad_hidden = grouped_mm_forward(grad_out, w2.transpose(1, 2), offsets)
        if scale_before and need_weight:
            grad_kept = (hidden * grad_hidden).sum(-1)
        if need_weight:
            grad_weight = torch.empty_like(weight).index_copy_(0, order, grad_kept.to(weight.dtype))
        if need_x or need_w1 or need_b1:
            if scale_before:
                grad_hidden = grad_hidden * gate
            grad_pre = _activation_grad(grad_hidden, pre, activation, glu)
            if need_b1 and b1 is not None:
                grad_b1 = torch.zeros_like(b1).index_add_(0, experts, grad_pre.to(b1.dtype))
            if need_w1:
                grad_w1 = grouped_weight_grad(rows, grad_pre, offsets)
            if need_x:
                grad_x = torch.zeros_like(x).index_add_(0, tokens, grouped_mm_forward(grad_pre, w1.transpose(1, 2),
                                                                                       offsets))
    return grad_x, grad_weight, grad_w1, grad_w2, grad_b1, grad_b2
