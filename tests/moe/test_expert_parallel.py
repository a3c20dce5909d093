"""Expert parallelism (moezoo.moe.parallel) in 2 gloo processes against one process: the same outputs, token and
router gradients per rank, expert gradients summed over both ranks' tokens, ranks that send or receive nothing, and
checkpoints in the one-process layout (gathered on save, sliced on load)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moezoo.moe.parallel import ExpertParallelError, shard_experts

sys.path.insert(0, str(Path(__file__).parent))
import ep_worker  # noqa: E402

WORLD = 2
NAMES = [*ep_worker.SCENARIOS, "film"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ep")
    done = subprocess.run([sys.executable, str(Path(ep_worker.__file__)), str(out), str(free_port()), str(WORLD)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def single_process(name: str):
    """One unsharded layer run on each rank's tokens in turn: outputs, token grads, router grads per rank, and the
    expert gradients accumulated over all ranks (what the sharded experts must receive)."""
    layer = ep_worker.build(name)
    per_rank = []
    for rank in range(WORLD):
        x, probe = ep_worker.tokens(name, rank)
        x.requires_grad_()
        before = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                  for n, p in layer.named_parameters()}
        y = layer(x)
        (y * probe).sum().backward()
        router = {n: p.grad - before[n] for n, p in layer.named_parameters() if not n.startswith("experts.")}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_bf16 = layer(x).detach().float()
        per_rank.append({"y": y.detach(), "dx": x.grad, "router": router, "y_bf16": y_bf16})
    experts = {n: p.grad for n, p in layer.named_parameters() if n.startswith("experts.")}
    return layer, per_rank, experts


@pytest.mark.parametrize("name", NAMES)
def test_outputs_and_gradients_match_one_process(ranks, name):
    layer, per_rank, expert_grads = single_process(name)
    for rank in range(WORLD):
        got, want = ranks[rank][name], per_rank[rank]
        assert got["local_experts"] == layer.experts.num_experts // WORLD
        torch.testing.assert_close(got["y"], want["y"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["dx"], want["dx"], rtol=1e-5, atol=1e-5)
        for key, grad in want["router"].items():  # router and shared experts: replicated, this rank's tokens only
            torch.testing.assert_close(got["grads"][key], grad, rtol=1e-5, atol=1e-5)
        local = layer.experts.num_experts // WORLD
        for key, grad in expert_grads.items():  # each rank's experts: the gradient of both ranks' tokens
            torch.testing.assert_close(got["grads"][key], grad[rank * local:(rank + 1) * local], rtol=1e-5,
                                       atol=1e-5)
        torch.testing.assert_close(got["y_bf16"], want["y_bf16"], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_the_one_process_layout(ranks, name):
    full = ep_worker.build(name).state_dict()
    for rank in range(WORLD):
        state = ranks[rank][name]["state"]
        assert state.keys() == full.keys()
        for key, value in full.items():
            torch.testing.assert_close(state[key], value)  # gathered by global expert index
        assert set(ranks[rank][name]["sharded"]) == {k for k in full if k.startswith("experts.")}


def test_full_checkpoint_loads_into_each_shard(ranks):
    full = ep_worker.build("top_k").experts.state_dict()
    for rank in range(WORLD):
        for key, value in ranks[rank]["loaded"].items():
            torch.testing.assert_close(value, full[key][rank * 2:(rank + 1) * 2])


def test_ranks_that_send_or_receive_nothing(ranks):
    """Rank 0 has 6 tokens, all on its own experts 0 and 1; rank 1 has none and its experts receive no rows."""
    layer = ep_worker.build("top_k")
    x = torch.randn(6, ep_worker.DIM, generator=torch.Generator().manual_seed(7)).requires_grad_()
    routing = ep_worker.one_sided_routing(0, 6)
    routing.weight.requires_grad_()
    y = layer.experts(x, routing)
    y.sum().backward()
    got = ranks[0]["one_sided"]
    torch.testing.assert_close(got["y"], y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["dx"], x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["dweight"], routing.weight.grad, rtol=1e-5, atol=1e-5)
    for key, grad in got["grads"].items():
        torch.testing.assert_close(grad, layer.experts.get_parameter(key).grad[:2], rtol=1e-5, atol=1e-5)
    empty = ranks[1]["one_sided"]
    assert empty["y"].shape == (0, ep_worker.DIM)
    assert all(float(g.abs().sum()) == 0.0 for g in empty["grads"].values())  # present, zero: no unused parameter


def test_unshardable_layers_say_why(monkeypatch):
    from moezoo.moe import ModuleExperts, MoE, MoEArgs

    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 0)
    odd = MoEArgs(num_experts=3, k=1).build(8, 16)
    with pytest.raises(ExpertParallelError, match="3 experts do not split over 2"):
        shard_experts(odd)
    loop = MoE(8, MoEArgs(num_experts=2, k=1).build_router(8), ModuleExperts([torch.nn.Linear(8, 8)] * 2))
    with pytest.raises(ExpertParallelError, match="ModuleExperts cannot be sharded"):
        shard_experts(loop)


def test_routing_statistics_sum_every_rank(ranks):
    own = [r["stats"]["own"] for r in ranks]
    for r in ranks:
        load = r["stats"]["synced"]["load"]
        torch.testing.assert_close(load, sum(own) / sum(own).sum())
    tables = [r["stats"]["own_by_label"] for r in ranks]
    assert tables[0].shape[0] == 2 and tables[1].shape[0] == 3
    padded = torch.cat([tables[0], torch.zeros(1, tables[0].shape[1])]) + tables[1]
    for r in ranks:
        torch.testing.assert_close(r["stats"]["synced_by_label"], padded)
