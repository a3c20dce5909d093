"""Expert parallelism on P processes (gloo on CPU, NCCL on GPUs) against one process, side by side in one run.

Each step is forward + backward of one MoE layer (``MoEArgs.build``: top-k router, ``GroupedMLP``) on T tokens per
rank. Variants, all in this run:

  single       one process, the unsharded layer, T tokens (one data-parallel rank's work: all E experts local)
  ep           P processes, the layer sharded (E / P experts each, ``moezoo.moe.parallel``), T tokens per rank
  ep-nocomm    the same P processes and tokens, but each rank computes its E / P experts on the rows it would
               receive (T * k / P per expert group under balanced routing) without any all-to-all: the compute share

Reported per variant: median ms per step over ``--steps`` (after ``--warmup``), and for ``ep`` the bytes one rank
sends per all-to-all (the token rows to the experts' ranks, and the outputs back; the backward sends the same again)
and the counts exchange. ``comm_share`` = 1 - ep-nocomm / ep.

    python benchmarks/expert_parallel.py --json ep.json                     # CPU, 2 processes, gloo
    python benchmarks/expert_parallel.py --tokens 8192 --dim 512 --hidden 2048
    python benchmarks/expert_parallel.py --device cuda --processes 8        # one GPU per process, NCCL

The processes share this machine's cores (``--threads`` each; the single variant gets the same), so on CPU the
comparison is of the work per rank, not of wall-clock scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moezoo.moe import MoEArgs
from moezoo.moe.parallel import shard_experts


def build(args, device):
    torch.manual_seed(0)
    moe = MoEArgs(num_experts=args.experts, k=args.k, router="top_k", balance_loss_weight=0.0)
    return moe.build(args.dim, args.hidden).to(device)


def median_ms(step, warmup: int, steps: int, device) -> float:
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def tokens(args, rank: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1 + rank)
    return torch.randn(args.tokens, args.dim, generator=g).to(device).requires_grad_()


def single(args) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device == "cpu" else "cuda:0")
    layer, x = build(args, device), tokens(args, 0, device)

    def step():
        layer(x).sum().backward()

    return {"variant": "single", "ms": median_ms(step, args.warmup, args.steps, device)}


def worker(rank: int, args, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cpu") if args.device == "cpu" else torch.device("cuda", rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("gloo" if device.type == "cpu" else "nccl", rank=rank, world_size=args.processes)
    torch.set_num_threads(args.threads)
    layer = build(args, device)
    shard_experts(layer)
    x = tokens(args, rank, device)
    sent = {}
    dispatch = layer.dispatch

    def counting(x_, routing, bank):
        sent["rows"] = int((routing.expert_index // dispatch.local_experts != dispatch.rank).sum())
        return dispatch(x_, routing, bank)

    layer.dispatch = counting

    def step():
        layer(x).sum().backward()

    ep_ms = median_ms(step, args.warmup, args.steps, device)
    # the compute share: this rank's experts on as many rows as balanced routing sends them, no collectives
    bank = layer.experts
    rows = args.tokens * args.k  # balanced: each of the P ranks sends T * k / P rows to every rank
    local = bank.num_experts
    received = torch.randn(rows, args.dim, device=device, requires_grad=True)
    from moezoo.moe import Routing

    expert_index = torch.arange(local, device=device).repeat_interleave(rows // local + 1)[:rows]
    empty = torch.zeros(rows, local, device=device)
    routing = Routing(token_index=torch.arange(rows, device=device), expert_index=expert_index,
                      weight=torch.ones(rows, device=device), num_tokens=rows, num_experts=local, probs=empty,
                      logits=empty)
    router = layer.router

    def compute_only():
        r = router(x.detach())
        (bank(received, routing).sum() + r.weight.sum()).backward()

    nocomm_ms = median_ms(compute_only, args.warmup, args.steps, device)
    row_bytes = args.dim * x.element_size()
    result = {"rank": rank, "ep_ms": ep_ms, "nocomm_ms": nocomm_ms, "rows_sent_to_other_ranks": sent["rows"],
              "bytes_per_all_to_all": sent["rows"] * row_bytes, "count_bytes": args.experts * 8}
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per rank")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = single(args)
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"moezoo-ep-bench-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(worker, args=(args, free_port(), str(out)), nprocs=args.processes)
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(args.processes)]
    ep_ms = max(r["ep_ms"] for r in ranks)  # a step ends when the slowest rank ends
    nocomm = max(r["nocomm_ms"] for r in ranks)
    config = {k: getattr(args, k) for k in ("processes", "tokens", "dim", "hidden", "experts", "k", "threads",
                                            "device")}
    row = {**config, "single_ms": base["ms"], "ep_ms": ep_ms, "ep_nocomm_ms": nocomm,
           "ep_over_single": ep_ms / base["ms"], "comm_share": 1 - nocomm / ep_ms,
           "bytes_per_all_to_all": statistics.mean(r["bytes_per_all_to_all"] for r in ranks),
           "all_to_alls_per_step": 4, "ranks": ranks}
    print(f"| P | T / rank | d | h | E | k | single ms | EP ms | EP compute-only ms | EP / single | comm share | "
          f"MB per all-to-all (one rank) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
          f"| {args.processes} | {args.tokens} | {args.dim} | {args.hidden} | {args.experts} | {args.k} | "
          f"{base['ms']:.1f} | {ep_ms:.1f} | {nocomm:.1f} | {row['ep_over_single']:.2f} | {row['comm_share']:.2f} | "
          f"{row['bytes_per_all_to_all'] / 1e6:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
