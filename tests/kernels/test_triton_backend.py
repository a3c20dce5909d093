"""The choice of backend with triton registered (kernels/dispatch.py, kernels/triton/__init__.py): ``auto`` picks
per device, and an explicit ``triton`` that cannot run says why and what can."""

import subprocess
import sys

import pytest
import torch

import moezoo.kernels.dispatch as dispatch
import moezoo.kernels.triton as triton_backend
from moezoo import kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def registry(monkeypatch):
    """Copies of the backend tables, so that registrations in a test are undone."""
    for table in ("_BACKENDS", "_CHECKS", "_AUTO", "_UNAVAILABLE"):
        monkeypatch.setattr(dispatch, table, dict(getattr(dispatch, table)))


def _inputs(device="cpu", dtype=torch.float32):
    x, w = torch.randn(4, 16, dtype=dtype, device=device), torch.randn(2, 16, 16, dtype=dtype, device=device)
    return x, w, torch.tensor([1, 4], dtype=torch.int32, device=device)


def _spy_on_triton(calls):
    reference = dispatch._BACKENDS["reference"]["grouped_mm"]

    def spy(x, w, offsets):
        calls.append(x.device.type)
        return reference.forward(x, w, offsets)

    dispatch._BACKENDS["triton"] = {**dispatch._BACKENDS["triton"], "grouped_mm": reference._replace(forward=spy)}


@pytest.mark.skipif(not triton_backend.installed(), reason="triton is not installed")
def test_triton_is_registered_and_import_moezoo_kernels_loads_none_of_its_kernels():
    assert "triton" in kernels.available_backends()
    code = ("import sys; import moezoo.kernels; "
            "assert not [m for m in sys.modules if m.startswith('moezoo.kernels.triton.')], 'kernels imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_auto_picks_reference_on_cpu_even_when_the_interpreter_is_on(registry, monkeypatch):
    if "triton" not in dispatch._BACKENDS:
        pytest.skip("triton is not installed")
    monkeypatch.setattr(triton_backend, "interpreting", lambda: True)
    calls = []
    _spy_on_triton(calls)
    torch.manual_seed(0)
    expected = kernels.grouped_mm(*_inputs(), backend="reference")
    torch.manual_seed(0)
    assert torch.equal(kernels.grouped_mm(*_inputs(), backend="auto"), expected)
    monkeypatch.setenv("MOEZOO_KERNEL_BACKEND", "auto")
    kernels.grouped_mm(*_inputs())
    assert calls == [], "auto ran triton on cpu"
    kernels.grouped_mm(*_inputs(), backend="triton")
    assert calls == ["cpu"], "an explicit triton does run under the interpreter"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_auto_picks_triton_on_cuda_and_reference_for_float64(registry):
    calls = []
    _spy_on_triton(calls)
    kernels.grouped_mm(*_inputs("cuda"), backend="auto")
    assert calls == ["cuda"]
    kernels.grouped_mm(*_inputs("cuda", torch.float64), backend="auto")
    assert calls == ["cuda"], "triton does not do float64: auto falls back to reference"


@pytest.mark.skipif(not triton_backend.installed(), reason="triton is not installed")
def test_triton_on_cpu_without_the_interpreter_names_the_device_and_the_alternatives(monkeypatch):
    monkeypatch.setattr(triton_backend, "interpreting", lambda: False)
    with pytest.raises(ValueError, match=r"'triton' cannot run grouped_mm on cpu torch.float32 tensors") as info:
        kernels.grouped_mm(*_inputs(), backend="triton")
    assert "backend='reference'" in str(info.value) and "TRITON_INTERPRET=1 before importing triton" in str(info.value)
    x, w, _ = _inputs()
    index = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"'triton' cannot run moe_mlp on cpu .*backend='reference'"):
        kernels.moe_mlp(x, index, index, torch.ones(2), w, w, backend="triton")


@pytest.mark.skipif(not triton_backend.installed(), reason="triton is not installed")
def test_bfloat16_under_the_interpreter_raises_explaining_the_interpreter_computes_it_wrongly(monkeypatch):
    monkeypatch.setattr(triton_backend, "interpreting", lambda: True)
    with pytest.raises(ValueError, match=r"interpreter .*computes bfloat16 wrongly.*float32 or float16"):
        kernels.grouped_mm(*_inputs(dtype=torch.bfloat16), backend="triton")


@pytest.mark.skipif(not triton_backend.installed(), reason="triton is not installed")
def test_float64_on_triton_raises_naming_the_supported_dtypes():
    with pytest.raises(ValueError, match=r"supports torch.float32, torch.float16, torch.bfloat16.*'reference'"):
        kernels.grouped_mm(*_inputs(DEVICE, torch.float64), backend="triton")


def test_without_triton_installed_asking_for_it_says_so_and_auto_uses_reference(registry, monkeypatch):
    monkeypatch.setattr(triton_backend, "installed", lambda: False)
    dispatch._BACKENDS.pop("triton", None)
    dispatch._CHECKS.pop("triton", None)
    dispatch._AUTO.pop("triton", None)
    triton_backend.register()
    assert kernels.available_backends() == ["reference"]
    with pytest.raises(ValueError, match=r"'triton' is unavailable: the triton package is not installed.*'reference'"):
        kernels.grouped_mm(*_inputs(), backend="triton")
    assert kernels.grouped_mm(*_inputs(DEVICE), backend="auto").shape == (4, 16)
