"""Spikformer: the published layout and parameter count, the SSA closed form (no softmax), the 0.5
attention threshold, spikingjelly's LIF as default neuron, shapes with several neurons/surrogates, errors."""
import dataclasses

import pytest
import torch

from repro.models import LIF, MODELS, TDBatchNorm, create_model, spiking_layers
from repro.models.spikformer import SpikingSelfAttention
from repro.surrogates.classic import Sigmoid

SMALL = dict(dim=64, depth=1, heads=4, num_steps=2)


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_spikformer_4_384_cifar10_parameter_count_and_layout():
    model = create_model("spikformer", num_classes=10)
    # reference: 9.32M (Spikformer paper, CIFAR-10); the reference code's unused LayerNorms add 6,144 more
    assert count(model) == 9_324_730
    assert len(model.blocks) == 4 and len(spiking_layers(model)) == 5 + 4 * 7
    convs = [m.out_channels for m in model.patch_splitting.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [48, 96, 192, 384, 384]
    pools = [not isinstance(p, torch.nn.Identity) for p in model.patch_splitting.pools]
    assert pools == [False, False, True, True]
    attention = model.blocks[0].attention
    assert attention.heads == 12 and attention.attn_scale == 0.125 and attention.q.linear_bn.layers[0].bias is not None


def test_dvs_preset_is_2_256_pooling_after_every_stage():
    model = create_model("spikformer", preset="dvs", in_channels=2, num_classes=10, num_steps=16)
    assert count(model) == 2_566_666  # reference: 2.57M (Spikformer paper, CIFAR10-DVS)
    assert len(model.blocks) == 2 and model.blocks[0].attention.heads == 16
    assert all(not isinstance(p, torch.nn.Identity) for p in model.patch_splitting.pools)
    assert model.blocks[0].attention.q.linear_bn.layers[0].bias is None
    small = create_model("spikformer", preset="dvs", in_channels=2, dim=32, heads=2, num_steps=2)
    tokens = small.patch_splitting(torch.randn(2, 1, 2, 128, 128))
    assert tokens.shape == (2, 1, 64, 32)  # 128 / 2**4 = 8 -> 64 tokens


@pytest.mark.parametrize("neuron,surrogate", [("lif", "sigmoid"), ("plif", "atan"), ("lif", "triangle")])
def test_forward_backward_shapes(neuron, surrogate):
    model = create_model("spikformer", num_classes=7, neuron=neuron, surrogate=surrogate, **SMALL)
    static = model(torch.randn(3, 3, 32, 32))
    frames = model(torch.randn(2, 3, 3, 32, 32))
    assert static.shape == frames.shape == (2, 3, 7)
    frames.mean(0).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_default_neuron_is_spikingjelly_lif_with_sigmoid_4():
    model = create_model("spikformer", **dict(SMALL, num_steps=5))
    neuron = model.patch_splitting.neurons[0]
    assert isinstance(neuron.surrogate, Sigmoid) and neuron.surrogate.params == {"alpha": 4.0}
    # spikingjelly LIFNode(tau=2, v_reset=0, detach_reset): H = V + (X - V) / 2, fire on H >= 1, V = H (1 - S)
    x = torch.tensor([2.0, 2.0, 0.6, 2.0, 1.0]).view(5, 1)
    v, expected = 0.0, []
    for xt in x[:, 0].tolist():
        h = v + (xt - v) / 2
        expected.append(float(h >= 1.0))
        v = h * (1 - expected[-1])
    assert neuron(x)[:, 0].tolist() == expected == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_attention_neuron_threshold_is_half_and_overrides_the_threshold_option():
    model = create_model("spikformer", neuron_kwargs={"threshold": 0.8}, **SMALL)
    attention = model.blocks[0].attention
    others = [m for _, m in spiking_layers(model) if m is not attention.attn_neuron]
    assert attention.attn_neuron.threshold == 0.5 and {m.threshold for m in others} == {0.8}
    drive = torch.full((2, 1, 4), 1.2)  # decay_input: u[0] = 0.6, between 0.5 and 0.8
    assert attention.attn_neuron(drive)[0].eq(1).all() and attention.q.neuron(drive)[0].eq(0).all()
    plif = create_model("spikformer", neuron="plif", attn_threshold=0.25, **SMALL).blocks[0].attention
    assert plif.attn_neuron.threshold == 0.25 and plif.q.neuron.threshold == 1.0
    # a neuron whose threshold option has another name (circulate_firing: theta)
    with pytest.raises(ValueError, match="unknown option.*'threshold'.*attn_threshold_option"):
        create_model("spikformer", neuron="circulate_firing", **SMALL)
    cf = create_model("spikformer", neuron="circulate_firing", attn_threshold_option="theta", **SMALL)
    assert cf.blocks[0].attention.attn_neuron.threshold == 0.5 and cf.blocks[0].attention.q.neuron.threshold == 1.0
    assert cf(torch.randn(1, 3, 32, 32)).shape == (2, 1, 10)


def test_attention_on_hand_made_spikes_is_q_kt_v_times_0125():
    ssa = SpikingSelfAttention(2, 1, LIF, LIF, qkv_bias=False, attn_scale=0.125)
    q = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    k = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Q K^T = [[1, 0], [2, 1]]; (Q K^T) V = [[1, 0], [2, 1]]; no softmax, times 1/8
    expected = torch.tensor([[0.125, 0.0], [0.25, 0.125]])
    assert torch.equal(ssa.attention(*(t.view(1, 1, 2, 2) for t in (q, k, v)))[0, 0], expected)


def test_attention_inside_the_model_is_the_closed_form_per_head():
    torch.manual_seed(0)
    model = create_model("spikformer", **SMALL)
    attention, seen = model.blocks[0].attention, {}
    hooks = [getattr(attention, n).neuron.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
             for n in "qkv"]
    hooks.append(attention.attn_neuron.register_forward_hook(lambda m, i, o: seen.__setitem__("a", i[0])))
    model(torch.randn(2, 3, 32, 32) * 4)
    for hook in hooks:
        hook.remove()
    q, k, v = seen["q"], seen["k"], seen["v"]  # [T, B, N, D] spikes, 4 heads of 16
    assert q.sum() > 0 and k.sum() > 0 and v.sum() > 0
    expected = torch.zeros_like(q)
    for h in range(4):
        cols = slice(16 * h, 16 * (h + 1))
        expected[..., cols] = torch.einsum("tbnd,tbmd,tbme->tbne", q[..., cols], k[..., cols], v[..., cols]) * 0.125
    assert seen["a"].abs().sum() > 0 and torch.allclose(seen["a"], expected)


def test_neurons_are_linked_to_their_bn():
    model = create_model("spikformer", **SMALL)
    attention = model.blocks[0].attention
    for name, neuron in spiking_layers(model):
        if neuron is attention.attn_neuron:
            assert neuron.input_norm is None
        else:
            assert isinstance(neuron.input_norm, TDBatchNorm), name
    assert attention.q.neuron.input_norm is attention.q.linear_bn.layers[1]


def test_token_bn_statistics_span_time_batch_and_tokens():
    model = create_model("spikformer", **SMALL).train()
    linear_bn = model.blocks[0].attention.q.linear_bn
    x = torch.randn(2, 3, 5, 64)
    y = linear_bn(x)
    z = linear_bn.layers[0](x).reshape(-1, 64)
    reference = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)
    assert y.shape == (2, 3, 5, 64) and torch.allclose(y.reshape(-1, 64), reference, atol=1e-5)


