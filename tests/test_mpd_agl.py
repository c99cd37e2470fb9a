"""MPD-AGL: the width rule against closed forms, a plain-PyTorch tdBN + LIF loop with constant widths
(gradients reach BN and the decay only through the forward path), the normal CDF (section 8) and
stock snnTorch."""
import dataclasses
import math

import pytest
import snntorch as snn
import torch

from repro.checkpoint import load_checkpoint
from repro.config import Config
from repro.engine import train
from repro.models import TDBatchNorm, create_model, plif, spiking_layers
from repro.surrogates import create_surrogate
from reference import normal_cdf, RectSpike

MPD_NEURON = {"decay": 0.2, "threshold": 0.5}  # plif, preset reference; the model's BN scale alpha * V_th = 0.5




def neuron_behind_bn(channels: int, surrogate_options: dict | None = None, decay: float = 0.2, dims: int = 2):
    norm = TDBatchNorm(channels, scale=0.5, dims=dims)
    neuron = plif(decay=decay, threshold=0.5, surrogate=create_surrogate("mpd_agl", **(surrogate_options or {})))
    neuron.set_input_norm(norm)
    return norm, neuron


def widths(neuron, steps: int, x: torch.Tensor | None = None) -> list:
    x = torch.zeros(2, 4, 3, 3) if x is None else x
    return [neuron.surrogate.call_params(x, step=t, neuron=neuron)["width"] for t in range(steps)]


ARMS = {  # MPD-AGL's ablation arms: (surrogate options, neuron, kappa at t = 1, kappa at t >= 2) at initialisation
    "fixed": ({"width": "fixed"}, "plif", 1.0, 1.0),
    "lsg": ({"width": "lsg"}, "plif", math.sqrt(1.04), math.sqrt(1.04)),
    "gamma_only": ({"width": "gamma_only"}, "plif", 1.0, 1.0),
    "mpd": ({}, "plif", 1.0, math.sqrt(1.04)),
    "mpd_lif_mode": ({}, "lif", 1.0, math.sqrt(1.04)),
}


@pytest.mark.parametrize("arm", ARMS)
def test_widths_at_initialisation_in_resnet19(arm):
    options, neuron_name, first, later = ARMS[arm]
    neuron_options = dict(MPD_NEURON, preset="reference") if neuron_name == "lif" else MPD_NEURON
    model = create_model("resnet19", width=0.125, num_steps=3, bn_scale=0.5, neuron=neuron_name,
                         neuron_kwargs=neuron_options, surrogate="mpd_agl", surrogate_kwargs=options)
    layers = spiking_layers(model)
    assert len(layers) == 20
    for _, neuron in layers:
        assert neuron.input_norm.scale == 0.5 and neuron.threshold == 0.5 and neuron.fire_ge
        kappa = [float(k) for k in widths(neuron, 3)]
        assert kappa[0] == pytest.approx(first, rel=1e-6) and kappa[1:] == pytest.approx([later] * 2, rel=1e-6)
        if arm == "mpd":
            assert kappa[0] == 1.0  # exactly the standard width-1 rectangle at t = 1
    assert all(k.endswith("surrogate.guard_count") for k, _ in model.named_buffers() if "surrogate" in k)


