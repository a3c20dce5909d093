"""Noisy top-k gating (Shazeer et al. 2017, eq. 4) and router context features (what MoveGCL's router reads)."""

import math

import pytest
import torch
import torch.nn.functional as F

from moezoo.moe import MoEArgs, TopKRouter


def test_learned_noise_follows_eq_4_in_training_only():
    torch.manual_seed(0)
    router = TopKRouter(6, 4, k=2, noise="learned")
    with torch.no_grad():
        router.noise_gate.weight.normal_()
    x = torch.randn(10, 6)
    torch.manual_seed(1)
    noisy = router(x)
    torch.manual_seed(1)
    eps = torch.randn(10, 4)
    expected = x @ router.gate.weight.t() + eps * F.softplus(x @ router.noise_gate.weight.t())
    torch.testing.assert_close(noisy.logits, expected)
    torch.testing.assert_close(noisy.probs, torch.softmax(expected, -1))
    chosen = torch.topk(expected, 2, dim=-1).indices
    assert torch.equal(noisy.expert_index.view(10, 2).sort(-1).values, chosen.sort(-1).values)
    router.eval()
    clean = router(x)
    torch.testing.assert_close(clean.logits, x @ router.gate.weight.t())


def test_noise_starts_at_softplus_zero_and_learns():
    router = TopKRouter(6, 4, k=1, noise="learned", balance_loss_weight=0.01)
    assert float(router.noise_gate.weight.detach().abs().sum()) == 0.0
    torch.testing.assert_close(router.noise_std(torch.randn(3, 6)), torch.full((3, 4), math.log(2.0)))
    routing = router(torch.randn(32, 6))
    (routing.weight.sum() + sum(routing.aux_losses.values())).backward()
    assert router.noise_gate.weight.grad is not None and float(router.noise_gate.weight.grad.abs().sum()) > 0


def test_unknown_noise_is_refused():
    with pytest.raises(ValueError, match="noise must be 'none' or 'learned'"):
        TopKRouter(6, 4, noise="gumbel")


def test_router_context_is_concatenated_to_what_the_router_sees():
    torch.manual_seed(0)
    layer = MoEArgs(num_experts=4, k=2, router_context_dim=3).build(8, 16)
    assert layer.router.gate.in_features == 11
    x, context = torch.randn(2, 5, 8), torch.randn(2, 5, 3)
    layer.eval()
    y = layer(x, router_context=context)
    routing = layer.router(torch.cat([x, context], -1).reshape(10, 11))
    expected = layer.experts(x.reshape(10, 8), routing).reshape(2, 5, 8)
    torch.testing.assert_close(y, expected)
    with pytest.raises(ValueError, match="router_context has 4 tokens but x has 10"):
        layer(x, router_context=torch.randn(4, 3))
