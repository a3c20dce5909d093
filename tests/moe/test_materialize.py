"""A model built on the meta device and materialised: its non-persistent buffers are recomputed, not left as garbage."""

import torch

from moezoo.backbones import MoETransformer
from moezoo.moe import MoEArgs, init_non_persistent_buffers, materialize

ARGS = dict(num_experts=4, k=1, expert_groups=[[0, 1], [2, 3]], bias_update_rate=0.01)


def _routers(model):
    return [m for m in model.modules() if hasattr(m, "group_mask")]


def test_materialize_recomputes_group_masks_and_step_counts_of_every_router():
    real = MoEArgs(**ARGS).build(16, 32)
    meta = MoEArgs(**ARGS).build(16, 32, device="meta")
    assert meta.router.group_mask.device.type == "meta"
    meta.to_empty(device="cpu")
    for router in _routers(meta):  # what uninitialised memory may hold
        router.group_mask.fill_(True)
        router.step_counts.fill_(7.0)
        router.global_counts.fill_(-3.0)
    init_non_persistent_buffers(meta)
    assert torch.equal(meta.router.group_mask, real.router.group_mask)
    assert torch.equal(meta.router.group_mask, torch.tensor([[True, True, False, False], [False, False, True, True]]))
    assert meta.router.step_counts.eq(0).all() and meta.router.global_counts.eq(0).all()


def test_a_meta_built_grouped_transformer_materialises_and_loads_to_the_same_outputs():
    torch.manual_seed(0)
    real = MoETransformer(16, 4, 2, moe=MoEArgs(**ARGS))
    meta = MoETransformer(16, 4, 2, moe=MoEArgs(**ARGS), device="meta")
    materialize(meta, "cpu").load_state_dict(real.state_dict())
    assert len(_routers(meta)) == 2
    for a, b in zip(_routers(meta), _routers(real)):
        assert torch.equal(a.group_mask, b.group_mask) and a.step_counts.eq(0).all()
    x = torch.randn(2, 5, 16)
    group = torch.tensor([0, 1]).repeat_interleave(5)  # a modality id per token
    real.eval(), meta.eval()
    torch.testing.assert_close(meta(x, group=group), real(x, group=group))


def test_materialize_can_reinitialise_parameters_for_training_from_scratch():
    meta = MoEArgs(**ARGS).build(16, 32, device="meta")
    materialize(meta, "cpu", reset_parameters=True)
    weights = [p for p in meta.parameters()]
    assert all(torch.isfinite(p).all() for p in weights)
    assert meta.experts.w1.std() > 0 and meta.router.gate.weight.std() > 0
