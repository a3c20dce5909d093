"""The early-fusion transformer: image patches and words in one sequence through the moezoo MoE transformer.

Sequence: [CLS] + the image's patch tokens (timm's ``PatchEmbed``) + the words, each with a learned position and
a modality embedding. Every token carries a modality id, ``IMAGE`` for the patches and ``TEXT`` for [CLS] and the
words (MoMa treats special tokens as text); padding words carry -1: they are masked out of attention as keys and
routed to no expert (the core's group -1). With modality-aware experts the MoE layers route each token within its
modality's experts (``group`` = modality); an agnostic MoE sees one group of all experts.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import PatchEmbed

from moezoo.backbones.transformer import MoETransformer
from moezoo.moe import ExpertChoiceRouter, MoE, MoEArgs

IMAGE, TEXT, PAD = 0, 1, -1
MODALITIES = ("image", "text")


class ConvStem(nn.Module):
    """Patch tokens from a convolution stem (Xiao et al. 2021, "Early Convolutions Help Transformers See Better"):
    two 3x3 stride-2 convolutions with BatchNorm and GELU (widths dim / 4, dim / 2), then a ``patch_size / 4``
    stride convolution to ``dim``; images [B, 3, H, W] -> [B, (H / p) * (W / p), dim], the grid of a
    ``patch_size`` PatchEmbed."""

    def __init__(self, image_size: int, patch_size: int, dim: int):
        super().__init__()
        if patch_size % 4 or patch_size < 4:
            raise ValueError(f"a conv stem needs patch_size a multiple of 4, got {patch_size}")
        widths = [max(8, dim // 4), max(8, dim // 2)]

        def conv(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]

        self.proj = nn.Sequential(
            *conv(3, widths[0], 2), *conv(widths[0], widths[1], 2),
            nn.Conv2d(widths[1], dim, patch_size // 4, stride=patch_size // 4))
        self.num_patches = (image_size // patch_size) ** 2

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image).flatten(2).transpose(1, 2)


STEMS = ("patch", "conv")


class EarlyFusionTransformer(nn.Module):
    """Images [B, 3, H, W] and/or word ids [B, L] (0: padding) -> token states [B, N, d], modality ids [B, N].

    ``stem``: ``patch`` (timm's ``PatchEmbed``, a linear projection of each patch) or ``conv`` (``ConvStem``).
    ``moe``: the MoE FFN (None: dense), in every ``moe_every``-th block; ``modality_groups``: whether its tokens
    are routed within their modality's experts (its ``expert_groups``) or all in one group.
    """

    def __init__(self, *, vocab_size: int, max_text_len: int, image_size: int, patch_size: int, dim: int,
                 depth: int, num_heads: int, mlp_ratio: float, moe: MoEArgs | None, moe_every: int,
                 modality_groups: bool, dropout: float = 0.0, stem: str = "patch"):
        super().__init__()
        self.modality_groups = modality_groups
        if stem == "conv":
            self.patch_embed = ConvStem(image_size, patch_size, dim)
        else:
            self.patch_embed = PatchEmbed(img_size=image_size, patch_size=patch_size, in_chans=3, embed_dim=dim)
        self.num_patches = self.patch_embed.num_patches
        self.max_text_len = max_text_len
        self.word_embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.image_pos = nn.Parameter(torch.randn(1, self.num_patches, dim) * 0.02)
        self.text_pos = nn.Parameter(torch.randn(1, max_text_len + 1, dim) * 0.02)  # [CLS] and the words
        self.modality_embed = nn.Embedding(len(MODALITIES), dim)
        nn.init.normal_(self.modality_embed.weight, std=0.02)
        nn.init.normal_(self.word_embed.weight, std=0.02)
        self.encoder = MoETransformer(dim, depth, num_heads, mlp_ratio=mlp_ratio, moe=moe,
                                      moe_every=moe_every if moe is not None else 0, dropout=dropout)

    def moe_layers(self) -> list[MoE]:
        return [m for m in self.encoder.modules() if isinstance(m, MoE)]

    def token_modality(self, batch: int, with_image: bool, text: torch.Tensor | None, device=None) -> torch.Tensor:
        """The modality id of every token of the sequence ``forward`` builds, [batch, N]: [CLS] text, the patches
        (``with_image``) image, the words text, padding words ``PAD``."""
        parts = [torch.full((batch, 1), TEXT, dtype=torch.long, device=device)]
        if with_image:
            parts.append(torch.full((batch, self.num_patches), IMAGE, dtype=torch.long, device=device))
        if text is not None:
            parts.append(torch.where(text > 0, TEXT, PAD))
        return torch.cat(parts, 1)

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        if image is None and text is None:
            raise ValueError("give an image, a text or both")
        batch = (image if image is not None else text).shape[0]
        device = (image if image is not None else text).device
        tokens = [self.cls_token.expand(batch, -1, -1) + self.text_pos[:, :1]
                  + self.modality_embed.weight[TEXT]]
        if image is not None:
            tokens.append(self.patch_embed(image) + self.image_pos + self.modality_embed.weight[IMAGE])
        if text is not None:
            if text.shape[1] > self.max_text_len:
                raise ValueError(f"text of {text.shape[1]} words; this model reads at most {self.max_text_len}")
            embedded = self.word_embed(text) + self.text_pos[:, 1 : text.shape[1] + 1] \
                + self.modality_embed.weight[TEXT]
            tokens.append(embedded)
        x, modality = torch.cat(tokens, 1), self.token_modality(batch, image is not None, text, device)
        keys = (modality != PAD)[:, None, None, :]  # [B, 1, 1, N]: padding is no key
        group = modality if self.modality_groups else torch.where(modality == PAD, PAD, 0)
        layers = self.moe_layers()
        for layer in layers:  # expert choice is made within each sequence (and modality group)
            if isinstance(layer.router, ExpertChoiceRouter):
                layer.router.tokens_per_sample = x.shape[1]
        kwargs = {"group": group} if layers else {}
        return self.encoder(x, attn_mask=keys, **kwargs), modality
