"""A pre-norm MoE transformer: SDPA attention, an MoE FFN every n-th block, optional adaLN-Zero conditioning."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from moezoo.moe import DenseMLP, MoE, MoEArgs


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, *, device=None, dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TransformerBlock(nn.Module):
    """x + attn(norm(x)), then x + ffn(norm(x)); with adaLN-Zero (DiT) the norms are modulated by a condition c:
    shift, scale, gate = Linear(SiLU(c)), h = norm(x) * (1 + scale) + shift, x = x + gate * f(h), gates start at 0.

    ``decoupled_routing`` (EC-DiT / NucleusMoE, adaLN only): an MoE FFN's router sees [c, norm(x)], the condition
    next to the un-modulated token, while its experts compute on the modulated h; its router then takes
    ``cond_dim + dim`` inputs. ``device``/``dtype``: of the block's own parameters (the ``ffn`` is built by the
    caller).
    """

    def __init__(self, dim: int, num_heads: int, ffn: nn.Module, *, cond_dim: int | None = None,
                 dropout: float = 0.0, decoupled_routing: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.adaln = cond_dim is not None
        if decoupled_routing and not (self.adaln and isinstance(ffn, MoE)):
            raise ValueError("decoupled_routing needs adaLN conditioning (cond_dim) and an MoE FFN")
        self.decoupled_routing = decoupled_routing
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=not self.adaln, eps=1e-6, **dd)
        self.attn = SelfAttention(dim, num_heads, dropout, **dd)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=not self.adaln, eps=1e-6, **dd)
        self.ffn = ffn
        if self.adaln:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim, **dd))
            nn.init.zeros_(self.modulation[1].weight)
            nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x, cond=None, attn_mask=None, is_causal=False, **moe_kwargs):
        if self.adaln:
            if cond is None:
                raise ValueError("this block uses adaLN conditioning: pass cond=[batch, cond_dim]")
            shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).chunk(6, dim=-1)
            x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1), attn_mask, is_causal)
            normed = self.norm2(x)
            if self.decoupled_routing:
                seen = torch.cat([cond.unsqueeze(1).expand(-1, normed.shape[1], -1), normed], dim=-1)
                moe_kwargs = {**moe_kwargs, "router_input": seen}
            return x + gate2.unsqueeze(1) * self._ffn(modulate(normed, shift2, scale2), moe_kwargs)
        x = x + self.attn(self.norm1(x), attn_mask, is_causal)
        return x + self._ffn(self.norm2(x), moe_kwargs)

    def _ffn(self, h, moe_kwargs):
        return self.ffn(h, **moe_kwargs) if isinstance(self.ffn, MoE) else self.ffn(h)


class MoETransformer(nn.Module):
    """A stack of pre-norm blocks over [batch, tokens, dim] with an MoE FFN in every ``moe_every``-th block
    (blocks moe_every-1, 2*moe_every-1, ...; moe_every=1 makes every FFN an MoE, 0 none) and a final norm.

    Keywords of ``forward`` other than ``cond``, ``attn_mask`` and ``is_causal`` go to the MoE layers
    (``group``, ``router_input``, ``condition``). With ``is_causal`` the model is causal only under dropless
    token-choice routing: with a capacity factor, or expert choice, which tokens an expert takes depends on later ones.
    ``device``/``dtype``: of every parameter, as timm's layers take them (``device="meta"`` allocates nothing: build
    a large model there, then ``moezoo.moe.materialize(model, device)`` (``to_empty`` plus the routers' non-persistent
    buffers) and load or upcycle its weights).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, *, mlp_ratio: float = 4.0, moe: MoEArgs | None = None,
                 moe_every: int = 2, cond_dim: int | None = None, dropout: float = 0.0, activation: str = "gelu",
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = int(dim * mlp_ratio)
        moe = moe or MoEArgs()
        blocks = []
        for i in range(depth):
            use_moe = moe_every > 0 and (i + 1) % moe_every == 0
            ffn = moe.build(dim, hidden, **dd) if use_moe else DenseMLP(dim, hidden, activation=activation, **dd)
            blocks.append(TransformerBlock(dim, num_heads, ffn, cond_dim=cond_dim, dropout=dropout, **dd))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, elementwise_affine=cond_dim is None, eps=1e-6, **dd)

    def forward(self, x, cond=None, attn_mask=None, is_causal=False, **moe_kwargs):
        for block in self.blocks:
            x = block(x, cond, attn_mask, is_causal, **moe_kwargs)
        return self.norm(x)
