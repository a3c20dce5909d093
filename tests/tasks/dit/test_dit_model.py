"""MoEDiT: shapes and adaLN-Zero start for every routing, diffusers save/load, ProMoE's conditional routing."""


import pytest
import torch

from moezoo.moe import ExpertChoiceRouter, aux_loss_terms, moe_layers, routing_stats
from moezoo.tasks.dit import MoEDiT

TINY = dict(sample_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=10,
            num_experts=4, moe_every=2)


def _inputs(batch=3):
    g = torch.Generator().manual_seed(0)
    timesteps, labels = torch.tensor([10, 500, 999][:batch]), torch.tensor([1, 2, 3][:batch])
    return torch.randn(batch, 3, 8, 8, generator=g), timesteps, labels


@pytest.mark.parametrize("routing", ["dense", "token_choice", "expert_choice", "promoe"])
def test_every_routing_maps_images_to_images_and_starts_at_zero(routing):
    torch.manual_seed(0)
    model = MoEDiT(routing=routing, **TINY)
    x, t, y = _inputs()
    out = model(x, t, y).sample
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out)), "adaLN-Zero: output 0 at init"
    assert len(list(moe_layers(model))) == (0 if routing == "dense" else 1)


@pytest.mark.parametrize("routing", ["token_choice", "promoe"])
def test_save_pretrained_and_from_pretrained_round_trip(routing, tmp_path):
    torch.manual_seed(0)
    model = MoEDiT(routing=routing, **TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t, y = _inputs()
    model.save_pretrained(tmp_path)
    loaded = MoEDiT.from_pretrained(tmp_path).eval()
    assert loaded.config.routing == routing and loaded.config.num_experts == 4
    torch.testing.assert_close(loaded(x, t, y).sample, model(x, t, y).sample)


def test_promoe_sends_the_null_class_to_the_unconditional_expert_and_records_its_contrastive_loss():
    torch.manual_seed(0)
    model = MoEDiT(routing="promoe", class_dropout_prob=0.0, **TINY).train()
    x, t, _ = _inputs()
    y = torch.tensor([1, 10, 3])  # sample 1 asks for the unconditional output (null class = num_classes)
    model(x, t, y)
    (name, layer), = moe_layers(model)
    load = routing_stats(model)[name]["load"]
    tokens = model.num_patches
    assert load[-1] == pytest.approx(tokens / (3 * tokens)), "one image in three goes to the unconditional expert"
    assert set(aux_loss_terms(model)) == {"routing_contrastive"}


def test_expert_choice_gives_every_expert_its_share_of_every_image():
    torch.manual_seed(0)
    model = MoEDiT(routing="expert_choice", **TINY)
    x, t, y = _inputs()
    model(x, t, y)
    (name, _), = moe_layers(model)
    load = routing_stats(model)[name]["load"]
    torch.testing.assert_close(load, torch.full((4,), 0.25))


def test_class_dropout_replaces_labels_by_the_null_class_in_training_only():
    torch.manual_seed(0)
    model = MoEDiT(routing="dense", class_dropout_prob=0.5, **TINY)
    labels = torch.zeros(2000, dtype=torch.long)
    dropped = (model.train().drop_labels(labels) == 10).float().mean()
    assert 0.45 < dropped < 0.55
    assert torch.equal(model.eval().drop_labels(labels), labels)


def test_unknown_routing_is_a_clear_error():
    with pytest.raises(ValueError, match="routing must be one of"):
        MoEDiT(routing="soft", **TINY)


@pytest.mark.parametrize("routing", ["token_choice", "expert_choice"])
def test_decoupled_routing_feeds_the_router_the_condition_and_the_unmodulated_token(routing):
    torch.manual_seed(0)
    model = MoEDiT(routing=routing, decoupled_routing=True, **TINY)
    (name, layer), = moe_layers(model)
    assert layer.router.gate.in_features == 2 * TINY["hidden_size"]
    seen = {}
    layer.router.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    x, t, y = _inputs()
    model(x, t, y)
    assert seen["x"].shape == (3 * 16, 2 * TINY["hidden_size"])
    with pytest.raises(ValueError, match="decoupled_routing applies to token_choice and expert_choice"):
        MoEDiT(routing="promoe", decoupled_routing=True, **TINY)


def test_promoe_expert_choice_form_and_gate_options_reach_the_prototype_router():
    torch.manual_seed(0)
    model = MoEDiT(routing="promoe", prototype_choice="expert", prototype_gate="softmax", **TINY).eval()
    (_, layer), = moe_layers(model)
    assert layer.router.choice == "expert" and layer.router.gate == "softmax" and layer.router.tokens_per_sample == 16
    x, t, _ = _inputs()
    model(x, t, torch.tensor([1, 10, 3]))  # sample 1 asks for the null class
    counts = layer.record.last["counts"]
    assert counts[:4].tolist() == [8, 8, 8, 8]  # 2 conditional images x C = 16 / 4 tokens per expert
    assert counts[4] == 16  # the unconditional image's tokens


@pytest.mark.parametrize("routing", ["token_choice", "expert_choice"])
def test_a_shared_expert_halves_the_routed_width_so_the_active_compute_stays_equal(routing):
    plain = dict(moe_layers(MoEDiT(routing=routing, **TINY)))
    shared = dict(moe_layers(MoEDiT(routing=routing, shared_expert=True, **TINY)))
    (a,), (b,) = plain.values(), shared.values()
    assert a.shared_experts is None and b.shared_experts is not None
    dense_hidden = 4 * TINY["hidden_size"]
    assert b.shared_experts.fc1.out_features == dense_hidden // 2
    assert b.experts.w1.shape[-1] * 2 == a.experts.w1.shape[-1]
    with pytest.raises(ValueError, match="shared_expert applies to token_choice and expert_choice"):
        MoEDiT(routing="promoe", shared_expert=True, **TINY)


@pytest.mark.parametrize("tokens,experts,factor,floor_c,ceil_c",
                         [(16, 4, 1.0, 4, 4), (50, 4, 1.0, 12, 13), (10, 3, 2.0, 6, 7), (64, 4, 1.25, 20, 20),
                          (10, 4, 1.0, 2, 3), (6, 8, 1.0, 1, 1)])
def test_expert_choice_capacity_rounds_as_the_official_ec_dit_or_up_as_an_option(tokens, experts, factor, floor_c,
                                                                                 ceil_c):
    """models_ECDiT.py (MoE.forward): k = int((S / E) * capacity), at least one token here; ceil is moezoo's core
    default. 50 tokens, 4 experts: 12 (floor) vs 13 (ceil)."""
    floor = ExpertChoiceRouter(8, experts, factor, tokens_per_sample=tokens, capacity_rounding="floor")
    ceil = ExpertChoiceRouter(8, experts, factor, tokens_per_sample=tokens)
    assert floor.capacity(tokens) == floor_c == max(1, min(tokens, int((tokens / experts) * factor)))
    assert ceil.capacity(tokens) == ceil_c
    probs = torch.randn(2 * tokens, experts).softmax(-1)
    _, slot_index, _, _ = floor.select(probs, probs)  # two images: each expert takes C tokens of each
    assert torch.equal(torch.bincount(slot_index, minlength=experts), torch.full((experts,), 2 * floor_c))
    with pytest.raises(ValueError, match="capacity_rounding"):
        ExpertChoiceRouter(8, experts, factor, capacity_rounding="round")


def test_the_dit_builds_its_expert_choice_router_with_the_official_floor_by_default():
    (_, layer), = moe_layers(MoEDiT(routing="expert_choice", **TINY))
    assert layer.router.capacity_rounding == "floor"
    (_, layer), = moe_layers(MoEDiT(routing="expert_choice", capacity_rounding="ceil", **TINY))
    assert layer.router.capacity_rounding == "ceil"