def test_clear_errors():
    model = create_model("spikformer", **SMALL)
    with pytest.raises(ValueError, match=r"expected input \[T, B, C, H, W\]"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="T=2"):
        model(torch.randn(3, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="choose one of: .*spikformer"):
        create_model("spikformer9000")
    assert {"spikformer", "spiking_unet", "spiking_fpn"} <= set(MODELS.names())
    with pytest.raises(ValueError, match="choose one of: .*plif"):
        create_model("spikformer", neuron="izhikevich")
    with pytest.raises(ValueError, match="choose one of: .*sigmoid"):
        create_model("spikformer", surrogate="erf")
    with pytest.raises(ValueError, match="preset 'imagenet'; choose one of: cifar, dvs"):
        create_model("spikformer", preset="imagenet")
    with pytest.raises(ValueError, match="divisible by heads"):
        create_model("spikformer", dim=64, heads=5)
    with pytest.raises(ValueError, match="pool_stages"):
        create_model("spikformer", pool_stages=(4,))


@pytest.mark.slow
def test_short_training_run_learns(tmp_path):
    from tests.test_engine import TINY
    from repro.engine import train

    config = dataclasses.replace(TINY, model="spikformer", model_options={"dim": 64, "depth": 1, "heads": 4},
                                 surrogate="sigmoid", optimizer="adamw", lr=5e-3, weight_decay=0.06, epochs=5,
                                 output_dir=str(tmp_path))
    summary = train(config)
    assert summary["best_test_accuracy"] > 50.0  # chance is 10%; observed 84.7% (seed 7, 16 x 16 images)
    assert len(summary["firing_rate_per_layer"]) == 5 + 7