def test_widths_follow_bn_weight_and_decay():
    norm, neuron = neuron_behind_bn(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.4, 0.6, 0.8, 1.0]))  # gbar = 0.7
        neuron.decay_raw.fill_(0.0)  # k = 0.5
    kappa = widths(neuron, 3)
    assert kappa[0].item() == pytest.approx(2 * 0.7 * 0.5, rel=1e-6)
    assert [k.item() for k in kappa[1:]] == pytest.approx([2 * math.sqrt(1.25) * 0.7 * 0.5] * 2, rel=1e-6)
    assert not kappa[1].requires_grad  # detached: read at forward time, no gradient

    neuron.surrogate = create_surrogate("mpd_agl", alpha=2.0)
    assert widths(neuron, 1)[0].item() == pytest.approx(2 * 2.0 * 0.7 * 0.5, rel=1e-6)
    neuron.surrogate = create_surrogate("mpd_agl", width="gamma_only")
    assert [k.item() for k in widths(neuron, 3)] == pytest.approx([0.7] * 3, rel=1e-6)
    neuron.surrogate = create_surrogate("mpd_agl", width="lsg")
    assert [k.item() for k in widths(neuron, 2)] == pytest.approx([math.sqrt(1.25)] * 2, rel=1e-6)
    neuron.surrogate = create_surrogate("mpd_agl", granularity="channel")
    per_channel = widths(neuron, 2)
    assert per_channel[0].shape == (4, 1, 1)
    torch.testing.assert_close(per_channel[0].flatten(), torch.tensor([0.4, 0.6, 0.8, 1.0]))
    torch.testing.assert_close(per_channel[1].flatten(), math.sqrt(1.25) * torch.tensor([0.4, 0.6, 0.8, 1.0]))
    assert widths(neuron, 1, torch.zeros(2, 4))[0].shape == (4,)  # FC neuron: [B, C]

    neuron.surrogate = create_surrogate("mpd_agl", exact_var=True)
    with torch.no_grad():
        neuron.decay_raw.fill_(math.log(0.8 / 0.2))  # k = 0.8
    factors = [k.item() / 0.7 for k in widths(neuron, 5)]
    expected = [math.sqrt((1 - 0.64 ** (t + 1)) / (1 - 0.64)) for t in range(5)]
    assert factors == pytest.approx(expected, rel=1e-5)
    assert factors[4] == pytest.approx(1.5746, abs=1e-4)  # vs sqrt(1 + k^2) = 1.2806 without exact_var


@pytest.mark.parametrize("options", [{}, {"exact_var": True}, {"width": "gamma_only"}, {"width": "lsg"},
                                     {"width": "fixed"}, {"granularity": "channel"}, {"gamma_guard": "none"}],
                         ids=lambda options: "-".join(f"{k}={v}" for k, v in options.items()) or "mpd")
def test_step_params_equal_the_calls_step_by_step(options):
    """The widths of all steps at once (the fused paths) are bitwise the per-step calls' (the reference loop), and
    the guard counts each call they stand for."""
    norm, neuron = neuron_behind_bn(4, options)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([-0.3, 0.0, 0.8, 1.1]))  # gbar = 0.4; a channel the guard changes
        neuron.decay_raw.fill_(0.7)
    x = torch.randn(5, 2, 4, 3, 3)
    batched = neuron.surrogate.step_params(x, [dict(mem=x[t], step=t, neuron=neuron) for t in range(5)], calls=2)
    counted = neuron.surrogate.guard_count.clone()
    neuron.surrogate.guard_count.zero_()
    for step, params in enumerate(batched):
        for _ in range(2):
            one = neuron.surrogate.call_params(x[step], step=step, neuron=neuron, mem=x[step])
        assert params.keys() == one.keys()
        for name, value in params.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(one[name])), (step, name)
    assert torch.equal(counted, neuron.surrogate.guard_count)
    assert counted.item() == (0 if options.get("gamma_guard") == "none" or options.get("width") in ("fixed", "lsg")
                              else 10 * (2 if options.get("granularity") == "channel" else 0))


