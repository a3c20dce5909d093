"""diffusers' layerwise casting reaches the expert banks' stacked weights (moezoo.moe.precision): stored in the
storage dtype, cast to the compute dtype for each forward, with diffusers' skip rules."""

import pytest
import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from moezoo.moe import (
    DenseMLP,
    ExpertLayerwiseCasting,
    GroupedMLP,
    MoE,
    TopKRouter,
    enable_expert_layerwise_casting,
)
from moezoo.tasks.dit.model import MoEDiT


class TinyMoEModel(ExpertLayerwiseCasting, ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, dim: int = 16, num_experts: int = 4):
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.ffn = MoE(dim, TopKRouter(dim, num_experts, k=2), GroupedMLP(num_experts, dim, 32),
                       shared_experts=DenseMLP(dim, 32))
        self.last_ffn = MoE(dim, TopKRouter(dim, num_experts, k=2), GroupedMLP(num_experts, dim, 32))

    def forward(self, x):
        return self.last_ffn(self.ffn(self.inp(x)))


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)  # DiT starts at output 0 (adaLN-Zero): nothing to compare there
    return model.eval()


def _dtypes(model: nn.Module, word: str) -> set:
    return {p.dtype for name, p in model.named_parameters() if word in name}


@pytest.mark.parametrize("storage,compute", [(torch.float8_e4m3fn, torch.float32), (torch.bfloat16, torch.float32)])
def test_enable_layerwise_casting_stores_the_stacked_expert_weights_and_the_forward_casts_them_back(storage, compute):
    model = _randomised(TinyMoEModel())
    x = torch.randn(2, 5, 16)
    reference = model(x)
    model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)
    assert _dtypes(model, "experts.w") == _dtypes(model, "experts.b") == {storage}
    assert all(p.dtype == storage for p in model.parameters()), "diffusers casts the Linears, the mixin the banks"
    out = model(x)
    assert out.dtype == compute and torch.isfinite(out).all()
    assert _dtypes(model, "experts.w") == {storage}, "back in storage after the forward"
    tolerance = 0.15 if storage == torch.float8_e4m3fn else 0.03
    assert ((out - reference).norm() / reference.norm()).item() < tolerance


def test_expert_layerwise_casting_follows_diffusers_skip_patterns():
    model = _randomised(TinyMoEModel())
    hooked = enable_expert_layerwise_casting(model, torch.bfloat16, torch.float32, skip_modules_pattern=["last_"])
    assert hooked == ["ffn.experts"]
    assert _dtypes(model.ffn, "experts.w") == {torch.bfloat16}
    assert _dtypes(model.last_ffn, "experts.w") == {torch.float32}
    again = _randomised(TinyMoEModel())
    assert enable_expert_layerwise_casting(again, torch.bfloat16, torch.float32,
                                           skip_modules_classes=(GroupedMLP,)) == []


@pytest.mark.parametrize("routing", ["token_choice", "expert_choice", "promoe"])
def test_tiny_moedit_layerwise_casting_reaches_its_experts(routing):
    model = _randomised(MoEDiT(sample_size=8, in_channels=4, num_classes=3, routing=routing, hidden_size=32,
                               depth=2, num_heads=2, num_experts=4, moe_every=1))
    sample, timestep, labels = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([0, 2])
    reference = model(sample, timestep, labels).sample
    total = sum(p.numel() for p in model.parameters())
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    stored = sum(p.numel() for p in model.parameters() if p.dtype == torch.float8_e4m3fn)
    assert _dtypes(model, ".experts.") == {torch.float8_e4m3fn}
    assert stored / total > 0.95, "all but embeddings, norms, prototypes and the output projection"
    out = model(sample, timestep, labels).sample
    assert out.shape == sample.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert ((out - reference).norm() / reference.norm()).item() < 0.2
