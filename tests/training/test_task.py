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


class LabelledRegressor(Regressor):
    routing_label_names = {"class": ["cat", "dog"]}

    def routing_labels(self, batch, stage):
        return {"class": batch[2]}

    def task_step(self, batch, stage):
        return F.mse_loss(self.moe(batch[0]), batch[1])


def test_validation_counts_the_routing_by_the_labels_the_task_gives_and_reports_nmi_and_load():
    torch.manual_seed(0)
    task = LabelledRegressor().eval()
    task.on_validation_epoch_start()
    x = torch.randn(12, 6)
    label = (x[:, 0] > 0).long()
    task.validation_step((x, torch.randn(12, 6), label), 0)
    values = task.log_routing_by_label("val")
    routing = task.moe.router(x)
    dog = label[routing.token_index] == 1
    dog_load = torch.bincount(routing.expert_index[dog], minlength=4).float()
    reported = torch.tensor([values[f"val/routing/moe/class=dog/e{e}"] for e in range(4)])
    assert torch.allclose(reported, dog_load / dog_load.sum())
    table = torch.stack([torch.bincount(routing.expert_index[label[routing.token_index] == c], minlength=4)
                         for c in (0, 1)]).float()
    from moezoo.moe import normalized_mutual_information

    assert values["val/routing/class_nmi"] == pytest.approx(normalized_mutual_information(table))
    assert values["val/routing/moe/class_nmi"] == values["val/routing/class_nmi"]
    assert sum(values[f"val/routing/moe/load_e{e}"] for e in range(4)) == pytest.approx(1.0)
    assert task.log_routing_by_label("val") == {}, "the tally restarts"


def test_training_steps_count_nothing_by_label():
    task = LabelledRegressor().train()
    task.training_step((torch.randn(8, 6), torch.randn(8, 6), torch.zeros(8, dtype=torch.long)), 0)
    assert task.moe.record.by_label == {}