def test_gamma_guard_counts_and_none_reproduces_the_code():
    norm, neuron = neuron_behind_bn(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([-0.2, -0.1, 0.1, 0.1]))  # gbar = -0.025
    assert widths(neuron, 1)[0].item() == pytest.approx(2 * 0.025 * 0.5, rel=1e-5)
    with torch.no_grad():
        norm.weight.zero_()
    assert widths(neuron, 2)[0].item() == pytest.approx(2 * 1e-3 * 0.5)
    assert neuron.surrogate.guard_count.item() == 3
    neuron.eval()
    widths(neuron, 1)
    assert neuron.surrogate.guard_count.item() == 3  # counted in training only
    assert "surrogate.guard_count" in neuron.state_dict()

    neuron.surrogate = create_surrogate("mpd_agl", gamma_guard="none")
    with torch.no_grad():
        norm.weight.fill_(-0.5)
    assert widths(neuron, 1)[0].item() == pytest.approx(-0.5)
    x = torch.linspace(-1, 1, 101, requires_grad=True)
    neuron.train()(x.view(1, 1, -1)).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # empty window: the gradient vanishes, as in the code
    for bad in ({"width": "wide"}, {"granularity": "pixel"}, {"gamma_guard": "clip"}, {"alpha": 0.0},
                {"exact_var": True, "width": "lsg"}, {"fixed_width": 0.0}):
        with pytest.raises(ValueError):
            create_surrogate("mpd_agl", **bad)


def test_derivative_values_and_area_one():
    norm, neuron = neuron_behind_bn(4)
    with torch.no_grad():
        norm.weight.fill_(0.7)
    x = torch.linspace(-2, 2, 2_000_001, dtype=torch.float64)
    for step, kappa in ((0, 0.7), (1, 0.7 * math.sqrt(1.04))):
        h = neuron.surrogate.derivative(x, step=step, neuron=neuron).double()
        torch.testing.assert_close(h, (x.abs() < kappa / 2).double() / kappa, rtol=1e-5, atol=1e-5)
        assert torch.trapezoid(h, x).item() == pytest.approx(1.0, abs=1e-4)


