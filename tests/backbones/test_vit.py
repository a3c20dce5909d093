"""moe_vit: timm's own VisionTransformer and Blocks, with MoEMlp in every n-th block."""

import pytest
import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block, VisionTransformer

from moezoo.backbones import MoEMlp, moe_vit
from moezoo.moe import MoEArgs, aux_loss


def _vit(**kw):
    kw.setdefault("moe", MoEArgs(num_experts=3, k=2, balance_loss_weight=0.01))
    return moe_vit(img_size=8, patch_size=2, in_chans=1, num_classes=5, embed_dim=32, depth=4, num_heads=2, **kw)


@pytest.mark.parametrize("moe_every", [1, 2, 3])
def test_moe_vit_is_timms_model_with_moe_mlps_in_blocks_where_i_plus_1_divides_by_moe_every(moe_every):
    vit = _vit(moe_every=moe_every)
    assert isinstance(vit, VisionTransformer) and all(type(b) is Block for b in vit.blocks)
    expected = [MoEMlp if (i + 1) % moe_every == 0 else Mlp for i in range(4)]
    assert [type(b.mlp) for b in vit.blocks] == expected
    assert vit(torch.randn(2, 1, 8, 8)).shape == (2, 5)


def test_moe_every_0_leaves_timms_mlps_everywhere():
    assert all(type(b.mlp) is Mlp for b in _vit(moe_every=0).blocks)


def test_gradients_reach_router_gate_and_expert_weights():
    torch.manual_seed(0)
    vit = _vit().train()
    out = vit(torch.randn(4, 1, 8, 8))
    (out.square().mean() + aux_loss(vit)).backward()
    for i in (1, 3):
        moe = vit.blocks[i].mlp.moe
        assert moe.router.gate.weight.grad.abs().sum() > 0, f"block {i}: router gate"
        assert moe.experts.w1.grad.abs().sum() > 0 and moe.experts.w2.grad.abs().sum() > 0, f"block {i}: experts"


def test_aux_loss_leaves_through_the_layers_and_is_cleared_once_collected():
    vit = _vit().train()
    vit(torch.randn(4, 1, 8, 8))
    aux = aux_loss(vit)
    assert isinstance(aux, torch.Tensor) and aux.dim() == 0 and aux.requires_grad
    assert aux.item() > 0
    assert aux_loss(vit) == 0.0, "collected losses are cleared"
    vit.eval()(torch.randn(4, 1, 8, 8))
    assert aux_loss(vit) == 0.0, "an eval forward records no aux loss"


def test_moe_mlp_takes_timms_mlp_signature():
    mlp = MoEMlp(in_features=16, hidden_features=24, act_layer=torch.nn.GELU, norm_layer=None, bias=True, drop=0.1,
                 moe=MoEArgs(num_experts=2, k=1))
    assert mlp.moe.experts.hidden == 24 and mlp.moe.experts.activation == "gelu"
    assert mlp(torch.randn(2, 3, 16)).shape == (2, 3, 16)
    assert MoEMlp(16, act_layer=torch.nn.SiLU).moe.experts.activation == "silu"
    with pytest.raises(ValueError, match="out_features"):
        MoEMlp(16, 24, out_features=8)


def test_moe_vit_builds_every_parameter_on_the_meta_device():
    vit = moe_vit(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=32, depth=2, num_heads=2,
                  moe=MoEArgs(num_experts=4), device="meta")
    assert {t.device.type for t in [*vit.parameters(), *vit.buffers()]} == {"meta"}
    assert any(isinstance(block.mlp, MoEMlp) for block in vit.blocks)
