"""ExpertParallelStrategy: Lightning's DDP with the MoE layers' experts sharded over an expert-parallel mesh dimension.

    moezoo fit --task image-classification/default --trainer.strategy expert_parallel \\
        --trainer.accelerator cpu --trainer.devices 2

The W processes form a 2-D ``DeviceMesh`` of shape (W / P, P), dims ``("expert_data_parallel", "expert_parallel")``
(P = ``expert_parallel_size``, by default W): every rank is a data-parallel rank (its own share of each batch, from
Lightning's DistributedSampler), and the P ranks of one expert-parallel group hold one copy of every MoE layer's
experts between them (``moezoo.moe.parallel.shard_experts``: E / P experts each, tokens moved by all-to-all).

Gradients: DDP all-reduces (averages over W) everything but the sharded experts, which it is told to ignore. An
expert's gradient on its rank already sums its expert-parallel group's tokens (the all-to-all's backward brings
them), so the strategy divides it by W and all-reduces it over the expert's own expert-data-parallel group (the
W / P ranks that hold the same experts): together the exact gradient of the mean of all ranks' losses, as DDP gives
the rest. An expert that receives no token gets a zero gradient, never an "unused parameter".

Checkpoints are written in the one-process layout, loadable with any P (1 included): the sharded banks' state dict
gathers the experts by global index, and ``optimizer_state`` gathers their optimizer state likewise; loading slices
both to this rank's experts. Aux losses are each rank's own (global-batch balancing already sums the counts over all
ranks); the logged routing statistics sum every rank's counts (``TaskModule``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel

from moezoo.errors import MoezooError
from moezoo.moe.parallel import ExpertShard, shard_experts


class ExpertParallelStrategy(DDPStrategy):
    """Data parallel x expert parallel under Lightning (see the module docstring).

    ``expert_parallel_size``: P, the ranks that share one copy of the experts (None: all W processes; W must be a
    multiple of P, and every MoE layer's expert count a multiple of P). The other arguments are DDPStrategy's.
    """

    strategy_name = "expert_parallel"

    def __init__(self, expert_parallel_size: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.expert_parallel_size = expert_parallel_size
        self._device_mesh = None
        self._sharded: dict[int, ExpertShard] = {}  # id(parameter) -> its shard, for the optimizer state
        self._hooked: set[int] = set()

    @property
    def device_mesh(self):
        if self._device_mesh is None:
            raise RuntimeError("the device mesh exists once the processes have started (setup_environment)")
        return self._device_mesh

    def setup_environment(self) -> None:
        world = self.num_processes * self.num_nodes  # known before the processes meet
        size = self.expert_parallel_size or world
        if size < 1 or world % size:
            raise MoezooError(f"trainer.strategy.expert_parallel_size={size} must divide the {world} processes")
        super().setup_environment()
        world = self.world_size
        self.expert_parallel_size = size
        self._device_mesh = init_device_mesh(self.root_device.type, (world // size, size),
                                             mesh_dim_names=("expert_data_parallel", "expert_parallel"))

    def setup(self, trainer) -> None:
        self._shard_experts()
        super().setup(trainer)

    def _shard_experts(self) -> None:
        module = self.lightning_module
        expert_group = self.device_mesh["expert_parallel"].get_group()
        names = shard_experts(module, expert_group)
        if not names:
            return
        # DDP (and Lightning's state sync outside fit) leave the experts alone: they differ between ranks
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(names))
        replica_group = self.device_mesh["expert_data_parallel"].get_group()
        replicas = self.device_mesh["expert_data_parallel"].size()
        world = self.world_size
        for name, shard in names.items():
            param = module.get_parameter(name)
            self._sharded[id(param)] = shard
            if id(param) in self._hooked or not param.requires_grad:
                continue
            self._hooked.add(id(param))

            def reduce(grad, group=replica_group, replicas=replicas, world=world):
                grad = grad / world
                if replicas > 1:
                    dist.all_reduce(grad, group=group)
                return grad

            param.register_hook(reduce)
        rank_zero_info(f"expert parallel: {len(names)} expert tensors sharded over {self.expert_parallel_size} ranks "
                       f"(mesh {tuple(self.device_mesh.shape)})")

    def _optimizer_params(self, optimizer) -> list[torch.nn.Parameter]:
        optimizer = getattr(optimizer, "_optimizer", optimizer)
        return [p for group in optimizer.param_groups for p in group["params"]]

    def optimizer_state(self, optimizer) -> dict[str, Any]:
        """The optimizer state with each sharded expert's tensors gathered to the full [E, ...] (every rank calls
        it; Lightning does when it saves)."""
        state = super().optimizer_state(optimizer)
        for index, param in enumerate(self._optimizer_params(optimizer)):
            shard = self._sharded.get(id(param))
            if shard is None or index not in state.get("state", {}):
                continue
            state["state"][index] = {k: shard.gather(v) if _per_expert(v, param) else v
                                     for k, v in state["state"][index].items()}
        return state

    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        for optimizer, saved in zip(self.optimizers, checkpoint["optimizer_states"]):
            for index, param in enumerate(self._optimizer_params(optimizer)):
                shard = self._sharded.get(id(param))
                entry = saved.get("state", {}).get(index)
                if shard is None or entry is None:
                    continue
                saved["state"][index] = {k: shard.slice(v, f"optimizer state {k} of parameter {index}")
                                         if isinstance(v, torch.Tensor) and v.ndim and v.shape[1:] == param.shape[1:]
                                         else v for k, v in entry.items()}
        super().load_optimizer_state_dict(checkpoint)


def _per_expert(value, param: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.shape == param.shape


if "expert_parallel" not in StrategyRegistry:
    StrategyRegistry.register("expert_parallel", ExpertParallelStrategy,
                              description="DDP x expert parallelism over all processes (moezoo)")
