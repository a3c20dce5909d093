"""What a layer's record keeps of uncollected aux losses: a loop that never calls aux_loss holds a bounded number of
forwards' graphs (RoutingRecord.max_pending), not one per step; aux_loss still sums every forward since its last
call, in the plain loop, after several forwards and inside TaskModule."""

import gc
import warnings
import weakref

import pytest
import torch
import torch.nn.functional as F

from moezoo.moe import MoEArgs, RoutingRecord, aux_loss, switch_load_balancing_loss
from moezoo.training import TaskModule

STEPS = 200


def _moe():
    torch.manual_seed(0)
    return MoEArgs(num_experts=4, k=2, balance_loss_weight=0.1, z_loss_weight=0.01).build(8, 16).train()


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is torch.Tensor or type(obj) is torch.nn.Parameter)


def _expected_aux(moe, x) -> float:
    routing = moe.router(x)  # a bare router call records nothing
    return sum(v.item() for v in routing.aux_losses.values())


def test_a_training_loop_that_never_collects_holds_a_bounded_number_of_graphs():
    moe = _moe()
    optimizer = torch.optim.SGD(moe.parameters(), lr=1e-3)
    first_loss, live, pending = None, {}, []
    with pytest.warns(UserWarning, match=r"dropped aux losses nobody collected.*aux_loss\(model\)") as caught:
        for step in range(STEPS):
            x = torch.randn(12, 8, requires_grad=True)
            loss = moe(x).square().mean()  # diffusers-style: the task loss only
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            pending.append(len(moe.record.losses))
            if step == 0:
                first_loss = weakref.ref(moe.record.losses[0]["balance"])
            if step in (50, STEPS - 1):
                live[step] = _live_tensors()
    assert max(pending) == RoutingRecord.max_pending and pending[-1] == RoutingRecord.max_pending
    assert first_loss() is None, "the first step's aux loss (and the graph it holds) was freed"
    assert live[STEPS - 1] == live[50], "memory stays flat: no tensor accumulates per step"
    assert len([w for w in caught if "dropped aux losses" in str(w.message)]) == 1, "warned once"


class _Saved:
    """What a saved-tensors hook stores in place of a tensor the autograd graph saves: it lives as long as the graph."""

    def __init__(self, tensor):
        self.tensor = tensor.detach()  # no grad_fn: a saved output would otherwise hold its own node in a cycle


def test_train_mode_forwards_without_backward_free_old_graphs():
    moe = _moe()
    x = torch.randn(12, 8, requires_grad=True)
    saved = []

    def pack(tensor):
        holder = _Saved(tensor)
        saved.append(weakref.ref(holder))
        return holder

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda holder: holder.tensor):
        moe(x)  # analysis in train mode with grad enabled: nobody keeps the output, no backward
    gc.collect()
    held = [ref for ref in saved if ref() is not None]  # the graph behind the router: what the aux losses hold
    assert held, "the record's aux losses hold the forward's graph"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(STEPS):
            moe(x)
            if step == 50:
                live = _live_tensors()
    assert len(moe.record.losses) == RoutingRecord.max_pending
    assert _live_tensors() == live, "memory stays flat"
    assert all(ref() is None for ref in held), "the first forward's graph was freed"


def test_no_grad_forwards_drop_old_losses_without_warning():
    moe = _moe()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no graph is dropped: nothing to warn about
        with torch.no_grad():
            for _ in range(20):
                moe(torch.randn(12, 8))
    assert len(moe.record.losses) == RoutingRecord.max_pending


def test_aux_loss_after_each_forward_returns_that_forwards_losses_and_keeps_nothing():
    moe = _moe()
    optimizer = torch.optim.SGD(moe.parameters(), lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(STEPS):
            x = torch.randn(12, 8)
            with torch.no_grad():
                expected = _expected_aux(moe, x)
            y = moe(x)
            aux = aux_loss(moe)
            assert moe.record.losses == []
            assert aux.item() == pytest.approx(expected, rel=1e-5), step
            (y.square().mean() + aux).backward()
            optimizer.step()
            optimizer.zero_grad()


def test_several_forwards_before_aux_loss_all_count_up_to_max_pending():
    moe = _moe()
    xs = [torch.randn(12, 8) for _ in range(RoutingRecord.max_pending + 2)]
    with torch.no_grad():
        expected = [_expected_aux(moe, x) for x in xs]
    for x in xs[:3]:
        moe(x)
    assert aux_loss(moe).item() == pytest.approx(sum(expected[:3]), rel=1e-5)
    with pytest.warns(UserWarning, match="dropped aux losses"):
        for x in xs:
            moe(x)
    assert aux_loss(moe).item() == pytest.approx(sum(expected[-RoutingRecord.max_pending:]), rel=1e-5)


def test_max_pending_can_be_raised_per_layer():
    moe = _moe()
    moe.record.max_pending = 10
    xs = [torch.randn(12, 8) for _ in range(10)]
    with torch.no_grad():
        expected = sum(_expected_aux(moe, x) for x in xs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x in xs:
            moe(x)
    assert aux_loss(moe).item() == pytest.approx(expected, rel=1e-5)


class TwoPassRegressor(TaskModule):
    """A task whose step runs the layer twice (as classifier-free guidance training would)."""

    def __init__(self):
        super().__init__()
        self.moe = MoEArgs(num_experts=4, k=2, balance_loss_weight=0.5).build(6, 8)

    def task_step(self, batch, stage):
        x, y = batch
        return F.mse_loss(self.moe(x), y) + F.mse_loss(self.moe(2 * x), y)


def test_task_module_adds_both_forwards_losses_step_after_step():
    torch.manual_seed(0)
    task = TwoPassRegressor().train()
    for step in range(3):
        x, y = torch.randn(10, 6), torch.randn(10, 6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log without a trainer
            loss = task.training_step((x, y), step)
        assert task.moe.record.losses == []
        task.eval()
        with torch.no_grad():
            task_loss = task.task_step((x, y), "train")
            aux = sum(0.5 * switch_load_balancing_loss(r.probs, r.expert_index)
                      for r in (task.moe.router(x), task.moe.router(2 * x)))
        task.train()
        assert loss.item() == pytest.approx((task_loss + aux).item(), rel=1e-5)


def test_a_compiled_loop_that_never_collects_stops_recompiling():
    # each pending length is a guard of its own: bounded, the compiled layer settles (unbounded, it recompiled every
    # step and failed at torch._dynamo's recompile limit)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    moe = _moe()
    compiled = torch.compile(moe, fullgraph=True, backend="aot_eager")
    graphs = []
    for step in range(RoutingRecord.max_pending + 6):
        x = torch.randn(12, 8, generator=torch.Generator().manual_seed(step), requires_grad=True)
        compiled(x).sum().backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[-1] == graphs[RoutingRecord.max_pending] == RoutingRecord.max_pending + 1
    assert len(moe.record.losses) == RoutingRecord.max_pending
    torch._dynamo.reset()
