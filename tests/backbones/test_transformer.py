"""MoETransformer: MoE placement, adaLN-Zero identity at init, causal attention."""

import torch

from moezoo.backbones import MoETransformer, TransformerBlock
from moezoo.moe import DenseMLP, MoE, MoEArgs


def test_moe_every_second_block():
    model = MoETransformer(16, depth=4, num_heads=2, moe=MoEArgs(num_experts=3, k=1), moe_every=2)
    assert [isinstance(b.ffn, MoE) for b in model.blocks] == [False, True, False, True]
    assert model(torch.randn(2, 5, 16)).shape == (2, 5, 16)
    dense = MoETransformer(16, depth=3, num_heads=2, moe_every=0)
    assert not any(isinstance(b.ffn, MoE) for b in dense.blocks)


def test_adaln_zero_block_is_the_identity_at_initialisation():
    block = TransformerBlock(16, 2, DenseMLP(16, 32), cond_dim=8)
    x = torch.randn(3, 5, 16)
    assert torch.equal(block(x, torch.randn(3, 8)), x)
    with torch.no_grad():
        block.modulation[1].bias.normal_()
    assert not torch.allclose(block(x, torch.randn(3, 8)), x), "the condition now modulates the block"


def test_causal_attention_outputs_do_not_depend_on_later_tokens():
    torch.manual_seed(0)
    model = MoETransformer(16, depth=2, num_heads=2, moe=MoEArgs(num_experts=4, k=2), moe_every=1).eval()
    x = torch.randn(1, 6, 16)
    changed = x.clone()
    changed[:, 4:] = torch.randn(1, 2, 16)
    y, y_changed = model(x, is_causal=True), model(changed, is_causal=True)
    assert torch.allclose(y[:, :4], y_changed[:, :4], atol=1e-6)
    assert not torch.allclose(y[:, 4:], y_changed[:, 4:])


def test_moe_keywords_reach_the_moe_layers():
    model = MoETransformer(16, depth=2, num_heads=2, moe=MoEArgs(num_experts=4, k=1, expert_groups=[[0, 1], [2, 3]]),
                           moe_every=1)
    group = torch.tensor([[0, 0, 1], [1, 1, 1]])
    model(torch.randn(2, 3, 16), group=group)
    for block in model.blocks:
        counts = block.ffn.record.last["counts"]
        assert counts[:2].sum() == 2 and counts[2:].sum() == 4
