"""TaskModule: the training loss is the task loss plus the aux losses of the step, and routers hear of each step."""

import pytest
import torch
import torch.nn.functional as F

from moezoo.moe import MoEArgs, switch_load_balancing_loss
from moezoo.training import TaskModule


class Regressor(TaskModule):
    def __init__(self):
        super().__init__()
        self.moe = MoEArgs(num_experts=4, k=2, balance_loss_weight=0.5, bias_update_rate=0.1).build(6, 8)

    def task_step(self, batch, stage):
        x, y = batch
        return F.mse_loss(self.moe(x), y)


def test_training_step_adds_the_steps_aux_loss_to_the_task_loss():
    torch.manual_seed(0)
    task = Regressor().train()
    x, y = torch.randn(10, 6), torch.randn(10, 6)
    loss = task.training_step((x, y), 0)
    assert task.moe.record.losses == [], "collected by the step"
    task.eval()  # recompute the expectation without recording
    with torch.no_grad():
        routing = task.moe.router(x)
        task_loss = F.mse_loss(task.moe(x), y)
    expected = task_loss + 0.5 * switch_load_balancing_loss(routing.probs, routing.expert_index)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_optimizer_step_updates_the_routers_balancing_bias():
    task = Regressor().train()
    task.training_step((torch.randn(10, 6), torch.randn(10, 6)), 0)
    assert task.moe.router.step_counts.sum() == 20
    from moezoo.moe import after_optimizer_step

    after_optimizer_step(task)
    assert task.moe.router.expert_bias.abs().sum() > 0
    assert task.moe.router.step_counts.sum() == 0
