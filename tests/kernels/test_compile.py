"""kernels/ops.py: the torch.library ops pass ``torch.library.opcheck`` (schema, fake kernels, autograd registration,
AOT-autograd tracing against eager) on every backend, and torch.compile(fullgraph=True) records them as single ops
(the layer and a whole network under torch.compile: tests/moe/test_compile.py)."""

import pytest
import torch

from moezoo import kernels
from moezoo.kernels import ops
from moezoo.kernels.triton import installed as triton_installed

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["reference", pytest.param("triton", marks=pytest.mark.skipif(not triton_installed(),
                                                                          reason="triton is not installed"))]
OPCHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _leaf(*shape, g):
    return torch.randn(*shape, generator=g).to(DEVICE).requires_grad_()


def _moe_mlp_args(backend, glu, bias):
    """A tiny routing (tiles at their minimum of 16) with an expert that gets no token."""
    g = torch.Generator().manual_seed(0)
    tokens, d, h, experts = 6, 16, 16, 3
    token_index = torch.arange(tokens).repeat_interleave(2).to(DEVICE)
    expert_index = torch.tensor([0, 2] * tokens).to(DEVICE)
    width = 2 * h if glu else h
    b1, b2 = (_leaf(experts, width, g=g), _leaf(experts, d, g=g)) if bias else (None, None)
    return (_leaf(tokens, d, g=g), token_index, expert_index, torch.rand(2 * tokens, generator=g).to(DEVICE),
            _leaf(experts, d, width, g=g), _leaf(experts, h, d, g=g), b1, b2, "silu" if glu else "gelu", glu,
            backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("glu,bias", [(False, True), (True, False)], ids=["gelu-bias", "swiglu-nobias"])
def test_moe_mlp_ops_pass_opcheck(backend, glu, bias):
    args = _moe_mlp_args(backend, glu, bias)
    args[3].requires_grad_()
    torch.library.opcheck(ops.moe_mlp_op, args, test_utils=OPCHECKS)
    x, _, _, weight, w1, w2, b1, b2, activation, glu, backend = args
    saved = [t.detach() for t in ops.moe_mlp_op(*args)[1:]]
    grad = torch.randn(x.shape[0], w2.shape[-1], generator=torch.Generator().manual_seed(1)).to(DEVICE)
    detached = [None if t is None else t.detach() for t in (x, weight, w1, w2, b1, b2)]
    needs = [True, True, False, True, bias, bias]  # one gradient not asked for
    torch.library.opcheck(ops.moe_mlp_backward_op, (grad, saved, *detached, activation, glu, needs, backend),
                          test_utils=OPCHECKS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("transposed", [False, True], ids=["row-major-w", "transposed-w"])
def test_grouped_mm_ops_pass_opcheck(backend, transposed):
    g = torch.Generator().manual_seed(0)
    x = _leaf(20, 16, g=g)
    w = _leaf(3, 32, 16, g=g).transpose(1, 2) if transposed else _leaf(3, 16, 32, g=g)
    offsets = torch.tensor([7, 7, 20], dtype=torch.int32, device=DEVICE)  # the middle expert gets no row
    torch.library.opcheck(ops.grouped_mm_op, (x, w, offsets, backend), test_utils=OPCHECKS)
    grad = torch.randn(20, 32, generator=g).to(DEVICE)
    torch.library.opcheck(ops.grouped_mm_weight_grad_op, (x.detach(), grad, offsets, backend), test_utils=OPCHECKS)


def _graph_ops(fn, *args) -> set:
    """The targets of the call_function nodes of the one graph torch.compile(fn, fullgraph=True) traces."""
    targets = set()

    def capture(gm, example_inputs):
        targets.update(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm

    torch.compile(fn, fullgraph=True, backend=capture)(*args)
    return targets


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_calls_record_each_public_function_as_its_op(backend):
    x, ti, ei, weight, w1, w2, b1, b2, activation, glu, _ = _moe_mlp_args(backend, False, True)
    targets = _graph_ops(lambda *a: kernels.moe_mlp(*a, backend=backend), x, ti, ei, weight, w1, w2, b1, b2)
    assert torch.ops.moezoo.moe_mlp.default in targets
    offsets = torch.tensor([5, 12], device=DEVICE)  # int64: the public function converts
    targets = _graph_ops(lambda a, b: kernels.grouped_mm(a, b, offsets, backend=backend), x.repeat(2, 1), w1[:2])
    assert torch.ops.moezoo.grouped_mm.default in targets


def test_grouped_mm_compiles_with_inductor_in_float32_on_cpu_and_matches_eager():
    # torch's grouped_mm alone does not compile in fp32 on CPU; inside the op inductor calls it as an extern kernel
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(24, 16, generator=g, requires_grad=True), torch.randn(3, 16, 32, generator=g, requires_grad=True)
    offsets = torch.tensor([10, 10, 24])

    def fn(x, w):
        return torch.nn.functional.gelu(kernels.grouped_mm(x, w, offsets, backend="reference")).square().sum()

    eager = torch.autograd.grad(fn(x, w), (x, w))
    compiled = torch.autograd.grad(torch.compile(fn, fullgraph=True)(x, w), (x, w))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
