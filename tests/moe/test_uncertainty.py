"""The uncertainty-aware router (MoFME's UaR) against its formula: the MC-dropout mean scaled by a per-expert
confidence in training, the plain top-k router in eval."""

import pytest
import torch
import torch.nn.functional as F

from moezoo.moe import MoE, TopKRouter, UncertaintyRouter
from moezoo.moe.experts import FiLMExperts


def test_calibration_is_the_mean_times_mean_squared_over_mean_squared_plus_variance():
    samples = torch.tensor([[[0.6, 0.4, 0.0]], [[0.8, 0.2, 0.0]], [[0.7, 0.3, 0.0]]])  # [S=3, T=1, E=3]
    mean = torch.tensor([0.7, 0.3, 0.0])
    var = torch.tensor([0.01, 0.01, 0.0])  # unbiased: ((0.1)^2 + (0.1)^2 + 0) / 2
    expected = torch.cat([(mean * mean**2 / (mean**2 + var))[:2], torch.zeros(1)])  # 0 weight in every sample: 0
    torch.testing.assert_close(UncertaintyRouter.calibrated(samples)[0], expected)
    certain = torch.tensor([[[0.5, 0.5]], [[0.5, 0.5]]])
    torch.testing.assert_close(UncertaintyRouter.calibrated(certain)[0], torch.tensor([0.5, 0.5]))  # sigma 0: c = 1


def test_in_training_the_top_k_of_the_calibrated_gate_is_chosen_and_renormalised_over_the_k():
    torch.manual_seed(0)
    router = UncertaintyRouter(6, 4, k=2, num_samples=5, input_dropout=0.3).train()
    x = torch.randn(7, 6)
    torch.manual_seed(1)
    routing = router(x)
    torch.manual_seed(1)  # the same dropout masks, drawn by hand
    samples = torch.stack([torch.softmax(router.gate(F.dropout(x, 0.3, training=True)), -1) for _ in range(5)])
    mean, var = samples.mean(0), samples.var(0)
    gate = mean * mean**2 / (mean**2 + var)
    top = gate.topk(2, dim=-1)
    assert torch.equal(routing.expert_index.view(7, 2), top.indices)
    torch.testing.assert_close(routing.weight.view(7, 2), top.values / top.values.sum(-1, keepdim=True))
    torch.testing.assert_close(routing.probs, torch.softmax(router.gate(x), -1))  # losses and stats: the plain p


def test_in_eval_it_routes_exactly_as_the_plain_top_k_router_with_the_same_gate():
    torch.manual_seed(0)
    router = UncertaintyRouter(6, 4, k=2).eval()
    plain = TopKRouter(6, 4, k=2).eval()
    plain.gate.weight.data.copy_(router.gate.weight.data)
    x = torch.randn(9, 6)
    a, b = router(x), plain(x)
    assert torch.equal(a.expert_index, b.expert_index) and torch.equal(a.token_index, b.token_index)
    torch.testing.assert_close(a.weight, b.weight)
    assert torch.equal(router(x).weight, a.weight)  # deterministic


def test_the_gate_learns_through_the_calibration_and_the_aux_losses_see_the_plain_scores():
    torch.manual_seed(0)
    router = UncertaintyRouter(5, 3, k=1, balance_loss_weight=0.01).train()
    routing = router(torch.randn(8, 5))
    assert set(routing.aux_losses) == {"balance"}
    routing.weight.sum().backward()
    assert router.gate.weight.grad.abs().sum() > 0


def test_grouped_tokens_never_reach_experts_outside_their_group_in_training():
    torch.manual_seed(0)
    router = UncertaintyRouter(4, 4, k=2, expert_groups=[[0, 1], [2, 3]]).train()
    group = torch.tensor([0, 1] * 10)
    routing = router(torch.randn(20, 4), group=group)
    assert torch.equal(routing.expert_index // 2, group[routing.token_index])


def test_a_film_moe_with_the_uncertainty_router_trains_under_bf16_autocast():
    torch.manual_seed(0)
    moe = MoE(8, UncertaintyRouter(8, 4, k=2), FiLMExperts(4, 8)).train()
    x = torch.randn(2, 5, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = moe(x)
    y.float().square().mean().backward()
    assert y.shape == x.shape and torch.isfinite(x.grad).all() and moe.experts.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, message", [({"num_samples": 1}, "num_samples=1"),
                                             ({"input_dropout": 0.0}, "input_dropout=0.0"),
                                             ({"input_dropout": 1.0}, "input_dropout=1.0")])
def test_bad_settings_are_one_line_errors_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UncertaintyRouter(4, 4, **kwargs)
