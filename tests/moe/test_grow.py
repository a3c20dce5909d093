"""Growing a trained MoE layer (new experts = the mean of the old ones, router rows likewise) and freezing experts
(their weights do not move under AdamW with weight decay; the others train)."""

import pytest
import torch

from moezoo.moe import MoEArgs, add_experts, after_optimizer_step, aux_loss, freeze_experts, most_used_experts


def layer(**kw):
    torch.manual_seed(0)
    return MoEArgs(num_experts=3, k=2, **kw).build(8, 16)


def test_new_experts_are_the_mean_of_the_old_and_the_layer_still_routes():
    moe = layer(noise="learned")
    w1, gate = moe.experts.w1.detach().clone(), moe.router.gate.weight.detach().clone()
    assert add_experts(moe, 2) == [3, 4]
    assert moe.experts.num_experts == moe.router.num_experts == 5 and moe.experts.w1.shape[0] == 5
    torch.testing.assert_close(moe.experts.w1[:3], w1)
    torch.testing.assert_close(moe.experts.w1[3], w1.mean(0))
    torch.testing.assert_close(moe.experts.b2[4], moe.experts.b2[:3].mean(0))
    torch.testing.assert_close(moe.router.gate.weight[3], gate.mean(0))
    assert moe.router.noise_gate.weight.shape == (5, 8) and moe.router.expert_bias.shape == (5,)
    y = moe(torch.randn(40, 8))
    assert y.shape == (40, 8)
    assert set(moe.record.last["counts"].nonzero().flatten().tolist()) <= set(range(5))
    with pytest.raises(ValueError, match="count must be at least 1"):
        add_experts(moe, 0)
    with pytest.raises(ValueError, match="null experts or expert groups"):
        add_experts(layer(num_null_experts=1), 1)


def test_frozen_experts_keep_their_weights_under_adamw_and_the_others_train():
    moe = layer(balance_loss_weight=0.01)
    add_experts(moe, 1)
    freeze_experts(moe, [0, 2])
    before = {n: p.detach().clone() for n, p in moe.experts.named_parameters()}
    optimizer = torch.optim.AdamW(moe.parameters(), lr=0.05, weight_decay=0.1)
    for _ in range(3):
        loss = moe(torch.randn(64, 8)).square().mean() + aux_loss(moe)
        optimizer.zero_grad()
        loss.backward()
        assert float(moe.experts.w1.grad[[0, 2]].abs().sum()) == 0.0  # the hook zeroes their gradient
        optimizer.step()
        after_optimizer_step(moe)
    for name, value in before.items():
        now = moe.experts.get_parameter(name)
        torch.testing.assert_close(now[[0, 2]], value[[0, 2]], rtol=0, atol=0)
        assert not torch.allclose(now[[1, 3]], value[[1, 3]])
    with pytest.raises(ValueError, match="outside 0..3"):
        freeze_experts(moe, [4])


def test_most_used_experts_is_the_union_of_each_values_argmax():
    counts = torch.tensor([[5.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 9.0], [4.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert most_used_experts(counts) == [0, 3]
