"""The all-weather restorer of MoFME: a conv head, a transformer over patch tokens, a pixel-shuffle tail.

    head:   Conv3x3(3 -> C), 2 ResBlocks                                 [B, C, H, W]
    tokens: Conv(C -> d, kernel = stride = p), LayerNorm                 [B, HW/p^2, d]  (no position embedding,
            as the official code: the conv head carries the local layout, and any image size works)
    blocks: ``depth`` pre-norm transformer blocks (the core's ``TransformerBlock``) whose FFN is the variant's
            (``layers.make_ffn``: dense, E FFN experts, or MoFME), then LayerNorm
    tail:   Linear(d -> 4C p^2), pixel shuffle by p                       [B, 4C, H, W]
            ResBlock, Conv(4C -> 2C), ResBlock, Conv(2C -> 3)
    out:    x + tail (``global_residual``; the tail's last conv starts at 0, so the restorer starts as the
            identity) or sigmoid(tail) (the official default, ``--disable-residual``)

Images whose sides are not multiples of p are edge-padded and cropped back. The official code uses C = 32,
p = 8, d = 384, depth 2, 8 heads; the CPU defaults here are smaller (``configs/deweather``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from moezoo.backbones.transformer import TransformerBlock

from .layers import ResBlock, make_ffn


class Restorer(nn.Module):
    """Degraded images [B, 3, H, W] in [0, 1] -> restored images [B, 3, H, W]."""

    def __init__(self, ffn: str = "mofme", *, router: str = "topk", num_experts: int = 4, k: int = 2,
                 channels: int = 16, patch_size: int = 8, dim: int = 128, depth: int = 2, num_heads: int = 4,
                 mlp_ratio: float = 4.0, global_residual: bool = True, **router_kwargs):
        super().__init__()
        self.patch_size, self.global_residual = patch_size, global_residual
        c = channels
        self.head = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), ResBlock(c), ResBlock(c))
        self.embed = nn.Conv2d(c, dim, patch_size, stride=patch_size)
        self.embed_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, make_ffn(ffn, dim, router=router, num_experts=num_experts, k=k,
                                                      mlp_ratio=mlp_ratio, **router_kwargs))
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.unpatch = nn.Linear(dim, 4 * c * patch_size**2)
        self.tail = nn.Sequential(ResBlock(4 * c), nn.Conv2d(4 * c, 2 * c, 3, padding=1), ResBlock(2 * c),
                                  nn.Conv2d(2 * c, 3, 3, padding=1))
        if global_residual:  # start as the identity: the first steps learn the correction, not to undo noise
            nn.init.zeros_(self.tail[-1].weight)
            nn.init.zeros_(self.tail[-1].bias)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """The (rows, columns) of patch tokens of an image of this size (after padding)."""
        p = self.patch_size
        return -(-height // p), -(-width // p)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b, _, height, width = image.shape
        rows, cols = self.token_grid(height, width)
        p = self.patch_size
        pad = (0, cols * p - width, 0, rows * p - height)
        x = F.pad(image, pad, mode="replicate") if any(pad) else image
        tokens = self.embed_norm(self.embed(self.head(x)).flatten(2).transpose(1, 2))  # [B, N, d]
        for block in self.blocks:
            tokens = block(tokens)
        pixels = self.unpatch(self.norm(tokens)).transpose(1, 2).reshape(b, -1, rows, cols)
        out = self.tail(F.pixel_shuffle(pixels, p))
        out = x + out if self.global_residual else torch.sigmoid(out)
        return out[..., :height, :width]
