"""Runs expert-parallel MoE layers in WORLD gloo processes and saves what each rank computed, for
test_expert_parallel.py to compare with one process: ``python ep_worker.py OUT_DIR PORT [WORLD]``.

Every scenario builds its layer from ``build(name)`` (the same seed on every rank, as in one process), shards it
over all ranks, runs rank r's tokens ``tokens(name, r)`` forward and ``(y * probe).sum()`` backward, and saves y,
the token gradient, the router's gradients and the local experts' gradients (plus the gathered state dict).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moezoo.moe import FiLMExperts, MoE, MoEArgs, Routing, load_by_label, routing_labels, routing_stats
from moezoo.moe.parallel import AllToAllDispatch, shard_experts

DIM = 8
SCENARIOS = {  # name -> (MoEArgs, tokens per rank)
    "top_k": (dict(num_experts=4, k=2, router="top_k"), (7, 5)),
    "expert_choice": (dict(num_experts=4, router="expert_choice", capacity_factor=1.0), (6, 10)),
    "top_k_glu": (dict(num_experts=4, k=1, router="top_k", glu=True, activation="silu", num_shared_experts=1),
                  (9, 4)),
}


def build(name: str) -> MoE:
    torch.manual_seed(0)
    if name == "film":
        bank = FiLMExperts(4, DIM)
        return MoE(DIM, MoEArgs(num_experts=4, k=2).build_router(DIM), bank)
    return MoEArgs(**SCENARIOS[name][0]).build(DIM, 2 * DIM)


def tokens(name: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    counts = SCENARIOS.get(name, (None, (5, 8)))[1]
    g = torch.Generator().manual_seed(100 + 10 * rank + len(name))
    n = counts[rank % len(counts)]
    return torch.randn(n, DIM, generator=g), torch.randn(n, DIM, generator=g)


def grads(layer: MoE) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}


def one_sided_routing(rank: int, n: int) -> Routing:
    """Every assignment of every rank on experts 0 and 1 (rank 0's): rank 1 receives nothing; rank 1 has no tokens."""
    token_index = torch.arange(n).repeat_interleave(2)
    expert_index = torch.tensor([0, 1]).repeat(n)
    weight = torch.linspace(0.2, 0.8, 2 * n)
    return Routing(token_index=token_index, expert_index=expert_index, weight=weight, num_tokens=n, num_experts=4,
                   probs=torch.zeros(n, 4), logits=torch.zeros(n, 4))


def run(rank: int, world: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    saved = {}
    for name in [*SCENARIOS, "film"]:
        layer = build(name)
        sharded = shard_experts(layer)
        x, probe = tokens(name, rank)
        x.requires_grad_()
        y = layer(x)
        (y * probe).sum().backward()
        saved[name] = {"y": y.detach(), "dx": x.grad, "grads": grads(layer), "sharded": list(sharded),
                       "state": layer.state_dict(), "local_experts": layer.experts.num_experts}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            saved[name]["y_bf16"] = layer(x).detach().float()
    # the dispatcher alone: all rows to rank 0's experts, and rank 1 without tokens
    layer = build("top_k")
    shard_experts(layer)
    n = 6 if rank == 0 else 0
    x = torch.randn(n, DIM, generator=torch.Generator().manual_seed(7)).requires_grad_()
    routing = one_sided_routing(rank, n)
    routing.weight.requires_grad_()
    assert isinstance(layer.dispatch, AllToAllDispatch)
    y = layer.dispatch(x, routing, layer.experts)
    y.sum().backward()
    saved["one_sided"] = {"y": y.detach(), "dx": x.grad, "dweight": routing.weight.grad,
                          "grads": {n: p.grad.clone() for n, p in layer.experts.named_parameters()}}
    # a full state dict loads into a sharded layer (each rank keeps its slice) and a shard into itself
    layer = build("top_k")
    full = {k: v.clone() for k, v in layer.state_dict().items()}
    shard_experts(layer)
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    layer.load_state_dict(full)
    saved["loaded"] = {k: v.clone() for k, v in layer.experts.named_parameters()}
    # routing statistics of every rank's tokens: counts summed; label tables of different sizes padded
    layer = build("top_k")
    x, _ = tokens("top_k", rank)
    labels = torch.arange(x.shape[0]) % (2 + rank)  # rank 0 sees label values 0-1, rank 1 values 0-2
    with routing_labels(layer, {"parity": labels}):
        layer(x)
    saved["stats"] = {"own": layer.record.last["counts"].clone(),
                      "own_by_label": layer.record.by_label["parity"].clone(),
                      "synced": routing_stats(layer, sync=True)[""],
                      "synced_by_label": load_by_label(layer, sync=True)[""]["parity"]["counts"]}
    torch.save(saved, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    out_dir, port = sys.argv[1], int(sys.argv[2])
    world = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    mp.spawn(run, args=(world, out_dir, port), nprocs=world)
