"""The shared MoE core: the Routing record, routers, expert banks, the MoE layer, aux losses and statistics."""

from .builder import MoEArgs
from .experts import DenseMLP, FiLMExperts, GroupedMLP, ModuleExperts
from .grow import add_experts, freeze_experts, most_used_experts
from .layer import MoE
from .losses import (
    global_batch_load_balancing_loss,
    router_entropy_loss,
    router_z_loss,
    switch_load_balancing_loss,
)
from .materialize import init_non_persistent_buffers, materialize
from .mixture import GatedMixture
from .precision import ExpertLayerwiseCasting, enable_expert_layerwise_casting
from .prototype import PrototypeRouter, routing_contrastive_loss
from .record import RoutingRecord, in_backward
from .routers import ExpertChoiceRouter, Router, SoftRouter, TopKRouter, TopPRouter
from .routing import Routing
from .stacked import RoutedStackedMLP, StackedMLP
from .stats import (
    after_optimizer_step,
    aux_loss,
    aux_loss_terms,
    load_by_label,
    moe_layers,
    normalized_mutual_information,
    routing_labels,
    routing_stats,
    take_expert_load,
)
from .uncertainty import UncertaintyRouter
from .upcycle import upcycle

__all__ = [
    "DenseMLP",
    "ExpertChoiceRouter",
    "ExpertLayerwiseCasting",
    "FiLMExperts",
    "GatedMixture",
    "GroupedMLP",
    "MoE",
    "MoEArgs",
    "ModuleExperts",
    "PrototypeRouter",
    "RoutedStackedMLP",
    "Router",
    "Routing",
    "RoutingRecord",
    "SoftRouter",
    "StackedMLP",
    "TopKRouter",
    "TopPRouter",
    "UncertaintyRouter",
    "add_experts",
    "after_optimizer_step",
    "aux_loss",
    "aux_loss_terms",
    "enable_expert_layerwise_casting",
    "freeze_experts",
    "global_batch_load_balancing_loss",
    "in_backward",
    "init_non_persistent_buffers",
    "load_by_label",
    "materialize",
    "moe_layers",
    "most_used_experts",
    "normalized_mutual_information",
    "router_entropy_loss",
    "router_z_loss",
    "routing_contrastive_loss",
    "routing_labels",
    "routing_stats",
    "switch_load_balancing_loss",
    "take_expert_load",
    "upcycle",
]
