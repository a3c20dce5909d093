"""MoEDiT: a class-conditional diffusion transformer whose FFNs are MoE layers, as a diffusers model.

    patches = PatchEmbed(x) (+ sincos positions);  c = TimestepEmbedding(t) + LabelEmbedding(y)
    blocks: adaLN-Zero transformer blocks (``moezoo.backbones``), an MoE FFN in every ``moe_every``-th block
    out = Linear(adaLN(norm(h), c)) -> unpatchify

``routing`` picks the FFN of the MoE blocks at equal active compute (dense hidden = mlp_ratio * d):
- ``dense``: the plain DiT FFN.
- ``token_choice``: top-k routing over E experts of hidden mlp_ratio * d / k, Switch balancing loss (DiT-MoE style).
- ``expert_choice``: each expert takes its top C = S * c / E tokens of every image (EC-DiT), hidden mlp_ratio * d / c;
  ``capacity_rounding`` floor (the ProMoE repository's EC-DiT: int(S / E * c)) or ceil (moezoo's core default);
  softmax affinity, gate init std 0.006 (the ProMoE repository's EC baseline). ``decoupled_routing``: the router sees
  [timestep-and-label embedding, un-modulated token] while the experts compute on the modulated token (EC-DiT /
  diffusers' NucleusMoE); it applies to ``token_choice`` too, as does ``shared_expert`` (an always-on expert of half
  the dense width, the routed experts halved to keep the active compute).
- ``promoe``: ProMoE (``moezoo.moe.PrototypeRouter``): tokens of images whose label was dropped (the CFG null class)
  go to an unconditional expert, the others to their nearest prototype (top-1, gate ``prototype_gate``: the raw
  cosine by default, or its softmax / sigmoid); an always-on shared expert; every expert at half the dense width, so
  shared + one routed expert equal the dense FFN; the routing contrastive loss is an aux loss. With
  ``prototype_choice="expert"`` each prototype expert takes its top C = S * c / E conditional tokens of every image
  instead (ProMoE's expert-choice form; c = 1 keeps the active compute).

Class dropout for classifier-free guidance: in training each label is replaced by the null class ``num_classes``
with probability ``class_dropout_prob``; pass ``class_labels = num_classes`` to ask for the unconditional output.
A ``ModelMixin`` + ``ConfigMixin``: ``save_pretrained`` / ``from_pretrained`` round-trip the constructor arguments.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import PatchEmbed, TimestepEmbedding, Timesteps
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin

from moezoo.backbones.transformer import TransformerBlock, modulate
from moezoo.moe import DenseMLP, ExpertChoiceRouter, GroupedMLP, MoE, PrototypeRouter, TopKRouter
from moezoo.moe.precision import ExpertLayerwiseCasting

ROUTINGS = ("dense", "token_choice", "expert_choice", "promoe")
# (hidden_size, depth, num_heads) of the DiT / ProMoE sizes; GPU scale (the default task size trains on CPU)
SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}


class MoEDiT(ExpertLayerwiseCasting, ModelMixin, ConfigMixin):  # layerwise casting reaches the experts
    """Class-conditional DiT with MoE FFNs.

    Shapes: sample [B, C, H, W], timestep [B] (or a scalar), class_labels [B] long -> [B, C, H, W].
    ``sample_size``, ``in_channels`` and ``num_classes`` come first: they are the data's (``DiTTask`` builds the
    model from them), the rest is the architecture. ``size`` (S, B, L, XL) sets ``hidden_size``, ``depth`` and
    ``num_heads`` to the DiT / ProMoE sizes (384/12/6, 768/12/12, 1024/24/16, 1152/28/16).
    """

    @register_to_config
    def __init__(self, sample_size: int = 32, in_channels: int = 4, num_classes: int = 1000,
                 routing: Literal["dense", "token_choice", "expert_choice", "promoe"] = "promoe",
                 patch_size: int = 2, hidden_size: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, class_dropout_prob: float = 0.1, num_experts: int = 8, top_k: int = 2,
                 capacity_factor: float = 1.0, moe_every: int = 2, balance_loss_weight: float = 0.01,
                 contrastive_loss_weight: float = 1.0,
                 prototype_gate: Literal["identity", "softmax", "sigmoid"] = "identity",
                 prototype_choice: Literal["token", "expert"] = "token", decoupled_routing: bool = False,
                 shared_expert: bool = False, capacity_rounding: Literal["floor", "ceil"] = "floor",
                 size: Literal["S", "B", "L", "XL"] | None = None):
        super().__init__()
        if size is not None:  # the DiT / ProMoE size presets replace hidden_size, depth and num_heads
            if size not in SIZES:
                raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
            hidden_size, depth, num_heads = SIZES[size]
            self.register_to_config(hidden_size=hidden_size, depth=depth, num_heads=num_heads)
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, got {routing!r}")
        if decoupled_routing and routing not in ("token_choice", "expert_choice"):
            raise ValueError(f"decoupled_routing applies to token_choice and expert_choice routing, not {routing!r}")
        if shared_expert and routing not in ("token_choice", "expert_choice"):
            raise ValueError(f"shared_expert applies to token_choice and expert_choice routing, not {routing!r} "
                             "(promoe always has one)")
        self.patch_embed = PatchEmbed(sample_size, sample_size, patch_size, in_channels, hidden_size,
                                      pos_embed_type="sincos")
        self.num_patches = (sample_size // patch_size) ** 2
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, hidden_size)
        self.label_embed = nn.Embedding(num_classes + 1, hidden_size)  # the last row is the null class
        blocks = []
        for i in range(depth):
            moe_block = routing != "dense" and moe_every > 0 and (i + 1) % moe_every == 0
            blocks.append(TransformerBlock(hidden_size, num_heads, self._ffn(moe_block), cond_dim=hidden_size,
                                           decoupled_routing=moe_block and decoupled_routing))
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.proj_out = nn.Linear(hidden_size, patch_size * patch_size * in_channels)
        for layer in (self.modulation_out[1], self.proj_out):  # adaLN-Zero: the model starts at output 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _ffn(self, moe_block: bool) -> nn.Module:
        c = self.config
        dim, hidden = c.hidden_size, int(c.hidden_size * c.mlp_ratio)
        if not moe_block:
            return DenseMLP(dim, hidden, activation="gelu_tanh")
        router_dim = 2 * dim if c.decoupled_routing else dim  # [condition, un-modulated token]
        shared = DenseMLP(dim, hidden // 2, activation="gelu_tanh") if c.shared_expert else None
        routed = hidden // 2 if c.shared_expert else hidden  # the routed experts' share of the active width
        if c.routing == "token_choice":
            router = TopKRouter(router_dim, c.num_experts, k=c.top_k, balance_loss_weight=c.balance_loss_weight)
            experts = GroupedMLP(c.num_experts, dim, routed // c.top_k, activation="gelu_tanh")
            return MoE(dim, router, experts, shared_experts=shared)
        if c.routing == "expert_choice":
            router = ExpertChoiceRouter(router_dim, c.num_experts, c.capacity_factor,
                                        tokens_per_sample=self.num_patches, gate_init_std=0.006,
                                        capacity_rounding=c.capacity_rounding)
            experts = GroupedMLP(c.num_experts, dim, int(routed / c.capacity_factor), activation="gelu_tanh")
            return MoE(dim, router, experts, shared_experts=shared)
        router = PrototypeRouter(dim, c.num_experts, contrastive_loss_weight=c.contrastive_loss_weight,
                                 gate=c.prototype_gate, choice=c.prototype_choice,
                                 capacity_factor=c.capacity_factor, tokens_per_sample=self.num_patches)
        return MoE(dim, router, GroupedMLP(c.num_experts + 1, dim, hidden // 2, activation="gelu_tanh"),
                   shared_experts=DenseMLP(dim, hidden // 2, activation="gelu_tanh"))

    def drop_labels(self, class_labels: torch.Tensor) -> torch.Tensor:
        """Replace labels by the null class with probability ``class_dropout_prob`` (training only)."""
        if not self.training or self.config.class_dropout_prob <= 0:
            return class_labels
        drop = torch.rand(class_labels.shape, device=class_labels.device) < self.config.class_dropout_prob
        return torch.where(drop, torch.full_like(class_labels, self.config.num_classes), class_labels)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor,
                return_dict: bool = True):
        c = self.config
        batch, _, height, width = sample.shape
        labels = self.drop_labels(class_labels)
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(batch)
        cond = self.time_embed(self.time_proj(timestep).to(sample.dtype)) + self.label_embed(labels)
        h = self.patch_embed(sample)
        unconditional = labels == c.num_classes
        for block in self.blocks:
            moe_kwargs = {"condition": unconditional} if isinstance(block.ffn, MoE) and c.routing == "promoe" else {}
            h = block(h, cond, **moe_kwargs)
        shift, scale = self.modulation_out(cond).chunk(2, dim=-1)
        h = self.proj_out(modulate(self.norm_out(h), shift, scale))
        p, grid_h, grid_w = c.patch_size, height // c.patch_size, width // c.patch_size
        h = h.view(batch, grid_h, grid_w, p, p, c.in_channels).permute(0, 5, 1, 3, 2, 4)
        out = h.reshape(batch, c.in_channels, height, width)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)
