"""The one-command GPU check of moezoo's kernels, for whenever a CUDA machine is at hand:

    python benchmarks/gpu_check.py --json gpu_check.json

(a) runs the kernel tests compiled for the GPU, bf16 included (``pytest tests/kernels -q`` with TRITON_INTERPRET and
$MOEZOO_KERNEL_BACKEND unset), and (b) benchmarks the MoE layer in bf16 at benchmarks/moe_layer.py's shapes (T =
8192): moezoo's Triton backend, the reference backend (torch's grouped_mm), the naive per-expert loop and a dense
FFN of the same active FLOPs, forward (recording autograd, as in training) and forward + backward: ms, TFLOP/s of the
expert GEMMs and the fraction of the device's bf16 dense peak (``moe_layer.PEAK_BF16_TFLOPS``; no fraction for a
device not in it). Before timing, each layer's output is checked against the reference backend's. Meant to take
under 5 minutes. Exit status 0 when the tests pass and the outputs agree, 1 otherwise.

Without CUDA it exits with status 2 and one line. ``--device cpu --dtype float32 --tiny`` runs part (b) at a tiny
shape on the CPU in seconds (the Triton variant runs under TRITON_INTERPRET=1, else it is reported as skipped):
tests/kernels/test_gpu_check.py runs it so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from moe_layer import SHAPES, Case, expert_gemm_flops, median_ms, peak_tflops, variants

from moezoo.kernels.dispatch import resolve

ROOT = Path(__file__).resolve().parent.parent
TINY = {"tiny": (32, 32, 4, 2)}  # d, h, E, k: every tile dimension at its 16 minimum or just above
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}  # max error / max |reference output|
LAYER_BACKENDS = ("triton", "reference")


def run_kernel_tests(timeout: float) -> dict:
    """``pytest tests/kernels -q`` compiled for the GPU: its status, its summary line and how long it took."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MOEZOO_KERNEL_BACKEND")}
    cmd = [sys.executable, "-m", "pytest", "tests/kernels", "-q", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout:.0f} s", "seconds": timeout}
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {"returncode": proc.returncode, "summary": lines[-1] if lines else proc.stderr.strip()[-300:],
            "failures": failures, "seconds": time.perf_counter() - start}


def _available(case: Case, backend: str) -> str | None:
    """None when ``backend`` can run the case's layer, else its one-line reason."""
    try:
        resolve("moe_mlp", backend, case.x)
    except ValueError as err:
        return str(err)
    return None


def bench_case(name: str, case: Case, *, repeats: int, warmup: int, peak: float | None) -> tuple[list, list]:
    """The rows of one shape (one per variant) and the variants skipped, with why."""
    skipped = [(b, why) for b in LAYER_BACKENDS if (why := _available(case, b))]
    layers = {b: case.layer(b) for b in LAYER_BACKENDS if b not in dict(skipped)}
    fns = variants(case, layers, baselines=("naive", "dense"))
    with torch.no_grad():
        reference = fns["reference"]().float()
        errors = {b: ((fns[b]().float() - reference).abs().max() / reference.abs().max()).item() for b in layers}
    forward = median_ms(fns, case, backward=False, repeats=repeats, warmup=warmup)
    both = median_ms(fns, case, backward=True, repeats=repeats, warmup=warmup)
    rows = []
    for variant in fns:
        row = {"shape": name, "T": case.tokens, "d": case.d, "h": case.h, "E": case.num_experts, "k": case.k,
               "variant": variant, "forward_ms": forward[variant], "forward_backward_ms": both[variant]}
        for key, ms, backward in (("forward", forward[variant], False), ("forward_backward", both[variant], True)):
            tflops = expert_gemm_flops(case.tokens, case.d, case.h, case.k, backward) / (ms / 1000) / 1e12
            row[f"{key}_tflops"] = tflops
            row[f"{key}_fraction_of_peak"] = tflops / peak if peak else None
        if variant in errors:
            row["error_vs_reference"] = errors[variant]
        rows.append(row)
    return rows, skipped


def _print_rows(rows: list, peak: float | None) -> None:
    def pct(x):
        return f"{100 * x:5.1f}%" if x is not None else "     -"

    print(f"{'shape':7s} {'variant':10s} | {'fwd ms':>9s} {'TFLOP/s':>8s} {'peak':>6s} | {'fwd+bwd ms':>10s} "
          f"{'TFLOP/s':>8s} {'peak':>6s} | error vs reference" + ("" if peak else "  (peak unknown)"))
    for r in rows:
        error = f"{r['error_vs_reference']:.1e}" if "error_vs_reference" in r else ""
        print(f"{r['shape']:7s} {r['variant']:10s} | {r['forward_ms']:9.2f} {r['forward_tflops']:8.1f} "
              f"{pct(r['forward_fraction_of_peak'])} | {r['forward_backward_ms']:10.2f} "
              f"{r['forward_backward_tflops']:8.1f} {pct(r['forward_backward_fraction_of_peak'])} | {error}",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", help="float32 | float16 | bfloat16")
    parser.add_argument("--tiny", action="store_true", help="one tiny shape (T=32, d=32), for a CPU smoke run")
    parser.add_argument("--tokens", type=int, default=None, help="T (default 8192; 32 with --tiny)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default 10; 3 tiny)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (Triton autotunes in the first)")
    parser.add_argument("--skip-tests", action="store_true", help="only the benchmark (tests never run on a CPU)")
    parser.add_argument("--tests-timeout", type=float, default=240.0, help="seconds for the kernel tests")
    parser.add_argument("--json", default=None, help="write the report here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): run it on a GPU machine, or "
              "pass --device cpu --dtype float32 --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(name) if device.type == "cuda" else None
    report = {"device": name, "dtype": args.dtype, "peak_bf16_tflops": peak, "torch": torch.__version__}
    print(f"gpu_check on {name} ({args.dtype}); bf16 dense peak: {peak or 'unknown'} TFLOP/s", flush=True)

    if device.type == "cuda" and not args.skip_tests:
        report["tests"] = tests = run_kernel_tests(args.tests_timeout)
        print(f"(a) pytest tests/kernels: {tests['summary']} ({tests['seconds']:.0f} s)", flush=True)
        for line in tests.get("failures", []):
            print(f"    {line}", flush=True)

    shapes = TINY if args.tiny else SHAPES
    tokens = args.tokens or (32 if args.tiny else 8192)
    repeats = args.repeats or (3 if args.tiny else 10)
    report["rows"], report["skipped"] = [], []
    print(f"(b) the MoE layer, T={tokens}, {repeats} timed runs each (median):", flush=True)
    for shape, (d, h, num_experts, k) in shapes.items():
        case = Case(d, h, num_experts, k, tokens, device, dtype)
        rows, skipped = bench_case(shape, case, repeats=repeats, warmup=args.warmup, peak=peak)
        report["rows"] += rows
        report["skipped"] += [{"shape": shape, "variant": b, "why": why} for b, why in skipped]
        for b, why in skipped:
            print(f"    {shape}: {b} skipped: {why}", flush=True)
    _print_rows(report["rows"], peak)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")

    tests_ok = report.get("tests", {}).get("returncode", 0) == 0
    bad = [r for r in report["rows"] if r.get("error_vs_reference", 0) > TOLERANCE[dtype]]
    for r in bad:
        print(f"gpu_check: {r['shape']} {r['variant']} differs from the reference backend by "
              f"{r['error_vs_reference']:.2e} of its largest output (tolerance {TOLERANCE[dtype]:.0e})",
              file=sys.stderr)
    return 0 if tests_ok and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
