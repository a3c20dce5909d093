"""moezoo's kernels as torch.library ops (namespace ``moezoo``), each registered once for every backend:

    moezoo::grouped_mm(x, w, offsets, backend) -> out
    moezoo::grouped_mm_weight_grad(x, grad, offsets, backend) -> dw
    moezoo::moe_mlp(x, token_index, expert_index, weight, w1, w2, b1, b2, activation, glu, backend) -> [y, *saved]
    moezoo::moe_mlp_backward(grad, saved, x, weight, w1, w2, b1, b2, activation, glu, needs, backend) -> 6 grads

``backend`` is a resolved backend name (``dispatch.resolve``: never ``auto``); an op's kernel looks that backend's
functions up when it runs. One Python kernel per op serves CPU and CUDA tensors alike: the backend's functions make
the device's choice (torch's grouped_mm or a loop; Triton compiled, or interpreted on CPU). Every op has a fake
kernel (output shapes from input shapes, no data read), and the two forward ops an autograd formula made of the
other ops, so ``torch.compile(fullgraph=True)`` traces forward and backward without running a kernel.
``moe_mlp`` returns what its backward needs as extra outputs: an op's autograd may keep only inputs and outputs.

Mixed precision: an op computes in one dtype (its inputs'). Under ``torch.autocast`` the wrappers ``grouped_mm`` and
``moe_mlp`` below (what ``moezoo.kernels`` calls, eager or compiled) first cast the floating-point inputs to the
region's dtype, as autocast does for torch's own matmul (``autocast_inputs``): the casts are differentiable, so the
gradient of a float32 master weight arrives in float32. (``torch.library.register_autocast`` would cast to one
dtype fixed at registration; the region's dtype is known only when the op runs, and the eager path below does not go
through the dispatcher.)

Eager calls do not go through the dispatcher: ``grouped_mm`` and ``moe_mlp`` below run the same backend functions
through an ``autograd.Function`` unless torch.compile is tracing. custom_op's Python layers (dispatcher, generated
autograd.Function, tensor-list flattening) cost about 0.25 ms (grouped_mm) and 1 ms (moe_mlp) per forward +
backward on this project's CPUs, a large share of a small layer's step on a GPU; the direct path costs what an
autograd.Function costs, as before the ops existed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .dispatch import kernels

# device types torch can autocast here (torch.is_autocast_enabled raises for others, e.g. meta)
_AUTOCAST_DEVICES = frozenset(d for d in ("cpu", "cuda", "xpu", "mps", "hpu") if torch.amp.is_autocast_available(d))


def autocast_enabled(device_type: str) -> bool:
    """Whether a ``torch.autocast`` region for ``device_type`` is active (False for devices autocast does not know)."""
    return device_type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type)


def autocast_inputs(device_type: str, *args):
    """``args`` as autocast casts a matmul's inputs: inside a ``torch.autocast`` region for ``device_type``, every
    floating-point tensor but float64 in the region's dtype (a differentiable cast); anything else, and everything
    outside a region, unchanged. Plain Python on the autocast state: torch.compile traces the casts."""
    if not autocast_enabled(device_type):
        return args
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() and a.dtype != torch.float64 else a
                 for a in args)

# -- grouped_mm -------------------------------------------------------------------------------------------------------


@torch.library.custom_op("moezoo::grouped_mm", mutates_args=())
def grouped_mm_op(x: Tensor, w: Tensor, offsets: Tensor, backend: str) -> Tensor:
    """out[rows of expert e] = x[rows of e] @ w[e]; x [N, K] sorted by expert, w [E, K, M], offsets [E] int32."""
    return kernels(backend, "grouped_mm").forward(x, w, offsets)


@torch.library.custom_op("moezoo::grouped_mm_weight_grad", mutates_args=())
def grouped_mm_weight_grad_op(x: Tensor, grad: Tensor, offsets: Tensor, backend: str) -> Tensor:
    """dW[e] = x[rows of e]^T @ grad[rows of e] -> [E, K, M]."""
    return kernels(backend, "grouped_mm").weight_grad(x, grad, offsets)


@grouped_mm_op.register_fake
def _(x, w, offsets, backend):
    return x.new_empty(x.shape[0], w.shape[-1])


@grouped_mm_weight_grad_op.register_fake
def _(x, grad, offsets, backend):
    return x.new_empty(offsets.shape[0], x.shape[-1], grad.shape[-1])


def _grouped_mm_setup(ctx, inputs, output):
    x, w, offsets, ctx.backend = inputs
    ctx.save_for_backward(x, w, offsets)


def _grouped_mm_backward(ctx, grad):
    x, w, offsets = ctx.saved_tensors
    grad = grad.contiguous()  # an expanded gradient (from .sum()) has zero strides
    grad_x = grouped_mm_op(grad, w.transpose(1, 2), offsets, ctx.backend) if ctx.needs_input_grad[0] else None
    grad_w = grouped_mm_weight_grad_op(x, grad, offsets, ctx.backend) if ctx.needs_input_grad[1] else None
    return grad_x, grad_w, None, None


grouped_mm_op.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)


class _EagerGroupedMM(torch.autograd.Function):
    """``grouped_mm_op`` with its autograd, calling the backend's functions directly (no dispatcher)."""

    @staticmethod
    def forward(ctx, x, w, offsets, backend):
        _grouped_mm_setup(ctx, (x, w, offsets, backend), None)
        return kernels(backend, "grouped_mm").forward(x, w, offsets)

    @staticmethod
    def backward(ctx, grad):
        x, w, offsets = ctx.saved_tensors
        fns = kernels(ctx.backend, "grouped_mm")
        grad = grad.contiguous()
        grad_x = fns.forward(grad, w.transpose(1, 2), offsets) if ctx.needs_input_grad[0] else None
        grad_w = fns.weight_grad(x, grad, offsets) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None


