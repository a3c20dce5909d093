"""Routers: map tokens to (token, expert, weight) assignments, returned as one ``Routing``.

Every router shares what ``Router`` does: a linear gate (logits = x W_g), softmax or sigmoid scores, grouped routing
(a token may only use the experts of its group), null experts (extra slots whose assignments produce nothing),
auxiliary losses (Switch balancing, z-loss, global-batch balancing) and auxiliary-loss-free bias balancing.
Subclasses decide only which assignments to make (``select``).

Under ``torch.autocast`` a router scores in float32 (``moezoo.moe.precision``): the gate's matmul, the softmax or
sigmoid, the top-k and the aux losses; the experts compute in the region's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from moezoo.kernels.ops import autocast_enabled

from .losses import (
    all_reduce_counts,
    global_batch_load_balancing_loss,
    router_entropy_loss,
    router_z_loss,
    switch_load_balancing_loss,
)
from .precision import router_precision
from .record import in_backward
from .routing import Routing


class Router(nn.Module):
    """Base router.

    Args:
        dim: token (router input) width.
        num_experts: number of real experts E.
        score: ``softmax`` (probabilities over experts), ``sigmoid`` (independent scores, as in DeepSeek-V3) or
            ``linear`` (the raw logits x W_g are the scores and the weights; CMoE's ``activate='linear'``). The three
            rank experts alike, so a top-k choice is the same; they differ in the weights and the balance loss.
        expert_groups: for grouped routing, ``expert_groups[g]`` lists the experts tokens of group g may use. With a
            single group the mask is static (every token may use only those experts) and ``group`` may be omitted.
            A group id of -1 routes the token nowhere (padding): it gets no expert, no score and no part in the
            balancing losses, and keeps only the residual.
        num_null_experts: extra slots that produce no output (AdaMoE), so a token may use fewer experts. Where a
            router renormalises its chosen weights, it does so over the chosen *true* experts only (AdaMoE's
            official code, github.com/CengZihao/AdaMoE ``exp_2/LLaMA_Factory/src/llamafactory/model/
            adaptive_moe_utils.py``, ``CustomMixtralSparseMoeBlock.forward``: the top-k weights masked to the true
            experts, divided by their sum), and the balancing losses count the null experts as one group.
        normalize_over_null: renormalise over every chosen slot, null ones included, instead: the null experts then
            take a share of the gate mass (a token's output shrinks by it) and a token that chose one true expert
            keeps a weight below 1, so the router still gets a gradient through it.
        balance_loss_weight: weight of the Switch load-balancing loss (computed on the micro-batch, from the
            router's choices before capacity drops any).
        balance_probs: the P_i of the balancing losses: ``normalized`` (the default) takes the router distribution
            (``distribution``: the softmax, sigmoid scores divided by their sum, the softmax of linear scores);
            ``raw`` takes the scores as they are (CMoE's official code, github.com/xy980523/UATR-CMoE
            ``cmoe_model.py``, ``ResNet_MoE_loadbalance.forward``: ``pi = mean(routing_score)`` of the sigmoid).
        global_balance_loss_weight: weight of the global-batch balancing loss (counts summed over data-parallel
            ranks and micro-batches until the next optimizer step; a recomputation under activation checkpointing
            does not count again).
        z_loss_weight: weight of the router z-loss.
        bias_update_rate: u > 0 turns on auxiliary-loss-free balancing (Wang et al. 2024): a per-expert bias b is
            added to the scores for *selection only*, and after each optimizer step b_i += u * sign(mean load - load_i).
        gate_init_std: std of the gate's normal init (None keeps nn.Linear's default).
        weighted: False gives every assignment weight 1: the chosen experts' outputs are not scaled by their scores,
            so the gate learns only from the aux losses (CMoE's official hard top-1, github.com/xy980523/UATR-CMoE
            ``cmoe_model.py``: ``logits[i] = fc[argmax(routing_score)[i]](x[i])``).
        noise: ``learned`` adds trainable Gaussian noise to the logits in training (noisy top-k gating, Shazeer et al.
            2017, eq. 4: H(x) = x W_g + N(0, 1) * softplus(x W_noise), with W_noise starting at zero as in their
            code; MoveGCL's router, github.com/tsinghua-fib-lab/MoveGCL ``base_model.py``); the noisy logits choose,
            weight and feed the aux losses. Evaluation uses x W_g alone. ``none`` (the default): no noise.
    """

    def __init__(
        self,
        dim: int,
        num_experts: int,
        *,
        score: str = "softmax",
        expert_groups: Sequence[Sequence[int]] | None = None,
        num_null_experts: int = 0,
        normalize_over_null: bool = False,
        balance_loss_weight: float = 0.0,
        balance_probs: str = "normalized",
        global_balance_loss_weight: float = 0.0,
        z_loss_weight: float = 0.0,
        bias_update_rate: float = 0.0,
        gate_init_std: float | None = None,
        weighted: bool = True,
        noise: str = "none",
    ):
        super().__init__()
        if score not in ("softmax", "sigmoid", "linear"):
            raise ValueError(f"router score must be 'softmax', 'sigmoid' or 'linear', got {score!r}")
        if balance_probs not in ("normalized", "raw"):
            raise ValueError(f"router balance_probs must be 'normalized' or 'raw', got {balance_probs!r}")
        self.num_experts = num_experts
        self.num_slots = num_experts + num_null_experts
        self.score = score
        self.normalize_over_null = normalize_over_null
        self.balance_loss_weight = balance_loss_weight
        self.balance_probs = balance_probs
        self.weighted = weighted
        self.global_balance_loss_weight = global_balance_loss_weight
        self.z_loss_weight = z_loss_weight
        self.bias_update_rate = bias_update_rate
        self.gate = nn.Linear(dim, self.num_slots, bias=False)
        if gate_init_std is not None:
            nn.init.normal_(self.gate.weight, std=gate_init_std)
        if noise not in ("none", "learned"):
            raise ValueError(f"router noise must be 'none' or 'learned', got {noise!r}")
        self.noise_gate = nn.Linear(dim, self.num_slots, bias=False) if noise == "learned" else None
        if self.noise_gate is not None:
            nn.init.zeros_(self.noise_gate.weight)
        self.expert_groups = None if expert_groups is None else [list(g) for g in expert_groups]
        self.register_buffer("group_mask", self._group_mask(self.expert_groups), persistent=False)
        self.register_buffer("expert_bias", torch.zeros(self.num_slots))
        # assignments per slot since the last optimizer step (local, and summed over ranks for global balancing)
        self.register_buffer("step_counts", torch.zeros(self.num_slots), persistent=False)
        self.register_buffer("global_counts", torch.zeros(self.num_slots), persistent=False)

    def init_non_persistent_buffers(self) -> None:
        """Recompute the buffers a state dict does not hold (the group mask, the step's counts), in place, on their
        device: after ``to_empty`` of a model built on the meta device they hold whatever memory was there (timm's
        name for the same step; ``moezoo.moe.materialize`` calls it on every module that has it)."""
        with torch.no_grad():
            if self.group_mask is not None:
                self.group_mask.copy_(self._group_mask(self.expert_groups))
            self.step_counts.zero_()
            self.global_counts.zero_()

    def _group_mask(self, expert_groups) -> torch.Tensor | None:
        if expert_groups is None:
            return None
        mask = torch.zeros(len(expert_groups), self.num_slots, dtype=torch.bool)
        for g, experts in enumerate(expert_groups):
            for e in experts:
                if not 0 <= e < self.num_experts:
                    valid = f"0..{self.num_experts - 1}"
                    raise ValueError(f"expert_groups[{g}] names expert {e}; valid experts are {valid}")
                mask[g, e] = True
        mask[:, self.num_experts :] = True  # null experts serve every group
        return mask

    soft = False  # a dense mixture (SoftRouter): load is gate mass

    @property
    def num_null_experts(self) -> int:
        return self.num_slots - self.num_experts

    # -- what subclasses implement -------------------------------------------------------------------------------
    def select(self, probs: torch.Tensor, scores: torch.Tensor, allowed: torch.Tensor | None = None):
        """Return (token_index, expert_index, weight, dropped or None) over slots, from probs [T, S]: the router's
        choice, before any capacity (``within_capacity``).

        ``scores`` are the probs plus the balancing bias: use them to choose, and ``probs`` for the weights.
        ``allowed`` [T, S] (grouped routing, else None): the slots each token may use. A router that chooses tokens
        uses it to choose within each group; any pick outside it is dropped after ``select``.
        """
        raise NotImplementedError

    def calibrate(self, x: torch.Tensor, probs: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        """The gate values [T, S] that choose and weight the experts, from the router's scores ``probs`` of the
        tokens ``x`` (``allowed`` [T, S]: the experts each token's group may use, or None). The scores themselves
        here; the uncertainty-aware router (``moezoo.moe.uncertainty``) calibrates them. The aux losses and the
        statistics keep seeing ``probs``."""
        return probs

    def within_capacity(self, token_index: torch.Tensor, slot_index: torch.Tensor,
                        scores: torch.Tensor) -> torch.Tensor | None:
        """Which of the chosen assignments the experts' capacity keeps ([A] bool), or None where nothing is dropped.
        Runs after the aux losses have counted the choice."""
        return None

    def renormalize(self, weight: torch.Tensor, slot_index: torch.Tensor) -> torch.Tensor:
        """Chosen weights [T, n] divided by each row's sum over its chosen true experts (over every chosen slot with
        ``normalize_over_null``); ``slot_index`` [T, n] names the slot of each weight (a weight of 0 is unchosen)."""
        mass = weight
        if self.num_null_experts and not self.normalize_over_null:
            mass = weight * (slot_index < self.num_experts)
        return weight / mass.sum(-1, keepdim=True).clamp_min(1e-9)

    # -- shared machinery ----------------------------------------------------------------------------------------
    def gate_logits(self, x: torch.Tensor) -> torch.Tensor:
        """x W_g [T, S]; under autocast in float32 (autocast would round them to its dtype), on float32 copies of x and
        W_g (differentiable casts: the gradient reaches W_g in its own dtype)."""
        if not autocast_enabled(x.device.type):
            return self.gate(x)
        weight = self.gate.weight
        dtype = torch.promote_types(torch.promote_types(x.dtype, weight.dtype), torch.float32)
        with router_precision(x):
            return F.linear(x.to(dtype), weight.to(dtype))

    def noise_std(self, x: torch.Tensor) -> torch.Tensor:
        """softplus(x W_noise) [T, S]: the std of the learned gate noise (float32, as the logits)."""
        weight = self.noise_gate.weight
        with router_precision(x):
            return F.softplus(F.linear(x.float(), weight.float()))

    def forward(self, x: torch.Tensor, *, group: torch.Tensor | None = None, condition=None) -> Routing:
        logits = self.gate_logits(x)
        if self.noise_gate is not None and self.training:
            logits = logits.float() + torch.randn_like(logits, dtype=torch.float) * self.noise_std(x)
        allowed, record_group, unrouted = None, group, None
        if self.group_mask is not None:
            if group is None and self.group_mask.shape[0] == 1:  # a static mask: no grouping to report
                allowed = self.group_mask[0].expand(x.shape[0], -1)
            elif group is None:
                raise ValueError("this router has expert_groups: pass group=<group id per token>")
            else:
                routed = group >= 0  # group -1: a token routed nowhere (padding), it keeps only the residual
                allowed = self.group_mask[group.clamp_min(0)] & routed[:, None]
                if not bool(routed.all()):
                    unrouted = ~routed
            # an unrouted token's row stays finite (a row of -inf has no softmax); its scores are zeroed below
            blocked = ~allowed if unrouted is None else ~allowed & routed[:, None]
            logits = logits.masked_fill(blocked, float("-inf"))
        elif group is not None:
            raise ValueError("group ids were given but this router has no expert_groups")
        probs = self.scores(logits)
        if unrouted is not None:
            probs = probs.masked_fill(unrouted[:, None], 0.0)
        gate = self.calibrate(x, probs, allowed)
        scores = gate + self.expert_bias if self.bias_update_rate > 0 else gate
        token_index, slot_index, weight, dropped = self.select(gate, scores, allowed)
        if not self.weighted:
            weight = torch.ones_like(weight)
        if allowed is not None:  # drop any pick outside a token's group (a token choice of an unrouted token)
            ok = allowed[token_index, slot_index]
            token_index, slot_index, weight = token_index[ok], slot_index[ok], weight[ok]

        # balancing counts the router's choice, before capacity drops assignments (GShard, Switch); over the
        # routed tokens only
        aux_losses = {}
        if self.training:
            aux_losses = self._aux_losses(logits, probs, slot_index) if unrouted is None else \
                self._aux_losses(logits[~unrouted], probs[~unrouted], slot_index)
        keep = self.within_capacity(token_index, slot_index, scores)
        if keep is not None:
            dropped = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            dropped[token_index[~keep]] = True
            token_index, slot_index, weight = token_index[keep], slot_index[keep], weight[keep]
        if self.num_slots > self.num_experts:  # null experts produce no assignment
            # a boolean mask: its length depends on the data (under torch.compile, a dynamic shape), so only here
            real = slot_index < self.num_experts
            token_index, slot_index, weight = token_index[real], slot_index[real], weight[real]
        return Routing(
            token_index=token_index,
            expert_index=slot_index,
            weight=weight.to(x.dtype),
            num_tokens=x.shape[0],
            num_experts=self.num_experts,
            probs=(self.distribution(probs) if self.score == "linear" else probs)[:, : self.num_experts],
            logits=logits[:, : self.num_experts],
            dropped=dropped,
            group=record_group,
            aux_losses=aux_losses,
            soft=self.soft,
        )

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The scores [T, S] (float32) that choose and weight the experts: softmax, sigmoid or the logits."""
        if self.score == "softmax":
            return torch.softmax(logits.float(), dim=-1)
        return torch.sigmoid(logits.float()) if self.score == "sigmoid" else logits.float()

    def distribution(self, probs: torch.Tensor) -> torch.Tensor:
        """The router distribution over slots (what the balancing losses see unless ``balance_probs`` is ``raw``,
        and the ``probs`` a linear router reports for statistics): the softmax, the sigmoid scores normalised to
        sum to 1, or the softmax of linear scores (a masked expert's -inf gives 0)."""
        if self.score == "linear":
            return torch.softmax(probs, dim=-1)
        return probs if self.score == "softmax" else probs / probs.sum(-1, keepdim=True).clamp_min(1e-9)

    def _aux_losses(self, logits, probs, slot_index) -> dict[str, torch.Tensor]:
        """The weighted aux losses of a training forward, from the chosen slots (before capacity); also counts
        them into ``step_counts`` and ``global_counts``, except in a recomputation during backward (activation
        checkpointing), which would count the same forward twice."""
        losses = {}
        balance_probs = probs if self.balance_probs == "raw" else self.distribution(probs)
        counts = torch.bincount(slot_index, minlength=self.num_slots).to(self.step_counts.dtype)
        if not in_backward():
            with torch.no_grad():
                self.step_counts += counts
                if self.global_balance_loss_weight > 0:
                    self.global_counts += all_reduce_counts(counts)
        if self.balance_loss_weight > 0:
            losses["balance"] = self.balance_loss_weight * switch_load_balancing_loss(
                balance_probs, slot_index, self.num_null_experts)
        if self.global_balance_loss_weight > 0:
            losses["global_balance"] = self.global_balance_loss_weight * global_batch_load_balancing_loss(
                balance_probs, self.global_counts, self.num_null_experts
            )
        if self.z_loss_weight > 0:
            losses["z"] = self.z_loss_weight * router_z_loss(logits)
        return losses

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Update the balancing bias from this step's load, and start a new global batch."""
        if self.bias_update_rate > 0 and self.step_counts.sum() > 0:
            load = all_reduce_counts(self.step_counts)[: self.num_experts]
            self.expert_bias[: self.num_experts] += self.bias_update_rate * torch.sign(load.mean() - load)
        self.step_counts.zero_()
        self.global_counts.zero_()


def _flat_assignments(top_index: torch.Tensor, top_weight: torch.Tensor):
    num_tokens, k = top_index.shape
    token_index = torch.arange(num_tokens, device=top_index.device).repeat_interleave(k)
    return token_index, top_index.reshape(-1), top_weight.reshape(-1)


class TopKRouter(Router):
    """Token choice: each token takes its k highest-scoring experts (Shazeer et al. 2017; Switch for k=1).

    weight_{t,e} = p_{t,e} for e in TopK(s_t, k), renormalised over the k when ``normalize`` (Mixtral, DeepSeek; the
    default for k > 1; for k = 1 renormalising would make every weight 1 and cut the router's gradient, so Switch's
    raw p is the default there). With null experts the renormalisation is over the chosen true experts
    (``Router.renormalize``).
    Dropless by default; with ``capacity_factor`` c each expert keeps at most C = ceil(c * T * k / E) assignments,
    its highest-scoring ones, and the rest are dropped (the token then passes through the residual only). The
    balancing losses count the top-k choice before the drop.
    """

    def __init__(self, dim: int, num_experts: int, k: int = 2, *, capacity_factor: float | None = None,
                 normalize: bool | None = None, **kwargs):
        super().__init__(dim, num_experts, **kwargs)
        if not 1 <= k <= self.num_slots:
            raise ValueError(f"top-k router: k={k} must be between 1 and the number of experts ({self.num_slots})")
        self.k = k
        self.capacity_factor = capacity_factor
        self.normalize = k > 1 if normalize is None else normalize

    def capacity(self, num_tokens: int) -> int:
        return math.ceil(self.capacity_factor * num_tokens * self.k / self.num_slots)

    def select(self, probs, scores, allowed=None):
        top_index = scores.topk(self.k, dim=-1).indices
        top_weight = probs.gather(1, top_index)
        if self.normalize:
            top_weight = self.renormalize(top_weight, top_index)
        token_index, slot_index, weight = _flat_assignments(top_index, top_weight)
        return token_index, slot_index, weight, None

    def within_capacity(self, token_index, slot_index, scores):
        if self.capacity_factor is None:
            return None
        return self._highest_within_capacity(slot_index, scores[token_index, slot_index], scores.shape[0])

    def _highest_within_capacity(self, slot_index, score, num_tokens) -> torch.Tensor:
        by_score = torch.argsort(score, descending=True, stable=True)
        order = by_score[torch.argsort(slot_index[by_score], stable=True)]
        counts = torch.bincount(slot_index, minlength=self.num_slots)
        starts = torch.cumsum(counts, 0) - counts
        sorted_slots = slot_index[order]
        rank = torch.arange(order.numel(), device=order.device) - starts[sorted_slots]
        keep = torch.empty_like(slot_index, dtype=torch.bool)
        keep[order] = rank < self.capacity(num_tokens)
        return keep


class ExpertChoiceRouter(Router):
    """Expert choice (Zhou et al. 2022): each expert takes its top-C tokens, C = ceil(T * c / E).

    S = softmax(X W_g) [T, E]; G, I = TopK(S^T, C): expert e processes tokens I[e] with weights G[e]. Every expert
    gets exactly C tokens (perfect balance by construction); a token may get any number of experts, including none.
    With ``tokens_per_sample`` S_n (EC-DiT: the tokens of one image), the choice is made within each sample: the
    T = B * S_n tokens are B consecutive samples and each expert takes its top C = ceil(S_n * c / E) of every sample.
    With ``expert_groups`` (MoMa's modality groups) the choice is made within each group at that group's capacity
    (``_select_in_groups``): C_G = ceil(T_G * c / |E_G|) of the group's own T_G tokens.
    ``capacity_rounding="floor"``: C = max(1, min(T, int(T / E * c))) instead, the rounding of the ProMoE
    repository's EC-DiT (``models/models_ECDiT.py``, ``MoE.forward``: ``k = int((S / num_experts) * capacity)``).
    """

    def __init__(self, dim: int, num_experts: int, capacity_factor: float = 1.0, *,
                 tokens_per_sample: int | None = None, capacity_rounding: str = "ceil", **kwargs):
        super().__init__(dim, num_experts, **kwargs)
        if capacity_rounding not in ("ceil", "floor"):
            raise ValueError(f"expert choice: capacity_rounding must be ceil or floor, got {capacity_rounding!r}")
        self.capacity_factor = capacity_factor
        self.tokens_per_sample = tokens_per_sample
        self.capacity_rounding = capacity_rounding

    def capacity(self, num_tokens: int) -> int:
        if self.capacity_rounding == "floor":  # EC-DiT's int(S / E * c), at least one token
            return max(1, min(num_tokens, int(num_tokens / self.num_slots * self.capacity_factor)))
        return min(num_tokens, math.ceil(num_tokens * self.capacity_factor / self.num_slots))

    def select(self, probs, scores, allowed=None):
        num_tokens, num_slots = probs.shape
        per_sample = self.tokens_per_sample or num_tokens
        if num_tokens % per_sample:
            raise ValueError(f"expert choice per sample: {num_tokens} tokens are not whole samples of "
                             f"tokens_per_sample={per_sample}")
        samples = num_tokens // per_sample
        if allowed is not None:
            return self._select_in_groups(probs, scores, allowed, samples, per_sample)
        capacity = self.capacity(per_sample)
        by_sample = scores.view(samples, per_sample, num_slots).transpose(1, 2)  # [B, S, n] -> [B, E, n]
        top = by_sample.topk(capacity, dim=-1).indices  # [B, E, C], token index within its sample
        token_index = top + (torch.arange(samples, device=probs.device) * per_sample)[:, None, None]
        weight = probs.t().gather(1, token_index.transpose(0, 1).reshape(num_slots, -1))  # [E, B * C]
        slot_index = torch.arange(num_slots, device=probs.device).repeat_interleave(samples * capacity)
        return token_index.transpose(0, 1).reshape(-1), slot_index, weight.reshape(-1), None

    def _select_in_groups(self, probs, scores, allowed, samples: int, per_sample: int):
        """Expert choice within each group (MoMa, Lin et al. 2024): the tokens sharing one row of ``allowed`` form
        a group G with experts E_G; in each sample every expert of E_G takes its top C_G of that group's tokens,
        C_G = min(T_G, ceil(T_G * c / |E_G|)) with T_G the group's tokens in the sample. So an expert gets its full
        share of its own group's tokens, however unbalanced the groups are, and never another group's; an expert
        in several groups takes its share of each. Tokens allowed no expert (unrouted) are not chosen."""
        device = probs.device
        patterns, inverse = torch.unique(allowed, dim=0, return_inverse=True)
        by_sample = scores.view(samples, per_sample, -1)
        offsets = (torch.arange(samples, device=device) * per_sample)[:, None, None]
        tokens, slots = [], []
        for g, pattern in enumerate(patterns):
            experts = pattern.nonzero().squeeze(1)
            if experts.numel() == 0:
                continue
            member = (inverse == g).view(samples, per_sample)
            count = member.sum(1)  # [B] the group's tokens in each sample
            capacity = torch.minimum(count, torch.ceil(count * self.capacity_factor / experts.numel()).long())
            most = int(capacity.max())
            if most == 0:
                continue
            group_scores = by_sample[:, :, experts].masked_fill(~member[..., None], float("-inf"))
            top = group_scores.transpose(1, 2).topk(most, dim=-1).indices  # [B, E_G, most]
            keep = torch.arange(most, device=device) < capacity[:, None, None]  # [B, 1, most]
            keep = keep.expand_as(top)
            tokens.append((top + offsets)[keep])
            slots.append(experts[None, :, None].expand_as(top)[keep])
        if not tokens:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty, probs.new_zeros(0), None
        token_index, slot_index = torch.cat(tokens), torch.cat(slots)
        order = torch.argsort(slot_index, stable=True)  # expert-major, as without groups
        token_index, slot_index = token_index[order], slot_index[order]
        return token_index, slot_index, probs[token_index, slot_index], None


class TopPRouter(Router):
    """Dynamic top-p routing (Huang et al. 2024, "Harder Tasks Need More Experts").

    Each token takes the smallest set of experts, in decreasing probability, whose probability mass reaches p:
    expert j (the r-th most probable) is used iff sum of the r-1 higher probabilities < p. Weights are the
    probabilities themselves (renormalised over the set when ``normalize``); ``max_k`` caps the set size.

    In training it adds the paper's dynamic loss (sec. 3.2), ``dynamic_entropy`` = w * mean_t -sum_i P_{t,i} log
    P_{t,i} (``moezoo.moe.losses.router_entropy_loss``), w = ``dynamic_loss_weight``, the paper's 1e-4 by default:
    without it the router can flatten its distribution until every token needs (nearly) every expert to reach p.
    The official code (github.com/ZhenweiAn/Dynamic_MoE ``modeling/modeling_moe.py``, ``SwitchMLP.forward`` and
    ``top_p_sampling_batched_all_sequence``) is inference-only: it gives the selection and raw-probability weights
    above, not the training losses, so the loss follows the paper.
    """

    def __init__(self, dim: int, num_experts: int, p: float = 0.4, *, max_k: int | None = None,
                 normalize: bool = False, dynamic_loss_weight: float = 1e-4, **kwargs):
        super().__init__(dim, num_experts, **kwargs)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"top-p router: p={p} must be in (0, 1]")
        self.p = p
        self.max_k = max_k
        self.normalize = normalize
        self.dynamic_loss_weight = dynamic_loss_weight

    def select(self, probs, scores, allowed=None):
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        sorted_probs = probs.gather(1, order)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        chosen = (mass_before < self.p) & (sorted_probs > 0)
        if self.max_k is not None:
            chosen[:, self.max_k :] = False
        weight_table = sorted_probs * chosen
        if self.normalize:
            weight_table = self.renormalize(weight_table, order)
        token_index, rank = chosen.nonzero(as_tuple=True)
        return token_index, order[token_index, rank], weight_table[token_index, rank], None

    def _aux_losses(self, logits, probs, slot_index):
        losses = super()._aux_losses(logits, probs, slot_index)
        if self.dynamic_loss_weight > 0:
            losses["dynamic_entropy"] = self.dynamic_loss_weight * router_entropy_loss(self.distribution(probs))
        return losses


class SoftRouter(Router):
    """Dense soft gate (MMoE / PLE / HoME task gates): every allowed expert is used, with weight p_{t,e}.

    g(x) = softmax(x W_g) over the experts the token may use (``expert_groups``; a single group is a static mask such
    as HoME's hierarchy mask); the others get weight 0 and no gradient. The Routing is ``soft``: statistics report
    each expert's gate mass.
    """

    soft = True

    def select(self, probs, scores, allowed=None):
        num_tokens, num_slots = probs.shape
        token_index = torch.arange(num_tokens, device=probs.device).repeat_interleave(num_slots)
        slot_index = torch.arange(num_slots, device=probs.device).repeat(num_tokens)
        return token_index, slot_index, probs.reshape(-1), None
