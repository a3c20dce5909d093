"""The MoE layer and a whole MoE network under torch.compile(fullgraph=True) on CPU: no graph break, and the same
outputs, gradients, aux losses and routing statistics as eager.

Compiling costs 10-40 s per case on 2 cores, so inductor compiles the top-k layer (fp32 and bf16) and the rest goes
through ``aot_eager``: the same Dynamo graph and AOT autograd tracing (fake kernels, autograd formulas) without
inductor's code generation. No torch._dynamo config is changed: nothing on these paths has a data-dependent shape.
"""

import pytest
import torch
from torch._dynamo.utils import counters

from moezoo.backbones import moe_vit
from moezoo.kernels.triton import installed as triton_installed
from moezoo.moe import ExpertChoiceRouter, GroupedMLP, MoE, MoEArgs, TopKRouter, aux_loss
from moezoo.moe.prototype import PrototypeRouter

TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _step(model, fn, x):
    """One training step's outputs: y, every gradient (x and parameters), the aux loss and the routing record."""
    x = x.detach().clone().requires_grad_()
    model.zero_grad()
    y = fn(x)
    loss = aux_loss(model)
    (y.float().square().mean() + loss).backward()
    grads = {"x": x.grad, **{n: p.grad for n, p in model.named_parameters() if p.grad is not None}}
    last = {n: dict(m.record.last) for n, m in model.named_modules() if isinstance(m, MoE)}
    return y.detach(), grads, loss.detach(), last


def _assert_compiled_matches_eager(model, x, dtype, backend):
    eager = _step(model, model, x)
    compiled = _step(model, torch.compile(model, fullgraph=True, backend=backend), x)
    tol = TOL[dtype]
    torch.testing.assert_close(compiled[0], eager[0], atol=tol, rtol=tol)
    assert compiled[1].keys() == eager[1].keys()
    for name, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][name], grad, atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")
    assert eager[2] > 0, "training records a balance loss"
    torch.testing.assert_close(compiled[2], eager[2], atol=tol, rtol=tol)
    for layer, stats in eager[3].items():
        for key, value in stats.items():
            torch.testing.assert_close(compiled[3][layer][key], value, atol=tol, rtol=tol)


def _layer(router, dtype, backend=None):
    torch.manual_seed(0)
    router = (TopKRouter(32, 4, k=2, balance_loss_weight=0.01) if router == "top_k"
              else ExpertChoiceRouter(32, 4, capacity_factor=1.0, balance_loss_weight=0.01))
    return MoE(32, router, GroupedMLP(4, 32, 64, backend=backend)).to(dtype)


@pytest.mark.parametrize("router,dtype,compiler", [
    ("top_k", torch.float32, "inductor"),
    ("top_k", torch.bfloat16, "inductor"),
    ("expert_choice", torch.float32, "aot_eager"),
    ("expert_choice", torch.bfloat16, "aot_eager"),
])
def test_compiled_moe_layer_has_no_graph_break_and_matches_eager(router, dtype, compiler):
    layer = _layer(router, dtype)
    x = torch.randn(24, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
    _assert_compiled_matches_eager(layer, x, dtype, compiler)


class _Conditioned(torch.nn.Module):
    """A ProMoE layer called with a fixed per-sample condition mask (4 samples of 6 tokens, the 2nd unconditional)."""

    def __init__(self, layer: MoE):
        super().__init__()
        self.layer = layer
        self.register_buffer("dropped", torch.tensor([False, True, False, False]))

    def forward(self, x):
        return self.layer(x, condition=self.dropped)


@pytest.mark.parametrize("choice", ["token", "expert"])
def test_compiled_promoe_layer_has_no_graph_break_and_matches_eager(choice):
    """Both ProMoE forms, routing contrastive loss included (its unused experts are masked, not indexed away)."""
    torch.manual_seed(0)
    router = PrototypeRouter(32, num_routed=4, k=1, choice=choice, tokens_per_sample=6)
    model = _Conditioned(MoE(32, router, GroupedMLP(5, 32, 64)))
    x = torch.randn(24, 32, generator=torch.Generator().manual_seed(1))
    _assert_compiled_matches_eager(model, x, torch.float32, "aot_eager")


@pytest.mark.skipif(not triton_installed(), reason="triton is not installed")
def test_compiled_moe_layer_on_the_triton_backend_matches_eager():
    if not torch.cuda.is_available():
        from moezoo.kernels.triton import interpreting

        assert interpreting(), "tests/conftest.py sets TRITON_INTERPRET=1 on a machine without a GPU"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layer = _layer("top_k", torch.float32, backend="triton").to(device)
    x = torch.randn(24, 32, generator=torch.Generator().manual_seed(1)).to(device)
    _assert_compiled_matches_eager(layer, x, torch.float32, "aot_eager")


def test_compiled_training_steps_compile_twice_then_never_again():
    # the second step sees the load accumulated by the first (None before): one recompile, then the guards hold
    layer = _layer("top_k", torch.float32)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    graphs = []
    for step in range(4):
        x = torch.randn(24, 32, generator=torch.Generator().manual_seed(step), requires_grad=True)
        (compiled(x).sum() + aux_loss(layer)).backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs == [1, 2, 2, 2]
    assert layer.record.losses == [], "aux_loss collected every step's loss"


def _vit():
    torch.manual_seed(0)
    # as tasks/image_classification/model.py builds it, at a tiny size
    return moe_vit(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=32, depth=2, num_heads=2,
                   moe=MoEArgs(num_experts=4, k=2))


@pytest.mark.parametrize("compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_moe_vit_has_no_graph_break_and_matches_eager(compiler):
    net = _vit()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    _assert_compiled_matches_eager(net, x, torch.float32, compiler)


def test_counting_by_label_traces_in_one_graph_and_matches_eager():
    from moezoo.moe import load_by_label, routing_labels

    torch.manual_seed(0)
    layer = MoE(16, TopKRouter(16, 4, k=2), GroupedMLP(4, 16, 32)).eval()
    x = torch.randn(3, 5, 16)
    label = torch.tensor([2, -1, 0])  # the second sample is not counted
    with routing_labels(layer, {"class": label}):
        layer(x)
    eager = load_by_label(layer)[""]
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    with routing_labels(layer, {"class": label}):
        compiled(x)
    traced = load_by_label(layer)[""]
    for name in ("class", "*"):
        torch.testing.assert_close(traced[name]["counts"], eager[name]["counts"])
    assert eager["class"]["counts"][1].sum() == 0 and eager["*"]["counts"].sum() == 2 * 5 * 2
