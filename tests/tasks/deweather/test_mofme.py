"""The restorer's FFNs against MoFME's equations, the variants' sizes, the network's shapes, and the perceptual loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import vgg16

from moezoo.errors import MoezooError
from moezoo.moe import FiLMExperts, MoE, TopKRouter, UncertaintyRouter, aux_loss
from moezoo.tasks.deweather import DeweatherModel
from moezoo.tasks.deweather.layers import VARIANTS, FMELayer, make_ffn
from moezoo.tasks.deweather.perceptual import PerceptualLoss


def _small(name: str, **kwargs) -> DeweatherModel:
    ffn, router = VARIANTS[name]
    return DeweatherModel(ffn=ffn, router=router, channels=4, patch_size=4, dim=16, num_heads=2,
                          weather_names=["rain", "snow", "haze"], **kwargs)


def test_the_fme_layer_is_the_adaptor_of_the_routed_film_of_the_shared_gated_block():
    torch.manual_seed(0)
    layer = FMELayer(8, TopKRouter(8, 3, k=2), 3).eval()
    h = torch.randn(2, 5, 8)
    shared = F.gelu(layer.w1(h)) * layer.w2(h)  # g = GELU(W1 h) * (W2 h)
    probs = torch.softmax(layer.moe.router.gate(h), -1)  # the router sees h
    top = probs.topk(2, -1)
    weights = top.values / top.values.sum(-1, keepdim=True)
    bank = layer.moe.experts
    mixed = torch.zeros_like(shared)
    for slot in range(2):
        e = top.indices[..., slot]
        a, b = bank.weight[e][..., :8], bank.weight[e][..., 8:]  # [2, 5, 8, 8]
        scale = torch.einsum("bnd,bndo->bno", shared, a) + bank.bias[e][..., :8]
        shift = torch.einsum("bnd,bndo->bno", shared, b) + bank.bias[e][..., 8:]
        mixed += weights[..., slot, None] * (scale * shared + shift)  # FME_e(g) = (A_e g + a_e) * g + B_e g + b_e
    torch.testing.assert_close(layer(h), layer.adaptor(mixed), rtol=1e-4, atol=1e-5)


def test_mofme_holds_far_fewer_ffn_parameters_than_the_standard_moe_and_each_variant_its_formula():
    d, e = 32, 8
    counts = {name: sum(p.numel() for p in make_ffn(ffn, d, router=router, num_experts=e, k=2).parameters())
              for name, (ffn, router) in VARIANTS.items()}
    gate = d * e
    assert counts["dense"] == 8 * d * d + 5 * d  # W1 [d, 4d], W2 [4d, d] and their biases
    assert counts["moe"] == e * (8 * d * d + 5 * d) + gate
    film = 2 * d * d + 2 * d + e * (2 * d * d + 2 * d) + 8 * d * d + 5 * d + gate
    assert counts["mofme"] == counts["mofme-uar"] == film
    assert counts["mofme"] < 0.45 * counts["moe"]  # (10 + 2E) d^2 against 8E d^2: 41% of it at E = 8


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_restores_any_image_size_and_trains_under_bf16_autocast(name):
    torch.manual_seed(0)
    model = _small(name).train()
    image = torch.rand(2, 3, 13, 22)  # not multiples of the patch: edge-padded and cropped back
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(image)
    assert out.shape == image.shape
    (out.float() - image).abs().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert float(aux_loss(model)) == 0.0  # no balancing loss by default (the official MoFME has none)
    moe = [m for m in model.modules() if isinstance(m, MoE)]
    assert len(moe) == (0 if name == "dense" else 2)
    if name == "mofme-uar":
        assert all(isinstance(m.router, UncertaintyRouter) and isinstance(m.experts, FiLMExperts) for m in moe)


def test_the_global_residual_adds_the_tail_to_the_input_and_without_it_the_output_is_a_sigmoid():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 16, 16)
    bounded = _small("mofme", global_residual=False).eval()(image)
    assert bounded.min() > 0 and bounded.max() < 1
    residual = _small("mofme").eval()
    assert torch.equal(residual(image), image)  # out = x + tail(...), the tail's last conv starts at 0: the identity
    torch.nn.init.normal_(residual.restorer.tail[-1].bias)
    assert torch.allclose(residual(image) - image, residual.restorer.tail[-1].bias.view(1, 3, 1, 1).expand_as(image))


def test_the_expert_map_names_the_highest_weight_expert_of_every_patch_token():
    torch.manual_seed(0)
    model = _small("moe").eval()
    image = torch.rand(2, 3, 12, 17)
    experts = model.expert_map(image)
    assert experts.shape == (2, 3, 5)  # ceil(12 / 4), ceil(17 / 4)
    seen = []
    handle = model.moe_layers()[-1].router.register_forward_hook(lambda m, a, out: seen.append(out))
    model(image)
    handle.remove()
    weights = torch.zeros(2 * 3 * 5, 4)
    weights[seen[0].token_index, seen[0].expert_index] = seen[0].weight
    assert torch.equal(experts.flatten(), weights.argmax(-1))


def test_tiled_restoration_covers_the_image_and_equals_the_whole_when_one_tile_holds_it():
    torch.manual_seed(0)
    model = _small("mofme").eval()
    image = torch.rand(1, 3, 40, 56)
    whole = model.restore(image)
    torch.testing.assert_close(model.restore(image, tile=64), whole)
    tiled = model.restore(image, tile=24, overlap=8)
    assert tiled.shape == image.shape and torch.isfinite(tiled).all() and 0 <= tiled.min() and tiled.max() <= 1
    with pytest.raises(MoezooError, match="overlap=24 must be in"):
        model.restore(image, tile=24, overlap=24)


def test_the_perceptual_loss_reads_user_given_vgg16_weights_and_compares_their_features(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "vgg16.pth"
    torch.save(vgg16().features[:16].state_dict(), path)  # made here: no weights can be downloaded
    loss = PerceptualLoss(path)
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert loss(a, a) == 0 and loss(a, b) > 0
    assert not any(p.requires_grad for p in loss.parameters())
    model = _small("dense", perceptual_weights=str(path), perceptual_weight=0.04)
    assert not any(k.startswith("_perceptual") or "features" in k for k in model.state_dict())
    bad = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(1)}, bad)
    with pytest.raises(MoezooError, match="is not a torchvision vgg16 state dict"):
        PerceptualLoss(bad)
    with pytest.raises(MoezooError, match="needs model.init_args.perceptual_weights"):
        _small("dense", perceptual_weight=0.04)


@pytest.mark.parametrize("kwargs, message", [({"ffn": "cnn"}, "model.init_args.ffn: 'cnn'"),
                                             ({"router": "hash"}, "model.init_args.router: 'hash'"),
                                             ({"k": 5}, "model.init_args.k: 5"),
                                             ({"dim": 15}, "model.init_args.dim: 15")])
def test_bad_settings_are_one_line_errors_naming_the_key(kwargs, message):
    with pytest.raises(MoezooError, match=message):
        DeweatherModel(**{"num_heads": 2, **kwargs})
