"""Diagnostics, energy and sharpness against hand-computed values on tiny networks."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repro.diagnostics import (FiringRateMonitor, WindowMonitor, collect_diagnostics, has_compact_support,
                               method_state)
from repro.energy import EnergyMeter, matmul_events
from repro.models import LIF, SpikingNeuron, TDBatchNorm, create_model, create_neuron
from repro.sharpness import (filter_normalized_direction, hessian_trace, model_landscape, model_sharpness,
                             top_hessian_eigenvalue)
from repro.surrogates import SURROGATES, create_surrogate
from reference import normal_cdf



class Replay(SpikingNeuron):
    """A 'neuron' that emits a fixed spike train [T, B, ...] whatever its input."""

    def __init__(self, spikes):
        super().__init__()
        self.register_buffer("spikes", spikes.float())

    def forward(self, x):
        return self.spikes.clone()


# ------------------------------------------------------------------------------------ firing rate
def test_firing_rate_per_step_on_hand_made_spike_train():
    spikes = torch.tensor([[[1, 0, 0, 0], [0, 0, 0, 0]],       # t=1: 1 event / 8 neurons
                           [[1, 1, 0, 0], [0, -1, 0, 0]],      # t=2: 3 (a signed spike counts |-1|)
                           [[2, 0, 0, 0], [1, 1, 1, 1]]])      # t=3: 6 (a double spike counts 2)
    model = nn.Sequential(Replay(spikes))
    with FiringRateMonitor(model, per_step=True) as monitor:
        model(torch.zeros(1))
        model(torch.zeros(1))  # two batches: rates are unchanged
    assert monitor.rates_per_step() == {"0": [1 / 8, 3 / 8, 6 / 8]}
    assert monitor.rates() == {"0": pytest.approx(10 / 24)}
    spike_sums, counts = monitor.totals()
    assert spike_sums.tolist() == [20.0] and counts.tolist() == [48.0]
    with FiringRateMonitor(model) as plain:  # the engine's use: no per-step accumulation
        model(torch.zeros(1))
    assert plain.rates() == {"0": pytest.approx(10 / 24)} and plain.rates_per_step() == {}


# ---------------------------------------------------------------------------------- window / hist
def gaussian_window_proportion(surrogate, threshold: float, sigma: float, neuron=None, **monitor_kwargs) -> float:
    """Measured proportion for u ~ N(0, sigma^2) at the first step of a LIF (u[0] = input)."""
    neuron = neuron or LIF(threshold=threshold, surrogate=surrogate, num_steps=1)
    model = nn.Sequential(neuron)
    generator = torch.Generator().manual_seed(0)
    currents = sigma * torch.randn(1, 200_000, generator=generator)
    with WindowMonitor(model, **monitor_kwargs) as monitor, torch.no_grad():
        model(currents)
    return monitor.occupancy()["0"]["proportion"]


@pytest.mark.parametrize("name, kwargs, half_width", [
    ("rectangular", {"width": 1.0}, 0.5),                                            # |x| < k/2
    ("triangle", {"width": 0.6}, 0.6),                                               # support |x| < width
    ("atan", {"alpha": 2.0}, 2 / (math.pi * 2.0)),                                   # h >= peak/2
    ("sigmoid", {"alpha": 4.0}, math.log((1 + math.sqrt(0.5)) / (1 - math.sqrt(0.5))) / 4.0),
])
def test_window_occupancy_of_gaussian_membranes_matches_normal_cdf(name, kwargs, half_width):
    threshold, sigma = 1.0, 0.8
    measured = gaussian_window_proportion(create_surrogate(name, **kwargs), threshold, sigma)
    expected = normal_cdf((threshold + half_width) / sigma) - normal_cdf((threshold - half_width) / sigma)
    assert measured == pytest.approx(expected, abs=4e-3)  # binomial std ~ 1e-3


def test_window_rule_options_and_compact_support():
    assert has_compact_support(create_surrogate("rectangular")) and not has_compact_support(create_surrogate("atan"))
    # forcing the support rule on a smooth shape: h > 0 everywhere, so every neuron is inside
    assert gaussian_window_proportion(create_surrogate("atan"), 1.0, 0.8, rule="support") == 1.0
    # the fraction rule with fraction 0.8 on atan(alpha=2): 1/(1+(pi x)^2) >= 0.8 <=> |x| <= 0.5/pi
    expected = normal_cdf((1 + 0.5 / math.pi) / 0.8) - normal_cdf((1 - 0.5 / math.pi) / 0.8)
    measured = gaussian_window_proportion(create_surrogate("atan"), 1.0, 0.8, rule="fraction", fraction=0.8)
    assert measured == pytest.approx(expected, abs=4e-3)
    with pytest.raises(ValueError, match="window_rule"):
        WindowMonitor(nn.Sequential(), rule="nope")
    with pytest.raises(ValueError, match="window_fraction"):
        WindowMonitor(nn.Sequential(), fraction=0.0)


@pytest.mark.skipif("mpd_agl" not in SURROGATES.names(), reason="MPD-AGL surrogate not available")
def test_window_occupancy_uses_the_methods_own_width_mpd_agl():
    """MPD-AGL (docs/methods.md section "MPD-AGL"): at t=1 with U ~ N(0, sigma^2), sigma = alpha gbar V_th, the proportion
    inside the window kappa_1 = 2 alpha gbar V_th centred on V_th is Phi((V+k/2)/s) - Phi((V-k/2)/s)."""
    v_th, gamma = 0.5, 0.8
    neuron = create_neuron("plif", surrogate="mpd_agl", threshold=v_th, decay=0.2, num_steps=1)
    norm = TDBatchNorm(4)
    norm.weight.data.fill_(gamma)
    neuron.set_input_norm(norm)
    sigma, kappa = gamma * v_th, 2 * gamma * v_th
    measured = gaussian_window_proportion(None, v_th, sigma, neuron=neuron)
    expected = normal_cdf((v_th + kappa / 2) / sigma) - normal_cdf((v_th - kappa / 2) / sigma)
    assert measured == pytest.approx(expected, abs=4e-3)


def test_histograms_per_step_match_a_plain_lif_reference():
    threshold, width, decay, low, high, bins = 1.0, 0.6, 0.5, -2.0, 3.0, 25
    neuron = LIF(threshold=threshold, decay=decay, surrogate=create_surrogate("rectangular", width=width), num_steps=2)
    model = nn.Sequential(neuron)
    currents = 1.5 * torch.randn(2, 3, 500, generator=torch.Generator().manual_seed(1))
    with WindowMonitor(model, histograms=True, bins=bins, value_range=(low, high)) as monitor, torch.no_grad():
        model(currents)
    # plain reference: u1 = I1; s1 = u1 > theta; u2 = lambda u1 (1 - s1) + I2 (zero reset)
    u1 = currents[0]
    u2 = decay * u1 * (u1 <= threshold).float() + currents[1]
    data = monitor.histogram_data()["layers"]["0"]
    for t, u in enumerate((u1, u2)):
        assert data["all"][t] == torch.histc(u, bins, low, high).tolist()
        inside = u[(u - threshold).abs() < width / 2]
        assert data["window"][t] == torch.histc(inside, bins, low, high).tolist()
        assert data["below"][t] == (u < low).sum().item() and data["above"][t] == (u > high).sum().item()
        assert data["threshold"][t] == pytest.approx(threshold)
        proportion = ((u - threshold).abs() < width / 2).float().mean().item()
        assert monitor.occupancy()["0"]["per_step"][t] == pytest.approx(proportion)
    assert "record_potentials" not in neuron.__dict__ and not hasattr(neuron, "potentials")  # restored
    assert neuron.surrogate.observers == []


# ------------------------------------------------------------------------------------------ energy
class EncoderSpikesClassifier(nn.Module):
    """conv3x3 (1 -> 2, 4x4, the analog encoder) -> fixed spike pattern [T, B, 2, 4, 4] -> Linear(32 -> 3)."""

    def __init__(self, spikes):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.neuron = Replay(spikes)
        self.fc = nn.Linear(32, 3, bias=False)

    def forward(self, x):
        steps = self.neuron.spikes.shape[0]
        x = x.unsqueeze(0).expand(steps, *x.shape)
        currents = self.conv(x.flatten(0, 1)).unflatten(0, (steps, -1))
        return self.fc(self.neuron(currents).flatten(2))


def test_sops_and_energy_of_a_layer_with_a_known_spike_pattern():
    spikes = torch.zeros(2, 1, 2, 4, 4)  # T = 2, B = 1: 64 neuron-steps
    spikes.view(-1)[[0, 5, 9, 17, 30, 41]] = 1.0
    spikes.view(-1)[50] = -1.0  # signed spike: one event
    spikes.view(-1)[63] = 2.0   # double spike: two events  -> sum |S| = 9, fr = 9/64
    model = EncoderSpikesClassifier(spikes)
    with EnergyMeter(model) as meter:
        model(torch.randn(1, 1, 4, 4))
        model(torch.randn(1, 1, 4, 4))  # 2 images in all
    report = meter.report(images=2, num_steps=2)
    conv, fc = report["layers"]
    # conv: 4*4 positions x 2 out x 1 in x 9 = 288 MACs per image and step, counted once
    assert conv["role"] == "MAC" and conv["flops_per_step"] == 288 and conv["macs"] == 288 and conv["input"] == "real"
    # fc: FLOPs = 3 x 32 = 96 per step; SOP = fr x T x FLOPs = 9/64 x 2 x 96 = 27 per image
    assert fc["flops_per_step"] == 96 and fc["input_rate"] == pytest.approx(9 / 64) and fc["input"] == "integer"
    assert fc["sops"] == pytest.approx(27.0) and report["total_sops"] == pytest.approx(27.0)
    assert report["snn_energy_mj"] == pytest.approx((288 * 4.6 + 27 * 0.9) * 1e-9)
    assert report["ann_energy_mj"] == pytest.approx((288 + 96) * 4.6 * 1e-9)
    assert meter.report(2, 2, enc_times_T=True)["snn_energy_mj"] == pytest.approx((576 * 4.6 + 27 * 0.9) * 1e-9)
    both_mac = meter.report(2, 2, encoder_layers=["conv", "fc"])
    assert both_mac["snn_energy_mj"] == pytest.approx((288 + 96) * 4.6 * 1e-9)
    with pytest.raises(ValueError, match="were not called"):
        meter.report(2, 2, encoder_layers=["nope"])


class LinearThenMatmul(nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.a, self.b = a, b

    def forward(self, x):
        self.fc(x)
        return self.a @ self.b


def test_matmul_events_are_exact_products_of_nonzero_values():
    generator = torch.Generator().manual_seed(0)
    a = (torch.rand(2, 3, 4, generator=generator) < 0.4).float()
    b = torch.randint(-1, 3, (2, 4, 5), generator=generator).float()
    brute_force = (a.abs().unsqueeze(-1) * b.abs().unsqueeze(-3)).sum()
    assert matmul_events(a, b).item() == brute_force.item()
    model = LinearThenMatmul(a, b)
    with EnergyMeter(model) as meter:
        model(torch.randn(1, 4))
    row = {r["name"]: r for r in meter.report(images=1, num_steps=1)["layers"]}["matmul#0"]
    assert row["flops_per_step"] == 2 * 3 * 5 * 4 and row["sops"] == brute_force.item() and row["input"] == "integer"
    with EnergyMeter(model, count_matmul=False) as meter:
        model(torch.randn(1, 4))
    assert "matmul#0" not in meter.layers


# --------------------------------------------------------------------------------------- sharpness
def quadratic(matrix):
    x = nn.Parameter(torch.randn(matrix.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    return x, [lambda: 0.5 * x @ matrix @ x]


def test_top_hessian_eigenvalue_of_a_quadratic_loss():
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    matrix = q @ torch.diag(torch.tensor([5.0, 2.0, 1.0, -0.5, 0.1], dtype=torch.float64)) @ q.T
    x, closures = quadratic(matrix)
    result = top_hessian_eigenvalue(closures, [x], iterations=100, tolerance=1e-10)
    assert result["eigenvalue"] == pytest.approx(5.0, rel=1e-6) and result["dominant"] == result["eigenvalue"]
    # the largest-magnitude eigenvalue is negative: the shifted run still finds the largest one
    x, closures = quadratic(torch.diag(torch.tensor([1.0, -4.0, 0.5], dtype=torch.float64)))
    result = top_hessian_eigenvalue(closures, [x], iterations=200, tolerance=1e-12)
    assert result["dominant"] == pytest.approx(-4.0, rel=1e-6) and result["eigenvalue"] == pytest.approx(1.0, rel=1e-4)
    # Hutchinson with Rademacher vectors is exact for a diagonal Hessian
    assert hessian_trace(closures, [x], samples=3)["trace"] == pytest.approx(-2.5)


class TinySNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc1 = nn.Linear(3, 4)
        self.neuron = LIF(surrogate=create_surrogate("atan"), num_steps=2, threshold=0.5)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.neuron(self.fc1(x.unsqueeze(0).expand(2, *x.shape))))


def test_sharpness_through_spiking_layers_matches_the_full_hessian():
    """Double backward through the surrogate: the power iteration agrees with eigvalsh of the Hessian
    computed independently by torch.autograd.functional.hessian."""
    model = TinySNN()
    generator = torch.Generator().manual_seed(4)
    batches = [(torch.randn(16, 3, generator=generator), torch.randint(0, 2, (16,), generator=generator))]
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss_of(vector):
        tensors = dict(zip(names, (t.view(s) for t, s in zip(vector.split([s.numel() for s in shapes]), shapes))))
        logits = torch.func.functional_call(model, tensors, (batches[0][0],))
        return F.cross_entropy(logits.mean(0), batches[0][1])

    hessian = torch.autograd.functional.hessian(loss_of, flat)
    expected = torch.linalg.eigvalsh(0.5 * (hessian + hessian.T).double()).max().item()
    result = model_sharpness(model, batches, iterations=300, tolerance=1e-7)
    assert expected > 0 and result["eigenvalue"] == pytest.approx(expected, rel=2e-2)
    assert result["parameters"] == flat.numel()


def test_loss_landscape_along_filter_normalised_directions():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    loss_fn = lambda logits, target: F.cross_entropy(logits, target)  # noqa: E731
    weights = [p.detach().clone() for p in model.parameters()]
    direction = filter_normalized_direction(list(model.parameters()), torch.Generator().manual_seed(3))
    assert torch.allclose(direction[0].norm(dim=1), weights[0].norm(dim=1))  # per filter (row)
    assert torch.equal(direction[1], torch.zeros(3))                          # bias: not perturbed
    scaled = filter_normalized_direction(list(model.parameters()), torch.Generator().manual_seed(3), "filter")
    assert scaled[1].norm().item() == pytest.approx(weights[1].norm().item())

    one = model_landscape(model, [(x, y)], loss_fn, dims=1, points=5, span=1.0, seed=3)
    assert one["coordinates"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    for alpha, loss in zip(one["coordinates"], one["loss"]):
        manual = F.cross_entropy(F.linear(x, weights[0] + alpha * direction[0], weights[1]), y)
        assert loss == pytest.approx(manual.item(), rel=1e-5)
    two = model_landscape(model, [(x, y)], loss_fn, dims=2, points=3, span=0.5, seed=3)
    generator = torch.Generator().manual_seed(3)
    d1, d2 = (filter_normalized_direction(list(model.parameters()), generator) for _ in range(2))
    manual = F.cross_entropy(F.linear(x, weights[0] - 0.5 * d1[0] + 0.5 * d2[0], weights[1]), y)
    assert len(two["loss"]) == 3 and two["loss"][2][0] == pytest.approx(manual.item(), rel=1e-5)  # row = axis 2
    for p, w in zip(model.parameters(), weights):
        assert torch.equal(p.detach(), w)  # restored
    with pytest.raises(ValueError, match="dims"):
        model_landscape(model, [(x, y)], loss_fn, dims=3)


# ---------------------------------------------------------------------------------- collect / state
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_collect_diagnostics_is_json_and_leaves_no_trace(mode):
    neuron, surrogate = ("adaptive_threshold", "tgo") if "tgo" in SURROGATES.names() else ("lif", "rectangular")
    model = create_model("resnet19", num_classes=10, num_steps=2, width=1 / 16, neuron=neuron, surrogate=surrogate)
    model.train()
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 16, 16, generator=generator), torch.randint(0, 10, (4,))) for _ in range(2)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = collect_diagnostics(model, batches, mode=mode, histogram_bins=20)
    json.dumps(result)
    assert model.training and result["mode"] == mode and result["images"] == 8 and result["num_steps"] == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN statistics and running thresholds frozen
    layers = [n for n, m in model.named_modules() if isinstance(m, SpikingNeuron)]
    assert list(result["firing_rate"]) == layers and len(result["firing_rate_per_step"][layers[0]]) == 2
    assert all(0.0 <= w["proportion"] <= 1.0 for w in result["window"].values())
    assert result["energy"]["encoder_layers"] == ["stem.0"] and result["energy"]["snn_energy_mj"] > 0
    assert set(result["histograms"]["layers"]) == set(layers)
    state = method_state(model)
    assert f"{layers[0]}.decay" in state and result["method_state"] == state
    if neuron == "adaptive_threshold":
        assert state[f"{layers[0]}.running_thr"] == [1.0, 1.0]
        assert len(result["surrogate_parameters"][layers[0]]["width"]) == 2  # TGO's per-step width
    assert all(not m.observers for m in model.modules() if hasattr(m, "observers"))
    with pytest.raises(ValueError, match="unknown diagnostics measure"):
        collect_diagnostics(model, batches, measures=("firing_rate", "nope"))
    with pytest.raises(ValueError, match="mode"):
        collect_diagnostics(model, batches, mode="test")
