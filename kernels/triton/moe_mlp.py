"""The routed expert MLP in Triton, with the gather and the weighted scatter fused into the GEMMs: the functions
backend ``triton`` gives ``moezoo::moe_mlp`` (``moezoo.kernels.ops`` makes them one differentiable op).

Forward, over the A assignments sorted by expert (row r: token t_r, expert e_r, routing weight w_r):

    h_r = x[t_r] W1_e + b1_e               GEMM 1 reads x through t_r: no [A, d] copy of the tokens
    z_r = act(h_r)  or  act(a_r) * g_r     in GEMM 1's epilogue (h_r is kept for the backward)
    o_r = z_r W2_e + b2_e                  GEMM 2 writes row r to slot s_r, its rank in token-major order
    y_t = sum over slots s of token t of w_s o_s    ``segment_sum``: a fixed-order fp32 sum, no atomics

Backward, with g = dL/dy:

    dz_r = w_r g[t_r] W2_e^T               GEMM reading g through t_r; the activation's derivative in its epilogue
    dh_r = dz_r * act'(h_r)                (GLU: [dz b act'(a), dz act(a)])
    dW2_e = sum_r z_r^T (w_r g[t_r]),  db2_e = sum_r w_r g[t_r]     ``group_xty``, g read through t_r
    dW1_e = sum_r x[t_r]^T dh_r,       db1_e = sum_r dh_r           ``group_xty``, x read through t_r
    dx_t = sum over slots of t of dh_s W1_e^T                        GEMM scattering to slots, then ``segment_sum``
    dw_r = o_r . g[t_r]                     ``gathered_row_dot`` on the kept unweighted o (so dw includes b2)

Why the routing weight is applied in the reduction and not in GEMM 2's epilogue: the slot buffer then holds the
unweighted expert outputs o, which is exactly what dw needs, at no extra pass or memory. Why no atomics for the
k-way sum: a token's k rows come from k different experts, i.e. different programs; the slot buffer [A, d] plus a
segment sum costs one extra write and read of A x d, is deterministic, and keeps fp16/bf16 sums in fp32. When every
token has exactly k assignments (top-k routing) this is the view-sum y = (w * o).view(T, k, d).sum(1), but it also
handles any number of assignments per token, including none.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..reference import sort_by_expert
from .group_xty import group_xty
from .scatter_gemm import scatter_gemm
from .segment import gathered_row_dot, segment_sum


class AssignmentIndex(NamedTuple):
    """Index tensors of one set of assignments, all int32 but the weights: expert order for the GEMMs, token-major
    slots for the reductions. (Not ``moezoo.moe.Routing``: this is what the kernels read, derived from one.)"""

    offsets: torch.Tensor  # [E] cumulative row ends per expert
    tokens: torch.Tensor  # [A] token of each expert-sorted row
    row_weight: torch.Tensor  # [A] routing weight of each expert-sorted row
    slots: torch.Tensor  # [A] token-major slot of each expert-sorted row
    token_ends: torch.Tensor  # [T] cumulative slot ends per token
    slot_weight: torch.Tensor  # [A] routing weight of each slot
    slot_tokens: torch.Tensor  # [A] token of each slot
    slot_assignment: torch.Tensor  # [A] assignment (position in the caller's arrays) of each slot


def index_assignments(token_index: torch.Tensor, expert_index: torch.Tensor, weight: torch.Tensor, num_tokens: int,
                      num_experts: int) -> AssignmentIndex:
    """The ``AssignmentIndex`` of A assignments (token_index, expert_index, weight [A]) of T tokens to E experts."""
    order, offsets = sort_by_expert(expert_index, num_experts)
    token_order = torch.argsort(token_index, stable=True)
    slot_of = torch.empty_like(token_order)
    slot_of[token_order] = torch.arange(token_order.numel(), device=token_order.device)
    counts = torch.bincount(token_index, minlength=num_tokens)
    if counts.numel() != num_tokens:
        raise ValueError(f"token_index holds a token >= x.shape[0] = {num_tokens}")
    int32 = torch.int32
    return AssignmentIndex(
        offsets=offsets.contiguous(),
        tokens=token_index[order].to(int32),
        row_weight=weight[order].contiguous(),
        slots=slot_of[order].to(int32),
        token_ends=torch.cumsum(counts, 0).to(int32),
        slot_weight=weight[token_order].contiguous(),
        slot_tokens=token_index[token_order].to(int32),
        slot_assignment=token_order.to(int32),
    )


def _keeps_pre(activation: str, glu: bool) -> bool:
    return glu or activation != "identity"  # identity: the derivative is 1, no pre-activation needed


def _check(x, w1, w2, b1, b2) -> None:
    if w2.shape[-1] != x.shape[-1]:
        raise ValueError(f"shapes do not chain: x {tuple(x.shape)}, w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}; "
                         "the triton backend keeps the width (w2 [E, h, d])")
    for name, t in (("w1", w1), ("w2", w2), ("b1", b1), ("b2", b2)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{name} is {t.dtype} but x is {x.dtype}; the triton backend wants one dtype")


def forward(x, token_index, expert_index, weight, w1, w2, b1, b2, activation, glu):
    """y [T, d] (module docstring) and what ``backward`` reads: [pre-activation (empty for identity), hidden,
    unweighted outputs by slot, *AssignmentIndex]."""
    _check(x, w1, w2, b1, b2)
    r = index_assignments(token_index, expert_index, weight, x.shape[0], w1.shape[0])
    keep_pre = _keeps_pre(activation, glu)
    pre = x.new_empty(token_index.numel() if keep_pre else 0, w1.shape[-1])
    hidden = scatter_gemm(x, w1, r.offsets, gather=r.tokens, bias=b1, epilogue="activation",
                          activation=activation, glu=glu, pre=pre if keep_pre else None)
    outputs = scatter_gemm(hidden, w2, r.offsets, scatter=r.slots, bias=b2)  # unweighted, by slot
    y = segment_sum(outputs, r.token_ends, r.slot_weight)
    return y, [pre, hidden, outputs, *r]


def saved_like(x, token_index, expert_index, weight, w1, w2, b1, b2, activation, glu):
    """``forward``'s saved tensors as empty tensors of their shapes and dtypes (for the op's fake kernel)."""
    rows, width = token_index.shape[0], w1.shape[-1]
    index = [token_index.new_empty(n, dtype=torch.int32) for n in (w1.shape[0], rows)]
    return [
        x.new_empty(rows if _keeps_pre(activation, glu) else 0, width),
        x.new_empty(rows, w2.shape[1]),
        x.new_empty(rows, w2.shape[-1]),
        *index,  # offsets, tokens
        weight.new_empty(rows),  # row_weight
        token_index.new_empty(rows, dtype=torch.int32),  # slots
        token_index.new_empty(x.shape[0], dtype=torch.int32),  # token_ends
        weight.new_empty(rows),  # slot_weight
        token_index.new_empty(rows, dtype=torch.int32),  # slot_tokens
        token_index.new_empty(rows, dtype=torch.int32),  # slot_assignment
    ]


def backward(grad, saved, x, weight, w1, w2, b1, b2, activation, glu, needs):
    """(dx, dweight, dw1, dw2, db1, db2) by the kernels of the module docstring; None where not ``needs``."""
    pre, hidden, outputs, *index = saved
    r = AssignmentIndex(*index)
    need_x, need_weight, need_w1, need_w2, need_b1, need_b2 = needs
    grad_x = grad_weight = grad_w1 = grad_w2 = grad_b1 = grad_b2 = None
    if grad.dtype != x.dtype:
        grad = grad.to(x.dtype)

    if need_w2 or need_b2:
        grad_w2, grad_b2 = group_xty(hidden, grad, r.offsets, gather_dy=r.tokens, scale=r.row_weight,
                                     bias_grad=b2 is not None and need_b2)
    if need_weight:
        grad_weight = gathered_row_dot(outputs, grad, r.slot_tokens, r.slot_assignment, dtype=weight.dtype)
    if need_x or need_w1 or need_b1:
        w2t = w2.transpose(1, 2)
        if not _keeps_pre(activation, glu):  # identity activation: dh = dz
            grad_pre = scatter_gemm(grad, w2t, r.offsets, gather=r.tokens, scale=r.row_weight)
        else:
            grad_pre = scatter_gemm(grad, w2t, r.offsets, gather=r.tokens, scale=r.row_weight,
                                    epilogue="activation_grad", activation=activation, glu=glu, pre=pre)
        if need_w1 or need_b1:
            grad_w1, grad_b1 = group_xty(x, grad_pre, r.offsets, gather_x=r.tokens,
                                         bias_grad=b1 is not None and need_b1)
        if need_x:
            slot_grads = scatter_gemm(grad_pre, w1.transpose(1, 2), r.offsets, scatter=r.slots)
            grad_x = segment_sum(slot_grads, r.token_ends)
    return (grad_x, grad_weight, grad_w1 if need_w1 else None, grad_w2 if need_w2 else None, grad_b1, grad_b2)