def grouped_mm(x: Tensor, w: Tensor, offsets: Tensor, backend: str) -> Tensor:
    """Differentiable ``moezoo::grouped_mm``: the op under torch.compile, the direct path in eager mode; under
    autocast on the region's dtype (``autocast_inputs``)."""
    x, w = autocast_inputs(x.device.type, x, w)
    if torch.compiler.is_compiling():
        return grouped_mm_op(x, w, offsets, backend)
    return _EagerGroupedMM.apply(x, w, offsets, backend)


# -- moe_mlp ----------------------------------------------------------------------------------------------------------

_DIFFERENTIABLE = (0, 3, 4, 5, 6, 7)  # positions of x, weight, w1, w2, b1, b2 among moe_mlp's inputs


@torch.library.custom_op("moezoo::moe_mlp", mutates_args=())
def moe_mlp_op(x: Tensor, token_index: Tensor, expert_index: Tensor, weight: Tensor, w1: Tensor, w2: Tensor,
               b1: Tensor | None, b2: Tensor | None, activation: str, glu: bool, backend: str) -> list[Tensor]:
    """[y, *saved]: ``moezoo.kernels.moe_mlp``'s y and what the backend's backward reads."""
    y, saved = kernels(backend, "moe_mlp").forward(x, token_index, expert_index, weight, w1, w2, b1, b2,
                                                    activation, glu)
    return [y, *saved]


@moe_mlp_op.register_fake
def _(*args):  # moe_mlp_op's arguments; the backend's functions take them without the backend
    x, w2, backend = args[0], args[5], args[-1]
    return [x.new_empty(x.shape[0], w2.shape[-1]), *kernels(backend, "moe_mlp").saved_like(*args[:-1])]


@torch.library.custom_op("moezoo::moe_mlp_backward", mutates_args=())
def moe_mlp_backward_op(grad: Tensor, saved: list[Tensor], x: Tensor, weight: Tensor, w1: Tensor, w2: Tensor,
                        b1: Tensor | None, b2: Tensor | None, activation: str, glu: bool, needs: list[bool],
                        backend: str) -> list[Tensor]:
    """[dx, dweight, dw1, dw2, db1, db2], an empty placeholder for each gradient not needed (or of a missing bias)."""
    grads = kernels(backend, "moe_mlp").backward(grad, saved, x, weight, w1, w2, b1, b2, activation, glu,
                                                  tuple(needs))
    inputs = (x, weight, w1, w2, b1, b2)
    return [x.new_empty(0) if g is None else g.to(t.dtype).contiguous() for g, t in zip(grads, inputs)]


@moe_mlp_backward_op.register_fake
def _(grad, saved, x, weight, w1, w2, b1, b2, activation, glu, needs, backend):
    inputs = (x, weight, w1, w2, b1, b2)
    return [t.new_empty(t.shape) if need and t is not None else x.new_empty(0) for t, need in zip(inputs, needs)]


def _save(ctx, inputs, saved):
    x, _, _, weight, w1, w2, b1, b2, activation, glu, backend = inputs
    ctx.save_for_backward(x, weight, w1, w2, b1, b2, *saved)
    ctx.static = activation, glu, backend


def _moe_mlp_setup(ctx, inputs, output):
    _save(ctx, inputs, output[1:])
    ctx.mark_non_differentiable(*output[1:])  # outputs of the op only to reach the backward


def _needs(ctx) -> list[bool]:
    return [ctx.needs_input_grad[i] for i in _DIFFERENTIABLE]


def _moe_mlp_backward(ctx, grads):
    x, weight, w1, w2, b1, b2, *saved = ctx.saved_tensors
    needs = _needs(ctx)
    out = moe_mlp_backward_op(grads[0], saved, x, weight, w1, w2, b1, b2, *ctx.static[:2], needs, ctx.static[2])
    dx, dweight, dw1, dw2, db1, db2 = (g if need else None for g, need in zip(out, needs))
    return dx, None, None, dweight, dw1, dw2, db1, db2, None, None, None


moe_mlp_op.register_autograd(_moe_mlp_backward, setup_context=_moe_mlp_setup)


class _EagerMoEMLP(torch.autograd.Function):
    """``moe_mlp_op`` with its autograd, calling the backend's functions directly (no dispatcher)."""

    @staticmethod
    def forward(ctx, *args):  # moe_mlp_op's arguments
        y, saved = kernels(args[-1], "moe_mlp").forward(*args[:-1])
        _save(ctx, args, saved)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, w1, w2, b1, b2, *saved = ctx.saved_tensors
        activation, glu, backend = ctx.static
        dx, dweight, dw1, dw2, db1, db2 = kernels(backend, "moe_mlp").backward(
            grad, saved, x, weight, w1, w2, b1, b2, activation, glu, tuple(_needs(ctx)))
        return dx, None, None, dweight, dw1, dw2, db1, db2, None, None, None


def moe_mlp(*args) -> Tensor:
    """Differentiable y of ``moezoo::moe_mlp`` on ``moe_mlp_op``'s arguments: the op under torch.compile, the direct
    path in eager mode; under autocast on the region's dtype (``autocast_inputs``: x, weight, w1, w2, b1, b2)."""
    args = autocast_inputs(args[0].device.type, *args)
    if torch.compiler.is_compiling():
        return moe_mlp_op(*args)[0]
    return _EagerMoEMLP.apply(*args)
