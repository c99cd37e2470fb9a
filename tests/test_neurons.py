"""Neuron dynamics against independent references: the reference codes' loop (written here in
their U/U_post form) and stock snnTorch ``Leaky`` for the snnTorch preset."""
import math

import pytest
import snntorch as snn
import torch

from repro.models import LIF, NEURONS, create_neuron, plif
from repro.surrogates import create_surrogate
from reference import RectSpike


def reference_code_loop(inputs, w, threshold):
    """U[t] = sigmoid(w) * U_post[t-1] + I[t]; S = H(U - thr); U_post = U * (1 - S), not detached."""
    decay = torch.sigmoid(w)
    u_post = torch.zeros_like(inputs[0])
    spikes, mems = [], []
    for t in range(inputs.shape[0]):
        u = decay * u_post + inputs[t]
        s = RectSpike.apply(u - threshold, 1.0)
        u_post = u * (1 - s)
        spikes.append(s)
        mems.append(u)
    return torch.stack(spikes), torch.stack(mems)


def test_reference_preset_equals_reference_code_loop_including_gradients():
    torch.manual_seed(0)
    inputs = (torch.randn(6, 4, 50) * 0.8 + 0.4).requires_grad_()
    neuron = plif(decay=0.2, threshold=0.5, surrogate=create_surrogate("rectangular", width=1.0))
    assert neuron.fire_ge and not neuron.reset_detach
    out = neuron(inputs)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    grad_in, grad_w = inputs.grad.clone(), neuron.decay_raw.grad.clone()

    inputs.grad = None
    w = torch.tensor(-math.log(4.0), requires_grad=True)  # decay0 = 0.2
    ref_spikes, _ = reference_code_loop(inputs, w, 0.5)
    (ref_spikes * upstream).sum().backward()
    assert torch.equal(out, ref_spikes)
    assert out.sum() > 0 and (1 - out).sum() > 0
    torch.testing.assert_close(grad_in, inputs.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_w, w.grad, rtol=1e-5, atol=1e-6)
    assert grad_w.abs() > 0


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_snntorch_preset_equals_stock_leaky(reset):
    torch.manual_seed(1)
    steps = 8
    inputs = (torch.randn(steps, 3, 40) * 0.7 + 0.5).requires_grad_()
    ours = LIF(decay=0.6, threshold=1.0, surrogate=create_surrogate("atan", alpha=2.0), preset="snntorch", reset=reset)
    out = ours(inputs)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    grad_ours = inputs.grad.clone()

    inputs.grad = None
    stock = snn.Leaky(beta=0.6, threshold=1.0, spike_grad=create_surrogate("atan", alpha=2.0), reset_mechanism=reset)
    mem = torch.zeros_like(inputs[0])
    spikes, mems = [], []
    for t in range(steps):
        spk, mem = stock(inputs[t], mem)
        spikes.append(spk)
        mems.append(mem)
    stock_out = torch.stack(spikes)
    (stock_out * upstream).sum().backward()
    assert torch.equal(out, stock_out)
    assert 0 < out.mean() < 1
    torch.testing.assert_close(grad_ours, inputs.grad, rtol=1e-5, atol=1e-6)

    # single-step mode returns snnTorch's (spk, pre-reset mem) pair
    single = LIF(decay=0.6, surrogate="atan", preset="snntorch", reset=reset, step_mode="single")
    mem = None
    for t in range(steps):
        spk, mem = single(inputs[t].detach(), mem)
        assert torch.equal(spk, stock_out[t])
        torch.testing.assert_close(mem, mems[t].detach())


def test_snntorch_reset_delay_false_has_attached_reset():
    """Pin snnTorch 1.0: reset_delay=False resets in the same step with the live spike, so the
    reset carries gradient: equal to our snntorch preset with reset_detach=False."""
    torch.manual_seed(2)
    inputs = (torch.randn(6, 2, 30) * 0.7 + 0.6).requires_grad_()
    stock = snn.Leaky(beta=0.5, spike_grad=create_surrogate("triangle", width=1.0), reset_mechanism="zero",
                      reset_delay=False)
    mem = torch.zeros_like(inputs[0])
    spikes = []
    for t in range(6):
        spk, mem = stock(inputs[t], mem)
        spikes.append(spk)
    torch.stack(spikes).sum().backward()
    grad_stock = inputs.grad.clone()
    grads = {}
    for detach in (False, True):
        inputs.grad = None
        neuron = LIF(decay=0.5, surrogate=create_surrogate("triangle", width=1.0), preset="snntorch", reset_detach=detach)
        out = neuron(inputs)
        assert torch.equal(out, torch.stack(spikes))
        out.sum().backward()
        grads[detach] = inputs.grad.clone()
    torch.testing.assert_close(grads[False], grad_stock, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(grads[True], grad_stock)


def test_soft_reset_variants_and_decay_input_closed_form():
    """One neuron, constant input 0.8, threshold 1, decay 0.5: hand-computed trajectories."""
    x = torch.full((4, 1), 0.8)
    # snnTorch subtract: u = 0.5 u + 0.8 - s_prev: 0.8, 1.2 (spike), 0.6+0.8-1 = 0.4, 1.0 (no spike, strict)
    ours = LIF(decay=0.5, reset="subtract", surrogate="atan")
    assert ours(x).flatten().tolist() == [0.0, 1.0, 0.0, 0.0]
    # decayed subtract (spikingjelly soft reset), >=: u = 0.5 (u - s) + 0.8: 0.8, 1.2 s, 0.9, 1.25 s
    ours = LIF(decay=0.5, reset="subtract", preset="reference", surrogate="atan")
    assert ours(x).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    # decay_input: u = 0.5 u + 0.5 * 2.2 -> 1.1 (s), then zero reset: 1.1, 1.1 ...
    ours = LIF(decay=0.5, decay_input=True, surrogate="atan")
    assert ours(torch.full((3, 1), 2.2)).flatten().tolist() == [1.0, 1.0, 1.0]


def test_state_starts_at_zero_every_call_and_time_first():
    neuron = create_neuron("lif", surrogate="atan")
    x = torch.rand(5, 2, 3, 4, 4) * 2
    first = neuron(x)
    assert first.shape == x.shape
    assert torch.equal(neuron(x), first)  # no state carried between calls
    assert not any(n == "mem" for n, _ in neuron.named_buffers())


def test_fp32_state_under_bf16_input():
    neuron = LIF(surrogate="sigmoid")
    out = neuron(torch.randn(4, 8, 16, dtype=torch.bfloat16) + 1.0)
    assert out.dtype == torch.bfloat16


def test_neuron_registry_and_bad_options():
    assert {"lif", "plif"} <= set(NEURONS.names())
    with pytest.raises(ValueError, match="choose one of"):
        create_neuron("izhikevich")
    with pytest.raises(ValueError, match="decay must be in"):
        LIF(decay=1.5)
    with pytest.raises(ValueError, match="decay must be in \\(0, 1\\)"):
        plif(decay=1.0)
    with pytest.raises(ValueError, match="T=3"):
        LIF(num_steps=4)(torch.zeros(3, 2, 5))
    with pytest.raises(ValueError, match="preset"):
        LIF(preset="spikingjelly")


def test_plif_decay_is_learnable_parameter():
    neuron = create_neuron("plif", decay=0.2)
    assert isinstance(neuron.decay_raw, torch.nn.Parameter)
    assert neuron.decay.item() == pytest.approx(0.2)
    assert not isinstance(create_neuron("lif").decay_raw, torch.nn.Parameter)
