"""The routed expert MLP in Triton, as one autograd op with the gather and the weighted scatter fused into the GEMMs.

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

from ..activations import activation as check_activation
from ..reference import sort_by_expert
from .group_xty import group_xty
from .scatter_gemm import scatter_gemm
from .segment import gathered_row_dot, segment_sum


class Routing(NamedTuple):
    """Index tensors of one routing, all int32: expert order for the GEMMs, token-major slots for the reductions."""

    offsets: torch.Tensor  # [E] cumulative row ends per expert
    tokens: torch.Tensor  # [A] token of each expert-sorted row
    row_weight: torch.Tensor  # [A] routing weight of each expert-sorted row
    slots: torch.Tensor  # [A] token-major slot of each expert-sorted row
    token_ends: torch.Tensor  # [T] cumulative slot ends per token
    slot_weight: torch.Tensor  # [A] routing weight of each slot
    slot_tokens: torch.Tensor  # [A] token of each slot
    slot_assignment: torch.Tensor  # [A] assignment (position in the caller's arrays) of each slot


@torch.no_grad()
def route(token_index: torch.Tensor, expert_index: torch.Tensor, weight: torch.Tensor, num_tokens: int,
          num_experts: int) -> Routing:
    order, offsets = sort_by_expert(expert_index, num_experts)
    token_order = torch.argsort(token_index, stable=True)
    slot_of = torch.empty_like(token_order)
    slot_of[token_order] = torch.arange(token_order.numel(), device=token_order.device)
    counts = torch.bincount(token_index, minlength=num_tokens)
    if counts.numel() != num_tokens:
        raise ValueError(f"token_index holds a token >= x.shape[0] = {num_tokens}")
    int32 = torch.int32
    return Routing(
        offsets=offsets.contiguous(),
        tokens=token_index[order].to(int32),
        row_weight=weight[order].contiguous(),
        slots=slot_of[order].to(int32),
        token_ends=torch.cumsum(counts, 0).to(int32),
        slot_weight=weight[token_order].contiguous(),
        slot_tokens=token_index[token_order].to(int32),
        slot_assignment=token_order.to(int32),
    )


class MoEMLP(torch.autograd.Function):
    """y = sum over assignments of weight * FFN_expert(x[token]); see the module docstring for the kernels."""

    @staticmethod
    def forward(ctx, x, token_index, expert_index, weight, w1, w2, b1, b2, activation, glu):
        r = route(token_index, expert_index, weight, x.shape[0], w1.shape[0])
        keep_pre = glu or activation != "identity"
        pre = x.new_empty(token_index.numel(), w1.shape[-1]) if keep_pre else None
        hidden = scatter_gemm(x, w1, r.offsets, gather=r.tokens, bias=b1, epilogue="activation",
                              activation=activation, glu=glu, pre=pre)
        outputs = scatter_gemm(hidden, w2, r.offsets, scatter=r.slots, bias=b2)  # unweighted, by slot
        y = segment_sum(outputs, r.token_ends, r.slot_weight)
        ctx.save_for_backward(x, w1, w2, pre, hidden, outputs, *r)
        ctx.activation, ctx.glu, ctx.has_bias = activation, glu, (b1 is not None, b2 is not None)
        ctx.weight_dtype = weight.dtype
        return y

    @staticmethod
    def backward(ctx, grad):
        x, w1, w2, pre, hidden, outputs, *routing = ctx.saved_tensors
        r = Routing(*routing)
        need_x, _, _, need_weight, need_w1, need_w2, need_b1, need_b2 = ctx.needs_input_grad[:8]
        grad_x = grad_weight = grad_w1 = grad_w2 = grad_b1 = grad_b2 = None
        if grad.dtype != x.dtype:
            grad = grad.to(x.dtype)

        if need_w2 or need_b2:
            grad_w2, grad_b2 = group_xty(hidden, grad, r.offsets, gather_dy=r.tokens, scale=r.row_weight,
                                         bias_grad=ctx.has_bias[1] and need_b2)
        if need_weight:
            grad_weight = gathered_row_dot(outputs, grad, r.slot_tokens, r.slot_assignment, dtype=ctx.weight_dtype)
        if need_x or need_w1 or need_b1:
            w2t = w2.transpose(1, 2)
            if pre is None:  # identity activation: dh = dz
                grad_pre = scatter_gemm(grad, w2t, r.offsets, gather=r.tokens, scale=r.row_weight)
            else:
                grad_pre = scatter_gemm(grad, w2t, r.offsets, gather=r.tokens, scale=r.row_weight,
                                        epilogue="activation_grad", activation=ctx.activation, glu=ctx.glu, pre=pre)
            if need_w1 or need_b1:
                grad_w1, grad_b1 = group_xty(x, grad_pre, r.offsets, gather_x=r.tokens,
                                             bias_grad=ctx.has_bias[0] and need_b1)
            if need_x:
                slot_grads = scatter_gemm(grad_pre, w1.transpose(1, 2), r.offsets, scatter=r.slots)
                grad_x = segment_sum(slot_grads, r.token_ends)
        return (grad_x, None, None, grad_weight, grad_w1 if need_w1 else None, grad_w2 if need_w2 else None,
                grad_b1, grad_b2, None, None)


def moe_mlp(
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
    """Routed expert MLP with the reference signature and shapes (``moezoo.kernels.moe_mlp.moe_mlp_reference``)."""
    check_activation(activation)
    num_experts, d, width = w1.shape
    hidden = width // 2 if glu else width
    if glu and width % 2:
        raise ValueError(f"glu=True needs w1 with an even number of columns (a and b halves); got {width}")
    if w2.shape != (num_experts, hidden, d) or x.shape[-1] != d:
        raise ValueError(f"shapes do not chain: x {tuple(x.shape)}, w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}")
    for name, t in (("w1", w1), ("w2", w2), ("b1", b1), ("b2", b2)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{name} is {t.dtype} but x is {x.dtype}; the triton backend wants one dtype")
    return MoEMLP.apply(x, token_index, expert_index, weight, w1, w2, b1, b2, activation, glu)
