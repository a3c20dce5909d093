"""Aux losses against their papers' formulas, and global-batch balancing across micro-batches and ranks."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moezoo.moe import TopKRouter, global_batch_load_balancing_loss, router_z_loss, switch_load_balancing_loss


def test_switch_loss_is_E_times_sum_of_fraction_times_mean_probability():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25]])
    expert_index = torch.tensor([0, 0, 2, 0])
    f = torch.tensor([3 / 4, 0.0, 1 / 4])
    P = probs.mean(0)
    assert switch_load_balancing_loss(probs, expert_index) == pytest.approx(3 * (f * P).sum().item())


def test_switch_loss_is_one_when_balanced_and_E_when_collapsed():
    uniform = torch.full((8, 4), 0.25)
    assert switch_load_balancing_loss(uniform, torch.arange(8) % 4) == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0, 0, 0]]).repeat(8, 1)
    assert switch_load_balancing_loss(collapsed, torch.zeros(8, dtype=torch.long)) == pytest.approx(4.0)


def test_z_loss_is_mean_squared_logsumexp():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])
    expected = torch.stack([torch.log(torch.exp(row).sum()) ** 2 for row in logits]).mean()
    assert router_z_loss(logits) == pytest.approx(expected.item(), rel=1e-6)


def test_z_loss_ignores_masked_experts():
    logits = torch.tensor([[1.0, float("-inf")], [0.5, float("-inf")]])
    assert torch.isfinite(router_z_loss(logits))
    assert router_z_loss(logits) == pytest.approx(((torch.tensor([1.0, 0.5])) ** 2).mean().item(), rel=1e-4)


def test_global_balance_uses_counts_accumulated_over_micro_batches_until_the_optimizer_step():
    router = TopKRouter(4, 3, k=1, global_balance_loss_weight=1.0).train()
    x1, x2 = torch.randn(10, 4), torch.randn(6, 4)
    r1 = router(x1)
    r2 = router(x2)
    counts = torch.bincount(torch.cat([r1.expert_index, r2.expert_index]), minlength=3).float()
    expected = global_batch_load_balancing_loss(r2.probs, counts)
    assert r2.aux_losses["global_balance"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert router.global_counts.sum() == 16
    router.after_optimizer_step()
    assert router.global_counts.sum() == 0
    r3 = router(x2)
    local = torch.bincount(r3.expert_index, minlength=3).float()
    assert r3.aux_losses["global_balance"].item() == pytest.approx(
        global_batch_load_balancing_loss(r3.probs, local).item(), rel=1e-6)


def test_aux_losses_are_weighted_and_only_computed_in_training():
    router = TopKRouter(4, 3, k=2, balance_loss_weight=0.5, z_loss_weight=0.1).train()
    x = torch.randn(9, 4)
    routing = router(x)
    assert routing.aux_losses["balance"].item() == pytest.approx(
        0.5 * switch_load_balancing_loss(routing.probs, routing.expert_index).item(), rel=1e-6)
    assert routing.aux_losses["z"].item() == pytest.approx(0.1 * router_z_loss(routing.logits).item(), rel=1e-6)
    assert router.eval()(x).aux_losses == {}


def _global_balance_rank(rank, world, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        router = TopKRouter(4, 3, k=1, global_balance_loss_weight=1.0).train()
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(rank + 1))
        routing = router(x)
        results[rank] = (routing.expert_index.tolist(), router.global_counts.tolist())
    finally:
        dist.destroy_process_group()


def test_global_balance_sums_counts_over_data_parallel_ranks():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_global_balance_rank, args=(2, port, results), nprocs=2, join=True)
    both = torch.bincount(torch.tensor(results[0][0] + results[1][0]), minlength=3).float().tolist()
    assert results[0][1] == both and results[1][1] == both
