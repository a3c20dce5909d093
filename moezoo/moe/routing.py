"""The Routing record: what every router returns and every expert bank and kernel consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Routing:
    """A set of (token, expert, weight) assignments and the router distribution that produced them.

    Shapes (T tokens, E experts, A assignments):
        token_index [A] long, expert_index [A] long, weight [A] float (the gate applied to that expert's output),
        probs [T, E] and logits [T, E] (the router's distribution, for aux losses and statistics),
        dropped [T] bool (tokens that lost at least one of their choices to capacity, token choice only),
        group [T] long (the group id each token was restricted to, grouped routing only).
    ``soft`` marks a dense mixture (every allowed expert is assigned, MMoE-style gates): there an expert's load is
    its gate mass (the sum of its weights), not its assignment count.

    Token choice gives A = T * k (less dropped), expert choice A = E * C, top-p a variable A; null experts simply
    produce no assignment. ``aux_losses`` holds the router's weighted auxiliary losses by name.
    """

    token_index: torch.Tensor
    expert_index: torch.Tensor
    weight: torch.Tensor
    num_tokens: int
    num_experts: int
    probs: torch.Tensor
    logits: torch.Tensor
    dropped: torch.Tensor | None = None
    group: torch.Tensor | None = None
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    soft: bool = False

    @classmethod
    def from_weights(cls, weights: torch.Tensor) -> Routing:
        """The ``soft`` Routing of a dense mixture with gate weights [T, E] (every token assigned to every expert),
        for modules that mix experts by weights they compute themselves (Mowst's confidence C: [C, 1 - C])."""
        num_tokens, num_experts = weights.shape
        token_index = torch.arange(num_tokens, device=weights.device).repeat_interleave(num_experts)
        expert_index = torch.arange(num_experts, device=weights.device).repeat(num_tokens)
        probs = weights.detach().float()
        return cls(token_index=token_index, expert_index=expert_index, weight=weights.reshape(-1),
                   num_tokens=num_tokens, num_experts=num_experts, probs=probs,
                   logits=probs.clamp_min(1e-12).log(), soft=True)

    @property
    def num_assignments(self) -> int:
        return self.token_index.numel()

    def tokens_per_expert(self) -> torch.Tensor:
        """Number of assignments each expert received, [E] long."""
        return torch.bincount(self.expert_index, minlength=self.num_experts)

    def expert_load(self) -> torch.Tensor:
        """Per-expert load [E] float: assignment counts, or the summed gate weights of a ``soft`` mixture."""
        if self.soft:
            return self.weight.detach().float().new_zeros(self.num_experts).index_add_(
                0, self.expert_index, self.weight.detach().float())
        return self.tokens_per_expert().float()

    def group_load(self) -> torch.Tensor | None:
        """Per-group, per-expert load [G, E] (as ``expert_load``, split by each token's group), or None."""
        if self.group is None:
            return None
        num_groups = int(self.group.max()) + 1 if self.group.numel() else 1
        mass = self.weight.detach().float() if self.soft else torch.ones_like(self.weight, dtype=torch.float)
        load = mass.new_zeros(num_groups, self.num_experts)
        return load.index_put_((self.group[self.token_index], self.expert_index), mass, accumulate=True)

    def combine_weights(self) -> torch.Tensor:
        """Dense [T, E] matrix of gate weights (zero where a token is not assigned): for tests and small models."""
        dense = self.weight.new_zeros(self.num_tokens, self.num_experts)
        return dense.index_put((self.token_index, self.expert_index), self.weight, accumulate=True)
