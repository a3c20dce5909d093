"""FlopCounterMode counts the experts' grouped GEMMs (torch has no formula for aten._grouped_mm)."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from moezoo import kernels
from moezoo.moe import FiLMExperts, GroupedMLP, MoE, TopKRouter


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_a_grouped_gemm_counts_two_flops_per_multiply_add_of_each_row_with_its_experts_weight():
    x, w = torch.randn(10, 8), torch.randn(3, 8, 5)
    offsets = torch.tensor([4, 4, 10], dtype=torch.int32)
    assert _flops(lambda: kernels.grouped_mm(x, w, offsets, backend="reference")) == 2 * 10 * 8 * 5


def test_an_moe_layer_counts_its_experts_and_its_router_forward_and_backward():
    torch.manual_seed(0)
    tokens, d, h, e, k = 30, 16, 64, 4, 2
    moe = MoE(d, TopKRouter(d, e, k=k), GroupedMLP(e, d, h, backend="reference")).eval()
    x = torch.randn(tokens, d)
    router, experts = 2 * tokens * d * e, 2 * tokens * k * (d * h + h * d)
    assert _flops(lambda: moe(x)) == router + experts
    film = MoE(d, TopKRouter(d, e, k=k), FiLMExperts(e, d, backend="reference"))
    x.requires_grad_(True)
    forward = 2 * tokens * k * d * 2 * d
    # backward: the input's and the weights' gradients, each a GEMM as large as the forward's
    assert _flops(lambda: film(x).sum().backward()) == 3 * (router + forward)
