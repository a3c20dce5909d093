"""Expert banks against their formulas on tiny tensors: stacked experts one by one, BN per expert, activations by name,
the routed (and STAR-factored) stacked bank, feature-modulated (FiLM) experts, sparse upcycling, and building on the
meta device."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from moezoo.kernels.activations import ACTIVATIONS, ALIASES, activation
from moezoo.moe import (
    DenseMLP,
    FiLMExperts,
    GroupedMLP,
    ModuleExperts,
    MoE,
    MoEArgs,
    RoutedStackedMLP,
    Routing,
    StackedMLP,
    TopKRouter,
)

TORCH_ACTIVATIONS = {"relu": F.relu, "silu": F.silu, "swish": F.silu, "gelu": F.gelu, "identity": lambda h: h,
                     "none": lambda h: h, "gelu_tanh": lambda h: F.gelu(h, approximate="tanh")}


def _routing(token_index, expert_index, weight, num_tokens, num_experts) -> Routing:
    probs = torch.zeros(num_tokens, num_experts)
    return Routing(token_index=torch.tensor(token_index), expert_index=torch.tensor(expert_index),
                   weight=torch.tensor(weight), num_tokens=num_tokens, num_experts=num_experts, probs=probs,
                   logits=probs)


def _expert_alone(bank: StackedMLP, e: int, x: torch.Tensor, act) -> torch.Tensor:
    """Expert e of a StackedMLP as plain Linear layers, eval-mode BN on its own slice of units."""
    h = x
    for layer, (w, b) in enumerate(zip(bank.weights, bank.biases)):
        h = h @ w[e] + b[e, 0]
        if bank.output_layer and layer == len(bank.weights) - 1:
            return h
        if bank.norms is not None:
            bn, width = bank.norms[layer], w.shape[-1]
            units = slice(e * width, (e + 1) * width)
            h = (h - bn.running_mean[units]) / torch.sqrt(bn.running_var[units] + bn.eps) * bn.weight[units]
            h = h + bn.bias[units]
        h = act(h)
    return h


@pytest.mark.parametrize("batch_norm,activation_name,output_layer",
                         [(False, "relu", False), (True, "silu", False), (True, "gelu", True)])
def test_each_stacked_expert_equals_that_expert_computed_alone_for_shared_and_private_inputs(
        batch_norm, activation_name, output_layer):
    torch.manual_seed(0)
    bank = StackedMLP(3, 5, [4, 6], activation_name, batch_norm=batch_norm, output_layer=output_layer).eval()
    if batch_norm:
        with torch.no_grad():
            for bn in bank.norms:
                bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
    act = TORCH_ACTIVATIONS[activation_name]
    x, private = torch.randn(7, 5), torch.randn(3, 7, 5)
    shared_out, private_out = bank(x), bank(private)
    assert shared_out.shape == private_out.shape == (3, 7, 6)
    for e in range(3):
        torch.testing.assert_close(shared_out[e], _expert_alone(bank, e, x, act))
        torch.testing.assert_close(private_out[e], _expert_alone(bank, e, private[e], act))


def test_expert_batch_norm_normalises_each_expert_on_its_own_in_training():
    torch.manual_seed(0)
    bank = StackedMLP(3, 2, [4], activation="identity", batch_norm=True).train()
    scales = torch.tensor([1.0, 5.0, 20.0]).view(3, 1, 1)  # one BN over all experts' units would not centre each
    h = bank(torch.randn(3, 512, 2) * scales + scales)
    torch.testing.assert_close(h.mean(1), torch.zeros(3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(h.var(1, unbiased=False), torch.ones(3, 4), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", sorted(TORCH_ACTIVATIONS))
def test_every_activation_name_and_alias_gives_its_torch_function_in_each_bank(name):
    torch.manual_seed(0)
    act, x = TORCH_ACTIVATIONS[name], torch.randn(6, 3)
    dense = StackedMLP(2, 3, [4], name)
    expected = act(x @ dense.weights[0][1] + dense.biases[0][1])
    torch.testing.assert_close(dense(x)[1], expected)
    routed = RoutedStackedMLP(2, 3, [4], name)
    routing = _routing(list(range(6)), [1] * 6, [1.0] * 6, 6, 2)
    torch.testing.assert_close(routed(x, routing), act(x @ routed.weights[0][1] + routed.biases[0][1]))
    canonical = ALIASES.get(name, name)
    assert dense.activation == routed.activation == GroupedMLP(2, 3, 4, activation=name).activation == canonical
    assert activation(name) is ACTIVATIONS[canonical]


def test_registry_keys_are_canonical_and_every_alias_names_one_of_them():
    assert not set(ALIASES) & set(ACTIVATIONS)
    assert ALIASES == {"swish": "silu", "none": "identity"}


@pytest.mark.parametrize("make", [lambda a: StackedMLP(2, 3, [4], a), lambda a: RoutedStackedMLP(2, 3, [4], a),
                                  lambda a: GroupedMLP(2, 3, 4, activation=a), lambda a: DenseMLP(3, 4, activation=a)])
def test_an_unknown_activation_is_a_one_line_error_naming_it_and_the_valid_names(make):
    with pytest.raises(ValueError) as error:
        make("tanh")
    message = str(error.value)
    assert "\n" not in message and "'tanh'" in message
    assert all(name in message for name in [*ACTIVATIONS, *ALIASES])


def test_stacked_banks_need_at_least_one_layer():
    for bank in (StackedMLP, RoutedStackedMLP):
        with pytest.raises(ValueError, match=f"{bank.__name__}: hidden must name at least one layer width"):
            bank(2, 3, [])


def _randomise(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()


def _mlp(x, weights, biases, act, plain_last):
    h = x
    for layer, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w + b
        if not (plain_last and layer == len(weights) - 1):
            h = act(h)
    return h


def test_routed_stacked_bank_is_the_weighted_sum_of_each_assigned_experts_mlp_and_idle_experts_get_no_gradient():
    torch.manual_seed(0)
    bank = RoutedStackedMLP(4, 5, [6, 3], "silu", output_layer=True)
    # 5 tokens; token 3 has no assignment, expert 2 receives none
    routing = _routing([0, 0, 1, 2, 2, 4], [1, 3, 0, 3, 1, 0], [0.3, 0.7, 1.0, 0.5, 0.25, 2.0], 5, 4)
    x = torch.randn(5, 5)
    y = bank(x, routing)
    expected = torch.zeros(5, 3)
    for t, e, w in zip(routing.token_index, routing.expert_index, routing.weight):
        weights, biases = [w_[e] for w_ in bank.weights], [b_[e] for b_ in bank.biases]
        expected[t] += w * _mlp(x[t], weights, biases, F.silu, plain_last=True)
    torch.testing.assert_close(y, expected)
    y.square().sum().backward()
    assert all((w.grad[2] == 0).all() and (w.grad[[0, 1, 3]] != 0).any() for w in bank.weights)


def test_factored_routed_bank_is_shared_times_specific_weights_per_cluster_and_starts_as_the_shared_network():
    torch.manual_seed(0)
    bank = RoutedStackedMLP(3, 5, [4, 2], "relu", output_layer=True, factored=True)
    v, cluster = torch.randn(9, 5), [2, 0, 1, 1, 2, 0, 0, 2, 1]
    routing = _routing(list(range(9)), cluster, [1.0] * 9, 9, 3)
    shared = _mlp(v, list(bank.shared_weights), list(bank.shared_biases), F.relu, plain_last=True)
    torch.testing.assert_close(bank(v, routing), shared)  # F = 1, c = 0 at init
    _randomise(bank)
    out = bank(v, routing)
    for b, k in enumerate(cluster):
        weights = [s * f[k] for s, f in zip(bank.shared_weights, bank.weights)]
        biases = [s + c[k] for s, c in zip(bank.shared_biases, bank.biases)]
        torch.testing.assert_close(out[b], _mlp(v[b], weights, biases, F.relu, plain_last=True))


def test_routed_and_dense_stacked_banks_agree_when_every_sample_takes_every_expert():
    torch.manual_seed(0)
    dense, routed = StackedMLP(3, 4, [5, 2], "gelu"), RoutedStackedMLP(3, 4, [5, 2], "gelu")
    with torch.no_grad():
        for w_d, b_d, w_r, b_r in zip(dense.weights, dense.biases, routed.weights, routed.biases):
            w_r.copy_(w_d), b_r.copy_(b_d.squeeze(1))
    x, gates = torch.randn(6, 4), torch.softmax(torch.randn(6, 3), -1)
    routing = _routing(torch.arange(6).repeat_interleave(3).tolist(), torch.arange(3).repeat(6).tolist(),
                       gates.reshape(-1).tolist(), 6, 3)
    torch.testing.assert_close(routed(x, routing), torch.einsum("be,ebh->bh", gates, dense(x)))


@pytest.mark.parametrize("glu,bias", [(False, True), (True, True), (False, False)])
def test_an_upcycled_moe_over_copies_of_a_dense_ffn_outputs_exactly_the_dense_ffn(glu, bias):
    torch.manual_seed(0)
    dense = DenseMLP(6, 10, activation="silu", glu=glu, bias=bias)
    bank = GroupedMLP.from_dense(dense, 4)
    assert (bank.activation, bank.glu, bank.b1 is not None) == ("silu", glu, bias)
    moe = MoE(6, TopKRouter(6, 4, k=2), bank)  # top-2 weights renormalised: they sum to 1
    x = torch.randn(3, 5, 6)
    torch.testing.assert_close(moe(x), dense(x))
    with torch.no_grad():
        bank.w1[0].add_(1.0)
    assert not torch.equal(bank.w1[0], dense.fc1.weight.t())  # the copies own their storage
    torch.testing.assert_close(bank.w1[1], dense.fc1.weight.t(), rtol=0, atol=0)


HUGE = 1 << 14  # a [HUGE, HUGE, HUGE] float32 weight is 16 TiB: only the meta device can hold it

META_BANKS = {
    "grouped": lambda **dd: GroupedMLP(HUGE, HUGE, HUGE, glu=True, **dd),
    "stacked": lambda **dd: StackedMLP(HUGE, HUGE, [HUGE, HUGE], batch_norm=True, **dd),
    "routed_factored": lambda **dd: RoutedStackedMLP(HUGE, HUGE, [HUGE, HUGE], factored=True, **dd),
    "dense": lambda **dd: DenseMLP(HUGE, HUGE * HUGE, **dd),
    "film": lambda **dd: FiLMExperts(HUGE, HUGE, **dd),
    "moe_args": lambda **dd: MoEArgs(num_experts=HUGE, num_shared_experts=2).build(HUGE, HUGE, **dd),
}


@pytest.mark.parametrize("name", sorted(META_BANKS))
def test_banks_far_too_large_for_memory_build_on_the_meta_device_allocating_nothing(name):
    bank = META_BANKS[name](device="meta")
    tensors = [*bank.parameters(), *bank.buffers()]
    assert tensors and all(t.is_meta for t in tensors)
    assert sum(p.numel() for p in bank.parameters()) > 1 << 40


SMALL_BANKS = {
    "grouped": lambda **dd: GroupedMLP(3, 4, 5, **dd),
    "stacked": lambda **dd: StackedMLP(3, 4, [5, 2], batch_norm=True, **dd),
    "routed": lambda **dd: RoutedStackedMLP(3, 4, [5, 2], **dd),
    "routed_factored": lambda **dd: RoutedStackedMLP(3, 4, [5, 2], factored=True, **dd),
    "dense": lambda **dd: DenseMLP(4, 5, **dd),
    "film": lambda **dd: FiLMExperts(3, 4, **dd),
    "module_experts": lambda **dd: ModuleExperts([nn.Linear(4, 2, **dd) for _ in range(3)]),
}


def _call(bank: nn.Module, x: torch.Tensor) -> torch.Tensor:
    routing = _routing([0, 1, 2, 3, 3], [0, 2, 1, 0, 2], [1.0, 0.5, 1.0, 0.25, 0.75], 4, 3)
    return bank(x) if isinstance(bank, (StackedMLP, DenseMLP)) else bank(x, routing)


@pytest.mark.parametrize("name", sorted(SMALL_BANKS))
def test_a_meta_built_bank_materialises_with_to_empty_and_reset_parameters_as_if_built_on_cpu(name):
    torch.manual_seed(0)
    cpu = SMALL_BANKS[name]()
    meta = SMALL_BANKS[name](device="meta")
    assert all(t.is_meta for t in [*meta.parameters(), *meta.buffers()])
    meta.to_empty(device="cpu")
    torch.manual_seed(0)
    for module in meta.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    for (key, a), b in zip(cpu.state_dict().items(), meta.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=key)
    x = torch.randn(4, 4)
    torch.testing.assert_close(_call(meta.eval(), x), _call(cpu.eval(), x))


@pytest.mark.parametrize("name", sorted(SMALL_BANKS))
def test_banks_hold_their_parameters_in_the_given_dtype(name):
    bank = SMALL_BANKS[name](dtype=torch.float64).eval()
    assert all(p.dtype == torch.float64 for p in bank.parameters())
    assert _call(bank, torch.randn(4, 4, dtype=torch.float64)).dtype == torch.float64


def test_moe_args_build_puts_experts_and_router_gate_in_the_dtype_and_keeps_router_counters_float32():
    moe = MoEArgs(num_experts=3, k=2, num_shared_experts=1).build(4, 8, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in moe.parameters())
    assert moe.router.expert_bias.dtype == moe.router.step_counts.dtype == torch.float32
    assert moe.train()(torch.randn(5, 4, dtype=torch.float64)).dtype == torch.float64


def test_upcycle_turns_every_other_dense_ffn_into_copies_and_the_model_computes_the_dense_model():
    from moezoo.backbones.transformer import MoETransformer
    from moezoo.moe import upcycle

    torch.manual_seed(0)
    model = MoETransformer(8, 4, 2, mlp_ratio=2.0, moe_every=0).eval()
    x = torch.randn(2, 5, 8)
    before = model(x)
    names = upcycle(model, MoEArgs(num_experts=4, k=2), every=2)
    assert names == ["blocks.1.ffn", "blocks.3.ffn"]
    assert isinstance(model.blocks[1].ffn, MoE) and isinstance(model.blocks[0].ffn, DenseMLP)
    assert model.blocks[1].ffn.experts.num_experts == 4
    torch.testing.assert_close(model(x), before)  # all experts copies, top-2 weights renormalised
    chosen = upcycle(model, MoEArgs(num_experts=2, k=1), select=lambda name, m: name == "blocks.0.ffn")
    assert chosen == ["blocks.0.ffn"] and isinstance(model.blocks[0].ffn, MoE)
    with pytest.raises(ValueError, match="every=0"):
        upcycle(model, MoEArgs(), every=0)
