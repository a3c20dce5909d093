"""The MoE layer: a router and an expert bank, plus optional always-on shared experts."""

from __future__ import annotations

import torch
import torch.nn as nn

from .record import RoutingRecord, in_backward


class _KeepGradient(torch.autograd.Function):
    """Identity on a recorded aux loss value whose backward keeps the gradient it received in ``coefficients``."""

    @staticmethod
    def forward(ctx, anchor, value, coefficients, kind):
        ctx.coefficients, ctx.kind = coefficients, kind
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.coefficients[ctx.kind] = grad.detach().clone()
        return None, None, None, None


class _WithLossGradient(torch.autograd.Function):
    """Identity on a layer's output whose backward also backpropagates ``loss`` with gradient 1 (Megatron-Core's
    ``MoEAuxLossAutoScaler``, ``megatron/core/transformer/moe/moe_utils.py``)."""

    @staticmethod
    def forward(ctx, output, loss):
        ctx.loss_shape, ctx.loss_dtype = loss.shape, loss.dtype
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad):
        return grad, torch.ones(ctx.loss_shape, dtype=ctx.loss_dtype, device=grad.device)


class RecomputedAuxGradient:
    """How the aux losses of a training forward run without autograd still train the router: the first pass of
    reentrant activation checkpointing (``torch.utils.checkpoint.checkpoint(..., use_reentrant=True)``).

    That pass records its losses as plain values (counted once by ``aux_loss``, for the loss and the logs); the
    backward then recomputes the layer with autograd on. ``aux_loss_terms`` hands each such value on through
    ``keep``, a node whose backward keeps the gradient the training loss gave it (1, 1/N under Lightning's gradient
    accumulation, times any loss scale); the recomputation's ``attach`` ties its own losses, times those
    coefficients, to the layer's output, so the backward through it gives the router and the layer's input the
    gradient of the aux losses that a run without checkpointing gives. The ``keep`` node runs first: it is made after
    the forward, and autograd runs the ready node made last first. A backward that asks for some gradients only
    (``torch.autograd.grad``) skips it, and the recomputed losses then add nothing. A layer run more than once before
    its backward recomputes its global-batch loss with the counts of its later forwards too (the reentrant path
    only: non-reentrant checkpointing keeps each forward's f, ``global_batch_load_balancing_loss``).
    """

    def __init__(self):
        self.coefficients: dict[str, torch.Tensor] = {}

    def forward_without_autograd(self) -> None:
        """A new such forward: coefficients left from earlier steps do not apply to it."""
        self.coefficients = {}

    def keep(self, kind: str, value: torch.Tensor) -> torch.Tensor:
        anchor = torch.zeros((), device=value.device, requires_grad=True)
        return _KeepGradient.apply(anchor, value, self.coefficients, kind)

    def attach(self, output: torch.Tensor, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        terms = [self.coefficients[kind] * value for kind, value in losses.items() if kind in self.coefficients]
        return _WithLossGradient.apply(output, sum(terms)) if terms else output

    def route(self, output: torch.Tensor, losses: dict[str, torch.Tensor], training: bool) -> torch.Tensor:
        """``output`` of a forward whose router returned ``losses``: in the recomputation during backward, with the
        losses' gradient attached; in a training forward without autograd, as it is, after forgetting old
        coefficients."""
        if not training or not losses:
            return output
        if in_backward():
            return self.attach(output, losses) if torch.is_grad_enabled() else output
        if not torch.is_grad_enabled():
            self.forward_without_autograd()
        return output


class MoE(nn.Module):
    """y = sum_{e in route(x)} g_e(x) * expert_e(x) (+ shared(x)).

    Takes tokens x [..., d] and returns [..., d_out]. Keywords some families need and others ignore:
    ``router_input`` [..., d_r] (what the router sees, when it differs from x), ``router_context`` [..., d_c]
    (features the router sees next to x or ``router_input``: it reads their concatenation, so its gate takes
    d + d_c inputs; MoveGCL's city and mobility features, TrajMoE's spatial encoding), ``group`` [...] (a group id
    per token restricting its experts; -1: not routed), ``condition`` (per-sample information for the router).

    Every real forward in training mode records the router's aux losses on this layer (collected and cleared by
    ``moezoo.moe.aux_loss(model)``; those of its latest ``record.max_pending`` forwards wait, older ones are dropped);
    a recomputation during backward (activation checkpointing) records nothing; under reentrant checkpointing, whose
    first pass runs without autograd, the recomputation carries the losses' gradient (``RecomputedAuxGradient``).
    Routing statistics of the last forward are kept for ``routing_stats``. Under ``torch.autocast`` the experts compute
    in the region's dtype and the router in float32 (``moezoo.moe.precision``). Under expert parallelism
    (``moezoo.moe.parallel``) ``dispatch`` sends each assignment to the rank that holds its expert; by default the bank
    runs on this process.
    """

    def __init__(self, dim: int, router: nn.Module, experts: nn.Module, shared_experts: nn.Module | None = None):
        super().__init__()
        self.dim = dim
        self.router = router
        self.experts = experts
        self.shared_experts = shared_experts
        self.record = RoutingRecord()
        self.dispatch = None  # None: the bank runs here; moezoo.moe.parallel.shard_experts sets an all-to-all
        self.aux_gradient = RecomputedAuxGradient()

    def forward(self, x: torch.Tensor, *, router_input: torch.Tensor | None = None,
                router_context: torch.Tensor | None = None, group: torch.Tensor | None = None,
                condition=None) -> torch.Tensor:
        lead = x.shape[:-1]
        tokens = x.reshape(-1, x.shape[-1])
        seen = tokens if router_input is None else router_input.reshape(-1, router_input.shape[-1])
        if router_context is not None:
            context = router_context.reshape(-1, router_context.shape[-1])
            if context.shape[0] != seen.shape[0]:
                raise ValueError(f"router_context has {context.shape[0]} tokens but x has {seen.shape[0]}")
            seen = torch.cat([seen, context.to(seen.dtype)], dim=-1)
        if seen.shape[0] != tokens.shape[0]:
            raise ValueError(f"router_input has {seen.shape[0]} tokens but x has {tokens.shape[0]}")
        routing = self.router(seen, group=None if group is None else group.reshape(-1), condition=condition)
        y = self.experts(tokens, routing) if self.dispatch is None else self.dispatch(tokens, routing, self.experts)
        if self.shared_experts is not None:
            y = y + self.shared_experts(tokens)
        self.record.add(routing, training=self.training)
        y = self.aux_gradient.route(y, routing.aux_losses, self.training)
        return y.reshape(*lead, y.shape[-1])