def test_bn_and_plif_equal_plain_loop_with_constant_widths():
    """Spikes and the gradients of input, BN gamma and beta and the decay equal a plain loop whose widths
    are Python numbers: gamma and the decay learn only through the forward path, kappa gets nothing."""
    torch.manual_seed(11)
    steps, channels = 4, 3
    norm, neuron = neuron_behind_bn(channels)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.7, 1.1, 0.9]))
        norm.bias.copy_(torch.tensor([0.1, 0.3, 0.2]))
    inputs = torch.randn(steps, 8, channels, 5, 5, requires_grad=True)
    current = norm(inputs.flatten(0, 1)).unflatten(0, (steps, -1))
    out = neuron(current)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    ours = [t.grad.clone() for t in (inputs, norm.weight, norm.bias, neuron.decay_raw)]

    gamma = torch.tensor([0.7, 1.1, 0.9], requires_grad=True)
    beta = torch.tensor([0.1, 0.3, 0.2], requires_grad=True)
    w = torch.tensor(-math.log(4.0), requires_grad=True)
    x = inputs.detach().clone().requires_grad_()
    folded = x.flatten(0, 1)
    mean, var = folded.mean((0, 2, 3), keepdim=True), folded.var((0, 2, 3), unbiased=False, keepdim=True)
    currents = (0.5 * gamma.view(1, -1, 1, 1) * (folded - mean) / torch.sqrt(var + 1e-5)
                + beta.view(1, -1, 1, 1)).unflatten(0, (steps, -1))
    gbar, k = gamma.detach().mean().item(), torch.sigmoid(w).item()
    tau, u_post, spikes = torch.sigmoid(w), torch.zeros_like(currents[0]), []
    for t in range(steps):
        u = tau * u_post + currents[t]
        kappa = 2 * gbar * 0.5 * (1.0 if t == 0 else math.sqrt(1 + k * k))
        spike = RectSpike.apply(u - 0.5, kappa)
        u_post = u * (1 - spike)
        spikes.append(spike)
    reference = torch.stack(spikes)
    (reference * upstream).sum().backward()
    assert torch.equal(out, reference) and 0 < out.mean() < 1
    for got, want in zip(ours, (x.grad, gamma.grad, beta.grad, w.grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert got.abs().sum() > 0


@pytest.mark.parametrize("surrogate_options", [{}, {"width": "fixed"}])
def test_gradient_interval_proportion_matches_normal_cdf(surrogate_options):
    """t = 1, U = I ~ N(0, sigma^2) with sigma = alpha gbar V_th: the proportion with gradient is
    Phi((V_th + kappa/2)/sigma) - Phi((V_th - kappa/2)/sigma), centred on V_th (section 8)."""
    torch.manual_seed(12)
    norm, neuron = neuron_behind_bn(4, surrogate_options, dims=1)
    with torch.no_grad():
        norm.weight.fill_(0.6)
    current = norm(torch.randn(50_000, 4)).detach().unsqueeze(0).requires_grad_()  # [T=1, B, C], U = I
    grad = torch.autograd.grad(neuron(current).sum(), current)[0]
    sigma = 1.0 * 0.6 * 0.5
    kappa = 1.0 if surrogate_options else 2 * 0.6 * 0.5
    analytic = normal_cdf((0.5 + kappa / 2) / sigma) - normal_cdf((0.5 - kappa / 2) / sigma)
    proportion = (grad != 0).float().mean().item()
    assert proportion == pytest.approx(analytic, abs=0.006)


def test_fallback_width_one_without_bn_or_context():
    torch.manual_seed(13)
    lone = plif(decay=0.2, threshold=0.5, surrogate=create_surrogate("mpd_agl"))  # no feeding BN
    assert widths(lone, 2) == [1.0, 1.0]
    single = plif(decay=0.2, threshold=0.5, surrogate="mpd_agl", step_mode="single")
    assert single.surrogate.call_params(torch.zeros(3), step=None, neuron=single)["width"] == 1.0
    with pytest.raises(ValueError, match="needs a neuron with `decay` and `threshold`"):
        create_surrogate("mpd_agl").call_params(torch.zeros(3), step=0, neuron=torch.nn.ReLU())
    # stock snnTorch Leaky passes only mem - thr: kappa = 1, dS/dI = 1[|mem - 0.5| < 0.5] at the first step
    x = torch.tensor([-0.01, 0.01, 0.5, 0.99, 1.01], requires_grad=True)
    leaky = snn.Leaky(beta=0.2, threshold=0.5, spike_grad=create_surrogate("mpd_agl"))
    spk, mem = leaky(x, torch.zeros(5))
    assert spk.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    spk.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))
    inputs = (torch.randn(5, 3, 20) * 0.5 + 0.3).requires_grad_()
    mem, spikes = torch.zeros_like(inputs[0]), []
    for t in range(5):
        spk, mem = leaky(inputs[t], mem)
        spikes.append(spk)
    torch.stack(spikes).sum().backward()
    assert torch.isfinite(inputs.grad).all() and inputs.grad.abs().sum() > 0


TINY = Config(model="resnet19", model_options={"width": 0.25, "bn_scale": 0.5}, num_steps=2, dataset="digits",
              dataset_options={"augment": False, "size": 16}, batch_size=16, eval_batch_size=120, epochs=3,
              limit_train_batches=40, lr=0.05, weight_decay=1e-4, seed=7, neuron="plif", neuron_options=MPD_NEURON,
              surrogate="mpd_agl", loss="ce")


@pytest.mark.slow
def test_engine_trains_mpd_agl_on_digits(tmp_path):
    summary = train(dataclasses.replace(TINY, output_dir=str(tmp_path)))
    print(f"MPD-AGL on digits, 3 x 40 steps: best {summary['best_test_accuracy']:.2f}%, "
          f"final {summary['test_accuracy']:.2f}%, firing rate {summary['firing_rate']:.4f}")
    assert summary["best_test_accuracy"] > 50.0  # chance is 10%
    model = create_model("resnet19", num_classes=10, num_steps=2, neuron="plif", neuron_kwargs=MPD_NEURON,
                         surrogate="mpd_agl", **TINY.model_options)
    model.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt")["model"])
    first_widths = [float(widths(neuron, 1)[0]) for _, neuron in spiking_layers(model)]
    assert all(k > 0 for k in first_widths) and max(abs(k - 1.0) for k in first_widths) > 1e-3  # gbar moved
