"""Speed benchmark of the moezoo MoE layer (forward + backward), side by side in one run with:

  (a) dense    a dense FFN of the same active FLOPs (hidden = k * h),
  (b) naive    the per-expert Python loop (gather the expert's tokens, two matmuls, weighted index_add),
  (c) grouped  torch's grouped_mm composed by hand: gather, two grouped GEMMs, weighted index_add.

The moezoo layer is `MoE(TopKRouter, GroupedMLP)` on the chosen kernel backend, router included; `kernel` is
`moezoo.kernels.moe_mlp` alone on the same routing (what (b) and (c) compute: the same expert work; the ratios use
the whole layer, `kernel_ratio_grouped_mm` the kernel alone). Timings are medians over `--repeats` after `--warmup`
runs; the order of the variants rotates every repeat so drift hits all alike. On CUDA also TFLOP/s of the layer's
expert GEMMs and the fraction of the bf16 dense peak (`--peak-tflops`, default 989 for an H100 SXM).

    python benchmarks/moe_layer.py                       # CPU: T=2048, the coarse, fine-grained and small shapes
    python benchmarks/moe_layer.py --shapes small --json out.json
    python benchmarks/moe_layer.py --device cuda --dtype bfloat16 --backend triton

Each JSON row: shape, T, d, h, E, k, dtype, device, backend, ms per variant, ratio_dense, ratio_naive,
ratio_grouped_mm (moezoo time / the other's; < 1 means moezoo is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from moezoo.kernels import moe_mlp, sort_by_expert
from moezoo.moe import GroupedMLP, MoE, TopKRouter

SHAPES = {  # name: (d, h, E, k)
    "coarse": (1024, 2816, 8, 2),
    "fine": (1024, 512, 64, 8),
    "small": (256, 512, 8, 2),
}
_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def naive_loop(x, token_index, expert_index, weight, w1, w2):
    out = torch.zeros_like(x)
    for e in range(w1.shape[0]):
        mine = (expert_index == e).nonzero().squeeze(1)
        if mine.numel() == 0:
            continue
        tokens = token_index[mine]
        h = F.gelu(x[tokens] @ w1[e]) @ w2[e]
        out = out.index_add(0, tokens, h * weight[mine, None])
    return out


def grouped_by_hand(x, token_index, expert_index, weight, w1, w2):
    order, offsets = sort_by_expert(expert_index, w1.shape[0])
    tokens = token_index[order]
    h = F.gelu(_grouped_mm(x[tokens], w1, offs=offsets))
    h = _grouped_mm(h, w2, offs=offsets) * weight[order, None]
    return torch.zeros_like(x).index_add(0, tokens, h)


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def bench_shape(name, tokens, args, device, dtype) -> dict:
    d, h, num_experts, k = SHAPES[name]
    torch.manual_seed(0)
    layer = MoE(d, TopKRouter(d, num_experts, k=k),
                GroupedMLP(num_experts, d, h, activation="gelu", bias=False, backend=args.backend))
    layer = layer.to(device=device, dtype=dtype)
    dense = torch.nn.Sequential(torch.nn.Linear(d, k * h, bias=False), torch.nn.GELU(),
                                torch.nn.Linear(k * h, d, bias=False)).to(device=device, dtype=dtype)
    x = torch.randn(tokens, d, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(tokens, d, device=device, dtype=dtype)
    with torch.no_grad():
        routing = layer.router(x)
    ti, ei, wt = routing.token_index, routing.expert_index, routing.weight.to(dtype)
    w1, w2 = layer.experts.w1, layer.experts.w2

    def run(fn):
        def step():
            x.grad = None
            fn().backward(grad)
        return step

    variants = {
        "moezoo": run(lambda: layer(x)),
        "kernel": run(lambda: moe_mlp(x, ti, ei, wt, w1, w2, activation="gelu", backend=args.backend)),
        "dense": run(lambda: dense(x)),
        "naive": run(lambda: naive_loop(x, ti, ei, wt, w1, w2)),
        "grouped_mm": run(lambda: grouped_by_hand(x, ti, ei, wt, w1, w2)),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = list(variants)
    times = {n: [] for n in names}
    for _ in range(args.warmup):
        for n in names:
            variants[n]()
    for r in range(args.repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            times[n].append(timed(variants[n], sync))
    ms = {n: 1000 * statistics.median(t) for n, t in times.items()}
    row = {"shape": name, "T": tokens, "d": d, "h": h, "E": num_experts, "k": k, "dtype": str(dtype).split(".")[-1],
           "device": device.type, "backend": args.backend or "default", "ms": ms,
           "ratio_dense": ms["moezoo"] / ms["dense"], "ratio_naive": ms["moezoo"] / ms["naive"],
           "ratio_grouped_mm": ms["moezoo"] / ms["grouped_mm"],
           "kernel_ratio_grouped_mm": ms["kernel"] / ms["grouped_mm"]}
    if device.type == "cuda":
        flops = 3 * 2 * 2 * tokens * k * d * h  # fwd + bwd (x3), two GEMMs, 2 FLOPs per MAC
        row["tflops"] = flops / (ms["moezoo"] / 1000) / 1e12
        row["fraction_of_peak"] = row["tflops"] / args.peak_tflops
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--tokens", type=int, default=None, help="T (default 8192 on CUDA, 2048 on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16 (default bf16 on CUDA, fp32 CPU)")
    parser.add_argument("--backend", default=None, help="moezoo.kernels backend (default: $MOEZOO_KERNEL_BACKEND)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the GPU")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    tokens = args.tokens or (8192 if device.type == "cuda" else 2048)
    rows = []
    print(f"{'shape':8s} {'T':>5s} {'E':>3s} {'k':>2s} {'h':>5s} | {'moezoo':>9s} {'dense':>9s} {'naive':>9s} "
          f"{'grouped':>9s} {'kernel':>9s} ms | vs dense  vs naive  vs grouped  kernel vs grouped", flush=True)
    for name in args.shapes:
        row = bench_shape(name, tokens, args, device, dtype)
        rows.append(row)
        ms = row["ms"]
        extra = ""
        if "tflops" in row:
            extra = f"  {row['tflops']:.0f} TFLOP/s ({100 * row['fraction_of_peak']:.0f}% of peak)"
        print(f"{name:8s} {tokens:5d} {row['E']:3d} {row['k']:2d} {row['h']:5d} | {ms['moezoo']:9.1f} "
              f"{ms['dense']:9.1f} {ms['naive']:9.1f} {ms['grouped_mm']:9.1f} {ms['kernel']:9.1f} ms | "
              f"{row['ratio_dense']:8.2f} {row['ratio_naive']:8.2f} {row['ratio_grouped_mm']:10.2f} "
              f"{row['kernel_ratio_grouped_mm']:18.2f}{extra}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
