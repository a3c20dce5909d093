"""moe_vit: timm's own VisionTransformer and Blocks, with MoEMlp in every n-th block."""

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block, VisionTransformer

from moezoo.backbones import MoEMlp, moe_vit
from moezoo.moe import MoEArgs, aux_loss


def _vit(**kw):
    return moe_vit(img_size=8, patch_size=2, in_chans=1, num_classes=5, embed_dim=32, depth=4, num_heads=2,
                   moe=MoEArgs(num_experts=3, k=2, balance_loss_weight=0.01), **kw)


def test_moe_vit_is_timms_model_with_moe_mlps_in_every_second_block():
    vit = _vit()
    assert isinstance(vit, VisionTransformer) and all(type(b) is Block for b in vit.blocks)
    assert [type(b.mlp) for b in vit.blocks] == [Mlp, MoEMlp, Mlp, MoEMlp]
    assert vit(torch.randn(2, 1, 8, 8)).shape == (2, 5)


def test_gradients_reach_router_and_experts_and_aux_loss_leaves_through_the_layer():
    vit = _vit().train()
    out = vit(torch.randn(4, 1, 8, 8))
    aux = aux_loss(vit)
    assert aux.item() > 0
    assert aux_loss(vit) == 0.0, "collected losses are cleared"
    (out.square().mean() + aux).backward()
    moe = vit.blocks[1].mlp.moe
    assert moe.router.gate.weight.grad.abs().sum() > 0
    assert moe.experts.w1.grad.abs().sum() > 0


def test_moe_mlp_takes_timms_mlp_signature():
    mlp = MoEMlp(in_features=16, hidden_features=24, act_layer=torch.nn.GELU, norm_layer=None, bias=True, drop=0.1,
                 moe=MoEArgs(num_experts=2, k=1))
    assert mlp.moe.experts.hidden == 24 and mlp.moe.experts.activation == "gelu"
    assert mlp(torch.randn(2, 3, 16)).shape == (2, 3, 16)
