"""ProMoE's router (Wei et al., ICLR 2026, "Routing Matters in MoE: Scaling Diffusion Transformers with Explicit
Routing Guidance"; facts from the official code, github ali-vilab/ProMoE).

- Conditional routing: tokens whose sample had its label dropped (classifier-free guidance's null class) all go to a
  dedicated unconditional expert (the last one) with weight 1.
- Prototypical routing of the other tokens over R routed experts with learnable prototypes p_e (init N(0, 0.02)):

      s_{t,e} = cos(x_t, p_e),   top-k of s_t (k = 1),   gate = s_{t,e} ("identity", the official default),
      or softmax / sigmoid of s_t.

- Routing contrastive loss, over the routed experts E' that received tokens in the batch, m_e = mean of e's tokens:

      L = mean_{e in E'} CE( [cos(p_e, m_j) / tau]_{j in E'}, target e ),   tau = 0.07, weight 1

  (each prototype pulled to the mean of its own tokens and pushed from the other experts' means; the gradient reaches
  the prototypes and the tokens). No load-balancing loss.
- Expert-choice form (``choice="expert"``): instead of each conditional token taking its top-k prototypes, each
  routed expert takes its top C = max(1, min(S, floor(S * c / R))) conditional tokens of every sample by cosine
  similarity (S tokens per sample, capacity factor c), with the same gate. A token may get any number of experts;
  c = 1 keeps the active compute of top-1. Its contrastive loss is per sample: m_{b,e} is the mean of the tokens of
  sample b that expert e took, and each (b, e) row is CE([cos(p_e, m_{b,j}) / tau]_j, target e), averaged over the
  rows (official ``models/models_ProMoE_EC.py``: ``SparseMoeBlock.compute_router`` takes
  ``k = max(1, min(int((S / E) * top_k), S))``; ``compute_routing_contrastive_loss`` pools ``expert_inputs`` per
  image into [B, E, D] means and takes the cross-entropy over the B x E rows).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .precision import router_precision
from .routing import Routing


def routing_contrastive_loss(prototypes: torch.Tensor, tokens: torch.Tensor, expert_index: torch.Tensor,
                             temperature: float = 0.07, sample_index: torch.Tensor | None = None,
                             num_samples: int = 1) -> torch.Tensor:
    """L above, for tokens [A, d] assigned to ``expert_index`` [A] among R prototypes [R, d]; 0 if no expert has any.

    With ``sample_index`` [A] (ids < ``num_samples``) the means are per sample and each sample's prototypes are
    contrasted with that sample's means only (the expert-choice form), the rows of all samples averaged. Experts
    without tokens (in a sample) take no part (no row, no column): computed on all R with them masked, so that every
    shape is static and ``torch.compile(fullgraph=True)`` traces it.
    """
    num_experts = prototypes.shape[0]
    if sample_index is None:
        sample_index, num_samples = torch.zeros_like(expert_index), 1
    cell = sample_index * num_experts + expert_index  # (sample, expert) -> one mean each
    counts = torch.bincount(cell, minlength=num_samples * num_experts).view(num_samples, num_experts)
    sums = tokens.new_zeros(num_samples * num_experts, tokens.shape[-1]).index_add(0, cell, tokens)
    used = counts > 0  # [B, R]
    means = (sums / counts.reshape(-1).clamp(min=1)[:, None].to(tokens.dtype)).view(num_samples, num_experts, -1)
    logits = torch.einsum("id,bjd->bij", F.normalize(prototypes, dim=-1), F.normalize(means, dim=-1)) / temperature
    logits = logits.masked_fill(~used[:, None, :], torch.finfo(logits.dtype).min)  # an unused mean is no candidate
    target = torch.where(used, torch.arange(num_experts, device=logits.device), -100)  # nor an unused prototype
    per_row = F.cross_entropy(logits.reshape(-1, num_experts), target.reshape(-1), ignore_index=-100,
                              reduction="none")
    return per_row.sum() / used.sum().clamp(min=1).to(per_row.dtype)


class PrototypeRouter(nn.Module):
    """ProMoE routing over ``num_routed`` prototype experts (+ 1 unconditional expert, the last index).

    ``forward(x [T, d], condition=None)``: ``condition`` is a bool mask of dropped-label tokens, per token [T] or per
    sample [B] (each sample's T / B tokens follow each other). Returns a Routing over num_routed (+1) experts whose
    ``aux_losses`` hold ``routing_contrastive`` in training. Similarities, choices and the loss are computed in float32
    (float64 for float64 tokens), under autocast too; the weights come back in x's dtype.
    """

    def __init__(self, dim: int, num_routed: int, k: int = 1, *, unconditional_expert: bool = True,
                 gate: Literal["identity", "softmax", "sigmoid"] = "identity", contrastive_loss_weight: float = 1.0,
                 temperature: float = 0.07, prototype_init_std: float = 0.02,
                 choice: Literal["token", "expert"] = "token", capacity_factor: float = 1.0,
                 tokens_per_sample: int | None = None):
        super().__init__()
        if gate not in ("identity", "softmax", "sigmoid"):
            raise ValueError(f"prototype router gate must be identity, softmax or sigmoid, got {gate!r}")
        if not 1 <= k <= num_routed:
            raise ValueError(f"prototype router: k={k} must be between 1 and num_routed ({num_routed})")
        if choice not in ("token", "expert"):
            raise ValueError(f"prototype router choice must be 'token' or 'expert', got {choice!r}")
        if capacity_factor <= 0:
            raise ValueError(f"prototype router: capacity_factor={capacity_factor} must be positive")
        self.num_routed, self.k, self.gate = num_routed, k, gate
        self.choice, self.capacity_factor, self.tokens_per_sample = choice, capacity_factor, tokens_per_sample
        self.unconditional_expert = unconditional_expert
        self.num_experts = num_routed + int(unconditional_expert)
        self.contrastive_loss_weight, self.temperature = contrastive_loss_weight, temperature
        self.prototypes = nn.Parameter(torch.randn(num_routed, dim) * prototype_init_std)

    def _token_mask(self, condition, num_tokens: int, device) -> torch.Tensor:
        if condition is None or not self.unconditional_expert:
            return torch.zeros(num_tokens, dtype=torch.bool, device=device)
        mask = torch.as_tensor(condition, device=device).bool().reshape(-1)
        if mask.numel() != num_tokens:
            if mask.numel() == 0 or num_tokens % mask.numel():
                raise ValueError(f"condition has {mask.numel()} entries for {num_tokens} tokens: give one per token "
                                 "or one per sample")
            mask = mask.repeat_interleave(num_tokens // mask.numel())
        return mask

    def _expert_choice(self, similarity: torch.Tensor, unconditional: torch.Tensor):
        """(token_index, expert_index) when each routed expert takes its top-C conditional tokens of every sample."""
        num_tokens = similarity.shape[0]
        per_sample = self.tokens_per_sample or num_tokens
        if num_tokens % per_sample:
            raise ValueError(f"prototype expert choice: {num_tokens} tokens are not whole samples of "
                             f"tokens_per_sample={per_sample}")
        samples = num_tokens // per_sample
        capacity = max(1, min(per_sample, int(per_sample * self.capacity_factor / self.num_routed)))
        masked = similarity.masked_fill(unconditional[:, None], float("-inf"))
        top = masked.view(samples, per_sample, self.num_routed).transpose(1, 2).topk(capacity, dim=-1)  # [B, R, C]
        token_index = top.indices + (torch.arange(samples, device=similarity.device) * per_sample)[:, None, None]
        expert_index = torch.arange(self.num_routed, device=similarity.device)[None, :, None].expand_as(token_index)
        keep = torch.isfinite(top.values).transpose(0, 1).reshape(-1)  # an unconditional sample's tokens: never
        token_index = token_index.transpose(0, 1).reshape(-1)[keep]
        expert_index = expert_index.transpose(0, 1).reshape(-1)[keep]
        return token_index, expert_index

    def forward(self, x: torch.Tensor, *, group=None, condition=None) -> Routing:
        if group is not None:
            raise ValueError("the prototype router has no expert groups")
        with router_precision(x):  # under autocast too: similarities, choices and the loss in float32 (or float64)
            routing = self._route(x.to(torch.promote_types(x.dtype, torch.float32)), condition)
        routing.weight = routing.weight.to(x.dtype)
        return routing

    def _route(self, x: torch.Tensor, condition) -> Routing:
        num_tokens = x.shape[0]
        unconditional = self._token_mask(condition, num_tokens, x.device)
        prototypes = self.prototypes.to(x.dtype)
        similarity = F.normalize(x, dim=-1) @ F.normalize(prototypes, dim=-1).t()  # [T, R]
        if self.gate == "softmax":
            scores = torch.softmax(similarity, -1)
        elif self.gate == "sigmoid":
            scores = torch.sigmoid(similarity)
        else:
            scores = similarity
        per_sample = {}
        if self.choice == "expert":
            token_index, expert_index = self._expert_choice(similarity, unconditional)
            weight = scores[token_index, expert_index]
            members = (token_index, expert_index)  # every assignment counts towards its expert's mean in its sample
            tokens_per_sample = self.tokens_per_sample or num_tokens
            per_sample = {"sample_index": token_index // tokens_per_sample,
                          "num_samples": num_tokens // tokens_per_sample}
        else:
            routed = (~unconditional).nonzero().squeeze(1)
            top = similarity[routed].topk(self.k, dim=-1).indices  # [T_c, k]
            token_index = routed.repeat_interleave(self.k)
            expert_index = top.reshape(-1)
            weight = scores[routed].gather(1, top).reshape(-1)
            members = (routed, top[:, 0])
        if self.unconditional_expert:
            dropped = unconditional.nonzero().squeeze(1)
            token_index = torch.cat([token_index, dropped])
            expert_index = torch.cat([expert_index, torch.full_like(dropped, self.num_routed)])
            weight = torch.cat([weight, torch.ones(dropped.numel(), device=x.device)])
        probs = torch.softmax(similarity, -1)
        logits = similarity
        if self.unconditional_expert:
            one_hot = unconditional.float()[:, None]
            probs = torch.cat([probs * (1 - one_hot), one_hot], dim=-1)
            logits = torch.cat([similarity, torch.zeros_like(one_hot)], dim=-1)
        aux = {}
        if self.training and self.contrastive_loss_weight > 0:
            aux["routing_contrastive"] = self.contrastive_loss_weight * routing_contrastive_loss(
                prototypes, x[members[0]], members[1], self.temperature, **per_sample)
        return Routing(token_index=token_index, expert_index=expert_index, weight=weight,
                       num_tokens=num_tokens, num_experts=self.num_experts, probs=probs, logits=logits,
                       aux_losses=aux)
