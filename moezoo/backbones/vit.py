"""MoE ViT: timm's VisionTransformer with the MLP of every n-th block replaced by an MoE layer (V-MoE style)."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from moezoo.moe import MoEArgs

_ACTIVATION_NAMES = {nn.GELU: "gelu", nn.ReLU: "relu", nn.SiLU: "silu"}


class MoEMlp(nn.Module):
    """An MoE FFN with timm's ``Mlp`` constructor signature, so timm blocks take it as ``mlp_layer``.

    ``Block.forward`` returns only the tensor: the aux losses leave through the layer's own record.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer=None, bias: bool = True, drop: float = 0.0,
                 *, moe: MoEArgs | None = None, device=None, dtype=None):
        super().__init__()
        if out_features not in (None, in_features):
            raise ValueError("MoEMlp keeps the width: out_features must equal in_features")
        if norm_layer is not None:
            raise ValueError("MoEMlp does not support timm's scale_mlp_norm")
        moe = moe or MoEArgs()
        if act_layer not in _ACTIVATION_NAMES:
            raise ValueError(f"MoEMlp: unsupported act_layer {act_layer}; valid: {list(_ACTIVATION_NAMES)}")
        args = MoEArgs(**{**moe.__dict__, "activation": _ACTIVATION_NAMES[act_layer]})
        self.moe = args.build(in_features, hidden_features or 4 * in_features, device=device, dtype=dtype)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.moe(x))


def moe_vit(*, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
            embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
            moe: MoEArgs | None = None, moe_every: int = 2, device=None, dtype=None,
            **timm_kwargs) -> VisionTransformer:
    """A timm ``VisionTransformer`` whose blocks moe_every-1, 2*moe_every-1, ... use ``MoEMlp``.

    All other arguments go to timm (``global_pool``, ``drop_path_rate``, ``class_token``, ...). ``device``/``dtype``:
    of every parameter (timm's layers and the MoE layers are built there: ``device="meta"`` allocates nothing).
    """
    dd = dict(device=device, dtype=dtype)
    vit = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, **dd,
                            **timm_kwargs)
    for i, block in enumerate(vit.blocks):
        if moe_every > 0 and (i + 1) % moe_every == 0:
            block.mlp = MoEMlp(embed_dim, int(embed_dim * mlp_ratio), act_layer=type(block.mlp.act), moe=moe,
                               drop=block.mlp.drop1.p, **dd)
    return vit
