"""The MoE layer under torch.compile on CPU: fp32 (grouped_mm runs eagerly there) and bf16 (traced) match eager."""

import pytest
import torch

from moezoo.moe import GroupedMLP, MoE, TopKRouter


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_compiled_moe_layer_matches_eager_forward_and_backward(dtype, tol, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = MoE(32, TopKRouter(32, 4, k=2), GroupedMLP(4, 32, 64)).to(dtype)
    x = torch.randn(24, 32, dtype=dtype, requires_grad=True)
    eager = layer(x)
    eager.float().square().sum().backward()
    eager_grad, eager_w1 = x.grad.clone(), layer.experts.w1.grad.clone()
    x.grad = None
    layer.zero_grad()
    compiled = torch.compile(layer)(x)
    compiled.float().square().sum().backward()
    torch.testing.assert_close(compiled, eager, atol=tol, rtol=tol)
    torch.testing.assert_close(x.grad, eager_grad, atol=tol, rtol=tol)
    torch.testing.assert_close(layer.experts.w1.grad, eager_w1, atol=tol, rtol=tol)
