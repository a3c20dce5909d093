"""MoETransformer: MoE placement, output shape, adaLN-Zero identity at init, causal attention."""

import pytest
import torch

from moezoo.backbones import MoETransformer, TransformerBlock
from moezoo.moe import DenseMLP, MoE, MoEArgs


@pytest.mark.parametrize(
    "moe_every,expected",
    [(2, [False, True, False, True]), (1, [True] * 4), (3, [False, False, True, False]), (0, [False] * 4)],
)
def test_moe_every_puts_moe_layers_in_blocks_moe_every_minus_1_2_moe_every_minus_1(moe_every, expected):
    model = MoETransformer(16, depth=4, num_heads=2, moe=MoEArgs(num_experts=3, k=1), moe_every=moe_every)
    assert [isinstance(block.ffn, MoE) for block in model.blocks] == expected
    assert all(isinstance(block.ffn, DenseMLP) for block, moe in zip(model.blocks, expected) if not moe)


@pytest.mark.parametrize("cond_dim", [None, 8])
def test_output_keeps_the_batch_tokens_dim_shape(cond_dim):
    model = MoETransformer(16, depth=2, num_heads=2, moe=MoEArgs(num_experts=3, k=2), moe_every=1, cond_dim=cond_dim)
    cond = None if cond_dim is None else torch.randn(2, cond_dim)
    y = model(torch.randn(2, 5, 16), cond)
    assert y.shape == (2, 5, 16) and torch.isfinite(y).all()


@pytest.mark.parametrize("ffn", ["dense", "moe"])
def test_adaln_zero_block_is_the_identity_at_initialisation(ffn):
    torch.manual_seed(0)
    layer = DenseMLP(16, 32) if ffn == "dense" else MoEArgs(num_experts=3, k=2).build(16, 32)
    block = TransformerBlock(16, 2, layer, cond_dim=8)
    x = torch.randn(3, 5, 16)
    assert torch.equal(block(x, torch.randn(3, 8)), x), "both gates start at zero"
    with torch.no_grad():
        block.modulation[1].bias.normal_()
    assert not torch.allclose(block(x, torch.randn(3, 8)), x), "once the gates move, the condition modulates the block"


def test_adaln_model_at_initialisation_is_only_its_final_norm():
    torch.manual_seed(0)
    model = MoETransformer(16, depth=3, num_heads=2, moe=MoEArgs(num_experts=3, k=1), moe_every=2, cond_dim=8)
    x = torch.randn(2, 4, 16)
    assert torch.equal(model(x, torch.randn(2, 8)), model.norm(x))


def test_adaln_block_without_a_condition_raises():
    block = TransformerBlock(16, 2, DenseMLP(16, 32), cond_dim=8)
    with pytest.raises(ValueError, match="cond="):
        block(torch.randn(1, 2, 16))


@pytest.mark.parametrize("moe_every", [0, 1], ids=["dense", "moe"])
def test_causal_attention_outputs_do_not_depend_on_later_tokens(moe_every):
    # token-choice routing without capacity is per token, so MoE layers keep the model causal
    torch.manual_seed(0)
    model = MoETransformer(16, depth=2, num_heads=2, moe=MoEArgs(num_experts=4, k=2), moe_every=moe_every).eval()
    x = torch.randn(2, 6, 16)
    changed = x.clone()
    changed[:, 4:] = torch.randn(2, 2, 16)
    y, y_changed = model(x, is_causal=True), model(changed, is_causal=True)
    torch.testing.assert_close(y[:, :4], y_changed[:, :4], rtol=0, atol=1e-6)
    assert not torch.allclose(y[:, 4:], y_changed[:, 4:])
    # the check has teeth: without the causal mask the early outputs do see the later tokens
    assert not torch.allclose(model(x)[:, :4], model(changed)[:, :4])


def test_moe_keywords_reach_the_moe_layers():
    model = MoETransformer(16, depth=2, num_heads=2, moe=MoEArgs(num_experts=4, k=1, expert_groups=[[0, 1], [2, 3]]),
                           moe_every=1)
    group = torch.tensor([[0, 0, 1], [1, 1, 1]])
    model(torch.randn(2, 3, 16), group=group)
    for block in model.blocks:
        counts = block.ffn.record.last["counts"]
        assert counts[:2].sum() == 2 and counts[2:].sum() == 4


def test_decoupled_routing_routes_on_the_condition_and_the_unmodulated_token():
    from moezoo.moe import GroupedMLP, TopKRouter

    torch.manual_seed(0)
    dim, cond_dim = 8, 6
    block = TransformerBlock(dim, 2, MoE(dim, TopKRouter(cond_dim + dim, 4, k=1), GroupedMLP(4, dim, 16)),
                             cond_dim=cond_dim, decoupled_routing=True)
    torch.nn.init.normal_(block.modulation[1].weight)  # non-zero modulation: modulated != un-modulated
    seen = {}
    block.ffn.router.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    x, cond = torch.randn(2, 3, dim), torch.randn(2, cond_dim)
    block(x, cond)
    h = x + block.modulation(cond).chunk(6, -1)[2].unsqueeze(1) * block.attn(
        block.norm1(x) * (1 + block.modulation(cond).chunk(6, -1)[1].unsqueeze(1))
        + block.modulation(cond).chunk(6, -1)[0].unsqueeze(1))
    expected = torch.cat([cond.unsqueeze(1).expand(-1, 3, -1), block.norm2(h)], -1).reshape(6, -1)
    torch.testing.assert_close(seen["x"], expected)
    with pytest.raises(ValueError, match="decoupled_routing needs adaLN"):
        TransformerBlock(dim, 2, DenseMLP(dim, 16), cond_dim=cond_dim, decoupled_routing=True)


def test_the_transformer_builds_on_the_meta_device_and_in_a_dtype_without_allocating():
    meta = MoETransformer(32, 2, 2, moe=MoEArgs(num_experts=4), cond_dim=16, device="meta")
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    torch.manual_seed(0)
    real = MoETransformer(32, 2, 2, moe=MoEArgs(num_experts=4), cond_dim=16)
    meta.to_empty(device="cpu").load_state_dict(real.state_dict())  # the upcycling / loading path
    x, cond = torch.randn(2, 5, 32), torch.randn(2, 16)
    torch.testing.assert_close(meta(x, cond), real(x, cond))
    double = MoETransformer(32, 2, 2, moe=MoEArgs(num_experts=4), dtype=torch.float64)
    assert {p.dtype for p in double.parameters()} == {torch.float64}
    assert double(x.double()).dtype == torch.float64
