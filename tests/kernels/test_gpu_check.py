"""benchmarks/gpu_check.py: without CUDA it stops with one line and status 2; its CPU path benchmarks every variant at
a tiny shape and checks the Triton layer (interpreted here) against the reference one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moezoo.kernels.triton import installed as triton_installed

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _run(*args, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.skipif(torch.cuda.is_available(), reason="here the check would run")
def test_without_cuda_the_gpu_check_exits_2_with_one_line_naming_the_cpu_path():
    proc = _run()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--device cpu" in lines[0]


def test_tiny_cpu_run_times_every_variant_and_the_triton_layer_matches_the_reference(tmp_path):
    out = tmp_path / "gpu_check.json"
    # the interpreter makes Triton slow: one timed run, no warmup
    proc = _run("--device", "cpu", "--dtype", "float32", "--tiny", "--repeats", "1", "--warmup", "0",
                "--json", str(out), env={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert "tests" not in report, "the kernel tests run on a GPU only"
    rows = {r["variant"]: r for r in report["rows"]}
    expected = {"reference", "naive", "dense"} | ({"triton"} if triton_installed() else set())
    assert set(rows) == expected and report["skipped"] == []
    for row in rows.values():
        assert row["forward_ms"] > 0 and row["forward_backward_ms"] > 0
        assert row["forward_tflops"] > 0 and row["forward_fraction_of_peak"] is None, "no peak known for a CPU"
    assert rows["reference"]["error_vs_reference"] == 0
    if "triton" in rows:
        assert rows["triton"]["error_vs_reference"] < 1e-4
