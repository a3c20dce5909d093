"""The shared MoE core: the Routing record, routers, expert banks, the MoE layer, aux losses and statistics."""

from .builder import MoEArgs
from .experts import DenseMLP, GroupedMLP, ModuleExperts
from .layer import MoE
from .losses import global_batch_load_balancing_loss, router_z_loss, switch_load_balancing_loss
from .mixture import GatedMixture
from .prototype import PrototypeRouter, routing_contrastive_loss
from .routers import ExpertChoiceRouter, Router, SoftRouter, TopKRouter, TopPRouter
from .routing import Routing
from .stats import after_optimizer_step, aux_loss, aux_loss_terms, moe_layers, routing_stats, take_expert_load

__all__ = [
    "DenseMLP",
    "ExpertChoiceRouter",
    "GatedMixture",
    "GroupedMLP",
    "MoE",
    "MoEArgs",
    "ModuleExperts",
    "PrototypeRouter",
    "Router",
    "Routing",
    "SoftRouter",
    "TopKRouter",
    "TopPRouter",
    "after_optimizer_step",
    "aux_loss",
    "aux_loss_terms",
    "global_batch_load_balancing_loss",
    "moe_layers",
    "router_z_loss",
    "routing_contrastive_loss",
    "routing_stats",
    "switch_load_balancing_loss",
    "take_expert_load",
]
