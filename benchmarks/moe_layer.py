"""Speed benchmark of the moezoo MoE layer (forward + backward), side by side in one run with:

  (a) dense    a dense FFN of the same active FLOPs (hidden = k * h),
  (b) naive    the per-expert Python loop (gather the expert's tokens, two matmuls, weighted index_add),
  (c) grouped  torch's grouped_mm composed by hand: gather, two grouped GEMMs, weighted index_add.

The moezoo layer is `MoE(TopKRouter, GroupedMLP)` on the chosen kernel backend, router included; `kernel` is
`moezoo.kernels.moe_mlp` alone on the same routing (what (b) and (c) compute: the same expert work; the ratios use
the whole layer, `kernel_ratio_grouped_mm` the kernel alone). Timings are medians over `--repeats` after `--warmup`
runs; the order of the variants rotates every repeat so drift hits all alike. On CUDA also TFLOP/s of the layer's
expert GEMMs and the fraction of the device's bf16 dense peak (`--peak-tflops`, default: `peak_tflops` of the
device's name, e.g. 989 for an H100 SXM or H200).

    python benchmarks/moe_layer.py                       # CPU: T=2048, the coarse, fine-grained and small shapes
    python benchmarks/moe_layer.py --shapes small --json out.json
    python benchmarks/moe_layer.py --device cuda --dtype bfloat16 --backend triton
    git worktree add /tmp/prev <rev> && python benchmarks/moe_layer.py --against /tmp/prev   # vs another revision

Each JSON row: shape, T, d, h, E, k, dtype, device, backend, ms per variant, ratio_dense, ratio_naive,
ratio_grouped_mm (moezoo time / the other's; < 1 means moezoo is faster); with ``--against DIR`` (a checkout of
another revision) also ``against`` (that revision's ``kernels.moe_mlp`` on the same routing, timed in the same run)
and ``kernel_ratio_against`` (this kernel / that one). ``benchmarks/gpu_check.py`` reuses the
functions below (``Case``, ``variants``, ``median_ms``, ``expert_gemm_flops``, ``peak_tflops``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
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
# bf16 dense tensor-core peak in TFLOP/s by device name (first match wins; spec sheets, without sparsity)
PEAK_BF16_TFLOPS = (
    (("H100", "PCIe"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    (("H200",), 989.0),  # H200 SXM and GH200: the same tensor cores as the H100 SXM
    (("A100",), 312.0),
    (("L40S",), 362.0),
)
_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def peak_tflops(device_name: str) -> float | None:
    """The bf16 dense peak of a GPU called ``device_name`` (``torch.cuda.get_device_name()``), None if unknown."""
    for parts, peak in PEAK_BF16_TFLOPS:
        if all(p in device_name for p in parts):
            return peak
    return None


def expert_gemm_flops(tokens: int, d: int, h: int, k: int, backward: bool = True) -> int:
    """FLOPs of the expert GEMMs of T tokens with k experts each: two GEMMs of 2 T k d h, x3 with the backward
    (the dense FFN of hidden k * h does the same; the router's small gate GEMM is not counted)."""
    return (3 if backward else 1) * 2 * 2 * tokens * k * d * h


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


@dataclass
class Case:
    """One benchmark shape: tokens x [T, d] and an upstream gradient, and a layer per kernel backend, all with the
    same weights (built from the same seed), so every variant computes the same function."""

    d: int
    h: int
    num_experts: int
    k: int
    tokens: int
    device: torch.device
    dtype: torch.dtype

    def __post_init__(self):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(self.tokens, self.d, generator=g).to(self.device, self.dtype).requires_grad_()
        self.grad = torch.randn(self.tokens, self.d, generator=g).to(self.device, self.dtype)

    def layer(self, backend: str | None) -> MoE:
        torch.manual_seed(0)
        layer = MoE(self.d, TopKRouter(self.d, self.num_experts, k=self.k),
                    GroupedMLP(self.num_experts, self.d, self.h, activation="gelu", bias=False, backend=backend))
        return layer.to(device=self.device, dtype=self.dtype)

    def dense(self) -> torch.nn.Module:
        torch.manual_seed(0)
        dense = torch.nn.Sequential(torch.nn.Linear(self.d, self.k * self.h, bias=False), torch.nn.GELU(),
                                    torch.nn.Linear(self.k * self.h, self.d, bias=False))
        return dense.to(device=self.device, dtype=self.dtype)


def variants(case: Case, layers: dict[str, MoE], baselines=("kernel", "dense", "naive", "grouped_mm")) -> dict:
    """name -> a function computing that variant's output on ``case.x``: each layer of ``layers`` (name -> MoE),
    and the ``baselines`` on the routing of the first layer: ``kernel`` (moe_mlp alone, on the first layer's
    backend), ``dense``, ``naive``, ``grouped_mm`` (torch's grouped_mm composed by hand)."""
    first = next(iter(layers.values()))
    with torch.no_grad():
        routing = first.router(case.x)
    ti, ei, wt = routing.token_index, routing.expert_index, routing.weight.to(case.dtype)
    w1, w2 = first.experts.w1, first.experts.w2
    dense = case.dense()
    fns = {name: (lambda layer=layer: layer(case.x)) for name, layer in layers.items()}
    extra = {
        "kernel": lambda: moe_mlp(case.x, ti, ei, wt, w1, w2, activation="gelu", backend=first.experts.backend),
        "dense": lambda: dense(case.x),
        "naive": lambda: naive_loop(case.x, ti, ei, wt, w1, w2),
        "grouped_mm": lambda: grouped_by_hand(case.x, ti, ei, wt, w1, w2),
    }
    return {**fns, **{name: extra[name] for name in baselines}}


def _timed(fn: Callable[[], None], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def median_ms(fns: dict[str, Callable[[], torch.Tensor]], case: Case, *, backward: bool, repeats: int,
              warmup: int) -> dict[str, float]:
    """Median milliseconds of each function's forward (autograd recording, as in training) or forward + backward
    of ``case.grad``; the variants' order rotates every repeat so that drift hits all alike."""
    def step(fn):
        def run():
            case.x.grad = None
            out = fn()
            if backward:
                out.backward(case.grad)
        return run

    steps = {name: step(fn) for name, fn in fns.items()}
    sync = torch.cuda.synchronize if case.device.type == "cuda" else (lambda: None)
    names = list(steps)
    times = {n: [] for n in names}
    for _ in range(warmup):
        for n in names:
            steps[n]()
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            times[n].append(_timed(steps[n], sync))
    return {n: 1000 * statistics.median(t) for n, t in times.items()}


def load_kernels(checkout: str):
    """The ``kernels`` package of another checkout (e.g. the previous main), imported under its own name."""
    import importlib.util
    import sys

    init = Path(checkout).expanduser() / "kernels" / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"--against: {init} does not exist (give a checkout of moezoo)")
    spec = importlib.util.spec_from_file_location("moezoo_against_kernels", init,
                                                  submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def bench_shape(name, tokens, args, device, dtype, against=None) -> dict:
    d, h, num_experts, k = SHAPES[name]
    case = Case(d, h, num_experts, k, tokens, device, dtype)
    layer = case.layer(args.backend)
    fns = variants(case, {"moezoo": layer})
    if against is not None:
        with torch.no_grad():
            routing = layer.router(case.x)
        ti, ei, wt = routing.token_index, routing.expert_index, routing.weight.to(case.dtype)
        w1, w2 = layer.experts.w1, layer.experts.w2
        fns["against"] = lambda: against.moe_mlp(case.x, ti, ei, wt, w1, w2, activation="gelu", backend=args.backend)
    ms = median_ms(fns, case, backward=True, repeats=args.repeats, warmup=args.warmup)
    row = {"shape": name, "T": tokens, "d": d, "h": h, "E": num_experts, "k": k, "dtype": str(dtype).split(".")[-1],
           "device": device.type, "backend": args.backend or "default", "ms": ms,
           "ratio_dense": ms["moezoo"] / ms["dense"], "ratio_naive": ms["moezoo"] / ms["naive"],
           "ratio_grouped_mm": ms["moezoo"] / ms["grouped_mm"],
           "kernel_ratio_grouped_mm": ms["kernel"] / ms["grouped_mm"]}
    if against is not None:
        row["kernel_ratio_against"] = ms["kernel"] / ms["against"]
    if device.type == "cuda":
        row["tflops"] = expert_gemm_flops(tokens, d, h, k) / (ms["moezoo"] / 1000) / 1e12
        peak = args.peak_tflops or peak_tflops(torch.cuda.get_device_name(device))
        if peak:
            row["fraction_of_peak"] = row["tflops"] / peak
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
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="bf16 dense peak of the GPU (default: known from its name, see PEAK_BF16_TFLOPS)")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--against", default=None, help="a checkout of another revision: time its kernels too")
    args = parser.parse_args()
    against = load_kernels(args.against) if args.against else None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    tokens = args.tokens or (8192 if device.type == "cuda" else 2048)
    rows = []
    print(f"{'shape':8s} {'T':>5s} {'E':>3s} {'k':>2s} {'h':>5s} | {'moezoo':>9s} {'dense':>9s} {'naive':>9s} "
          f"{'grouped':>9s} {'kernel':>9s} ms | vs dense  vs naive  vs grouped  kernel vs grouped", flush=True)
    for name in args.shapes:
        row = bench_shape(name, tokens, args, device, dtype, against)
        rows.append(row)
        ms = row["ms"]
        extra = f"  {row['tflops']:.0f} TFLOP/s" if "tflops" in row else ""
        if "fraction_of_peak" in row:
            extra += f" ({100 * row['fraction_of_peak']:.0f}% of peak)"
        if "kernel_ratio_against" in row:
            extra += f"  kernel vs --against {row['kernel_ratio_against']:.2f} ({ms['against']:.1f} ms)"
        print(f"{name:8s} {tokens:5d} {row['E']:3d} {row['k']:2d} {row['h']:5d} | {ms['moezoo']:9.1f} "
              f"{ms['dense']:9.1f} {ms['naive']:9.1f} {ms['grouped_mm']:9.1f} {ms['kernel']:9.1f} ms | "
              f"{row['ratio_dense']:8.2f} {row['ratio_naive']:8.2f} {row['ratio_grouped_mm']:10.2f} "
              f"{row['kernel_ratio_grouped_mm']:18.2f}{extra}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
