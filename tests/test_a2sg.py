"""A2SG: closed-form asymmetric shapes, the SGV/TGC window controller against plain-PyTorch
references on hand-made gradients, memstat, checkpoints, freezing, multi-process averaging and a
short training run through the engine."""
import math
import pickle

import pytest
import snntorch as snn
import torch
import torch.nn.functional as F

from kernel_launches import OperationCounter
from reference import run_in_gloo_processes
from repro.checkpoint import load_checkpoint
from repro.config import Config, parse_args
from repro.engine import train
from repro.models import create_neuron
from repro.surrogates import A2SG, create_surrogate
from repro.surrogates.a2sg import frozen_controllers

A_VALUES = (0.0, 0.25, 0.5, 0.9)


def closed_form(shape, x, w, a):
    """Independent piecewise formulas of the reconstructed shapes (docs/methods.md, "A2SG"; x a float64 grid)."""
    w_right, w_left = w * (1 + a), w * (1 - a)
    pos = x >= 0
    if shape == "asym_triangle":
        h = torch.zeros_like(x)
        h[pos] = torch.clamp(1 - x[pos] / w_right, min=0) / w
        h[~pos] = torch.clamp(1 + x[~pos] / w_left, min=0) / w
        return h
    if shape == "asym_rect":
        return ((x >= -w_left / 2) & (x <= w_right / 2)).double() / w
    if shape == "asym_sigmoid":
        c = torch.where(pos, torch.full_like(x, w_right / 4), torch.full_like(x, w_left / 4))
        return 4 * torch.exp(-x / c) / (1 + torch.exp(-x / c)) ** 2 / w
    delta = a * w / 2
    return torch.clamp(1 - (x - delta).abs() / w, min=0) / w


def fixed(shape="asym_triangle", asym=0.5, w0=0.5, **kw):
    return create_surrogate("a2sg_reconstructed", shape=shape, asym=asym, w0=w0, adapt="none", **kw)


@pytest.mark.parametrize("a", A_VALUES)
@pytest.mark.parametrize("shape", ["asym_triangle", "asym_rect", "asym_sigmoid", "shifted"])
def test_shape_closed_form_area_and_asymmetry(shape, a):
    w = 0.8
    sg = fixed(shape, a, w0=w, w_max=2.0)
    x = torch.linspace(-6, 6, 240_001, dtype=torch.float64)
    h = sg.derivative(x, step=0).double()  # adapt=none: the window of every step is w0
    inside = (x.abs() > 1e-6) & ((x - (w * (1 + a) / 2 if shape == "asym_rect" else 0)).abs() > 1e-4) \
        & ((x + (w * (1 - a) / 2 if shape == "asym_rect" else 0)).abs() > 1e-4)
    torch.testing.assert_close(h[inside], closed_form(shape, x, w, a)[inside], rtol=1e-5, atol=1e-6)
    assert torch.trapezoid(h, x).item() == pytest.approx(1.0, abs=2e-4)  # area 1 for every a
    d = torch.linspace(1e-3, 5, 2000, dtype=torch.float64)
    above, below = sg.derivative(d).double(), sg.derivative(-d).double()
    assert (above >= below - 1e-7).all()  # higher u, larger gradient
    if a > 0:
        if shape == "asym_rect":  # equal on the common support, strict on (wL/2, wR/2]
            support = (d > w * (1 - a) / 2 + 1e-3) & (d < w * (1 + a) / 2 - 1e-3)
        else:  # strict wherever the lower side is inside its support
            support = below > 1e-6
        assert support.any() and (above[support] > below[support]).all()
    else:
        torch.testing.assert_close(above, below)
    zero = torch.zeros(1, dtype=torch.float64)
    if shape in ("asym_triangle", "asym_sigmoid", "asym_rect"):
        assert sg.derivative(zero).item() == pytest.approx(1 / w)  # peak 1/w at threshold
        assert h.max().item() == pytest.approx(1 / w, rel=1e-4)
    else:  # shifted: peak 1/w at delta = a w/2, support [delta - w, delta + w]
        delta = torch.tensor([a * w / 2], dtype=torch.float64)
        assert sg.derivative(delta).item() == pytest.approx(1 / w)
        ends = torch.tensor([a * w / 2 - w - 1e-6, a * w / 2 + w + 1e-6], dtype=torch.float64)
        assert sg.derivative(ends).abs().max().item() < 1e-5
    if shape == "asym_triangle":  # support ends at -wL and wR
        ends = torch.tensor([-w * (1 - a) - 1e-6, w * (1 + a) + 1e-6, -w * (1 - a) + 1e-3, w * (1 + a) - 1e-3],
                            dtype=torch.float64)
        values = sg.derivative(ends)
        assert values[:2].abs().max() < 1e-5 and (values[2:] > 0).all()
    if shape == "asym_rect":
        ends = torch.tensor([-w * (1 - a) / 2 - 1e-6, w * (1 + a) / 2 + 1e-6, -w * (1 - a) / 2 + 1e-6,
                             w * (1 + a) / 2 - 1e-6], dtype=torch.float64)
        assert sg.derivative(ends).tolist() == pytest.approx([0, 0, 1 / w, 1 / w])


def test_backward_through_stock_snntorch_leaky_uses_w0_and_is_closed_form():
    sg = create_surrogate("a2sg_reconstructed")  # adaptive, but snn.Leaky passes no step: fixed w0 = 0.5, a = 0.5
    lif = snn.Leaky(beta=0.5, threshold=1.0, spike_grad=sg, reset_mechanism="zero")
    current = torch.linspace(-0.5, 2.5, 301, requires_grad=True)
    mem0 = torch.full((301,), 0.4)  # below threshold: no reset
    spk, mem = lif(current, mem0)
    upstream = torch.rand_like(spk)
    (spk * upstream).sum().backward()
    assert torch.equal(spk, (mem > 1.0).float())
    x = (0.5 * mem0 + current.detach() - 1.0).double()
    torch.testing.assert_close(current.grad.double(), upstream.double() * closed_form("asym_triangle", x, 0.5, 0.5),
                               rtol=1e-5, atol=1e-6)
    assert len(sg.w_t) == 0 and sg._observation is None  # no statistics without a timestep


def test_symmetric_fixed_arm_equals_classic_triangle_and_double_backward_works():
    x = torch.linspace(-1, 1, 201, requires_grad=True)
    ours = torch.autograd.grad(fixed(asym=0.0)(x).sum(), x)[0]
    classic = torch.autograd.grad(create_surrogate("triangle", width=0.5)(x).sum(), x)[0]
    torch.testing.assert_close(ours, classic)
    # Hessian-vector products: d/dx of h(x) is the triangle's slope, -1/(w wR) above and 1/(w wL) below
    sg = fixed(asym=0.5, w0=0.5)
    h = torch.autograd.grad(sg(x, step=0).sum(), x, create_graph=True)[0]
    (slope,) = torch.autograd.grad(h.sum(), x)
    expected = torch.where(x.detach() >= 0, torch.full_like(x, -1 / (0.5 * 0.75)), torch.full_like(x, 1 / (0.5 * 0.25)))
    mask = ((x > 0.01) & (x < 0.74)) | ((x < -0.01) & (x > -0.24))
    torch.testing.assert_close(slope[mask], expected[mask])
    assert (slope[(x > 0.76) | (x < -0.26)] == 0).all()


def test_registered_and_bad_options_say_what_to_change():
    sg = create_surrogate("a2sg_reconstructed")
    assert isinstance(sg, A2SG) and (sg.shape_name, sg.asym, sg.adapt, sg.granularity) == \
        ("asym_triangle", 0.5, "sgv_tgc", "layer_time")
    assert (sg.w0, sg.w_min, sg.w_max, sg.eta_w, sg.update_every, sg.calib_epochs) == (0.5, 0.2, 2.0, 0.01, 10, 1)
    for kwargs, message in [({"asym": 0.95}, "asym must be in \\[0, 0.9\\]"),
                            ({"shape": "hat"}, "shape must be one of"),
                            ({"w0": 3.0}, "w_min <= w0 <= w_max"), ({"adapt": "learned"}, "adapt must be one of"),
                            ({"granularity": "neuron"}, "granularity must be one of"),
                            ({"update_every": 0}, "update_every"), ({"ema_momentum": 0.0}, "ema_momentum")]:
        with pytest.raises(ValueError, match=message):
            create_surrogate("a2sg_reconstructed", **kwargs)
    with pytest.raises(ValueError, match="valid options: .*calib_epochs"):
        create_surrogate("a2sg_reconstructed", beta=0.5)
    arm = parse_args(Config(), ["--surrogate", "a2sg", "--surrogate.adapt", "none", "--surrogate.asym", "0"])
    assert create_surrogate(arm.surrogate, **arm.surrogate_options).adapt == "none"  # the CLI parses none as None
    with pytest.raises(ValueError, match="tgc_source='membrane_grad'"):  # no feeding conv / linear known
        create_neuron("lif", surrogate="a2sg_reconstructed", surrogate_kwargs={"tgc_source": "weight_grad"})(torch.ones(2, 1, 3, requires_grad=True))


# ----------------------------------------------------------------------------- controller maths
THETA = 1.0


def run_controller_step(sg, mems, grads, neuron=None):
    """One training forward over T steps with hand-made dL/du_t, then the optimiser-step hook."""
    sg.train()
    mems = [m.clone().requires_grad_() for m in mems]
    for t, mem in enumerate(mems):
        sg(mem - THETA, mem=mem, step=t, neuron=neuron)
    torch.autograd.backward(mems, grads)
    sg.after_optimizer_step(int(sg.a2sg_step) + 1)


def ref_sgv(mems, windows, a, per_channel=False, grads=None):
    """mean_t of std/mean of h (or |grad|) over batch x neurons, per channel if asked (float64)."""
    terms = []
    for t, mem in enumerate(mems):
        values = grads[t].double().abs() if grads is not None else \
            closed_form("asym_triangle", (mem - THETA).double(), windows[t], a)
        if per_channel:
            terms.append(torch.stack([values[:, c].std(unbiased=False) / (values[:, c].mean() + 1e-8)
                                      for c in range(values.shape[1])]))
        else:
            terms.append(values.std(unbiased=False) / (values.mean() + 1e-8))
    return torch.stack(terms).mean(0)


def ref_cosines(grads, channel=None):
    flat = [(g if channel is None else g[:, channel]).reshape(-1).double() for g in grads]
    T = len(flat)
    cos = torch.tensor([[F.cosine_similarity(flat[i], flat[j], dim=0).item() for j in range(T)] for i in range(T)],
                       dtype=torch.float64)
    tgc = torch.stack([cos[i, j] for i in range(T) for j in range(i + 1, T)]).mean()
    c = torch.stack([torch.stack([cos[i, j] for j in range(T) if j != i]).mean() for i in range(T)])
    return tgc, c


def hand_made(T=3, shape=(16, 40), seed=0):
    gen = torch.Generator().manual_seed(seed)
    mems = [torch.randn(*shape, generator=gen) * 0.5 + 0.9 for _ in range(T)]
    base = torch.randn(*shape, generator=gen)
    grads = [base * (t + 1) * 0.3 + torch.randn(*shape, generator=gen) for t in range(T)]
    return mems, grads


@pytest.mark.parametrize("sgv_source", ["surrogate", "grad"])
def test_calibration_then_update_match_plain_pytorch(sgv_source):
    sg = create_surrogate("a2sg_reconstructed", update_every=2, calib_epochs=1, sgv_source=sgv_source)
    sg.on_epoch_start(0)
    mems1, grads1 = hand_made(seed=1)
    mems2, grads2 = hand_made(seed=2)

    run_controller_step(sg, mems1, grads1)  # optimiser step 1: not a controller step, no hooks registered
    assert int(sg.a2sg_step) == 1 and int(sg.num_controller_steps) == 0 and sg._observation is None
    run_controller_step(sg, mems1, grads1)  # step 2: calibration sample
    sgv1 = ref_sgv(mems1, [0.5] * 3, 0.5, grads=grads1 if sgv_source == "grad" else None)
    tgc1, _ = ref_cosines(grads1)
    assert not sg.calibrated and int(sg.num_controller_steps) == 1
    assert sg.sgv_ref.item() == pytest.approx(sgv1.item(), rel=1e-5)
    assert sg.sgv_ema.item() == pytest.approx(sgv1.item(), rel=1e-5)
    assert sg.tgc_ema.item() == pytest.approx(tgc1.item(), abs=3e-3)  # dL/du kept in bf16
    torch.testing.assert_close(sg.w_t, torch.full((3,), 0.5))  # calibration changes no window

    sg.on_epoch_start(1)
    assert sg.calibrated
    run_controller_step(sg, mems2, grads2)
    run_controller_step(sg, mems2, grads2)  # step 4: first update
    sgv2 = ref_sgv(mems2, [0.5] * 3, 0.5, grads=grads2 if sgv_source == "grad" else None)
    tgc2, c2 = ref_cosines(grads2)
    error = (sgv2 / sgv1 - 1) + (0.5 - tgc2)
    log_w_base = math.log(0.5) + 0.01 * math.tanh(error.item())
    expected_w = (math.exp(log_w_base) * (1 + 0.5 * (1 - c2))).clamp(0.2, 2.0)
    assert sg.log_w_base.item() == pytest.approx(log_w_base, abs=1e-4)
    torch.testing.assert_close(sg.w_t.double(), expected_w, atol=3e-3, rtol=0)
    assert sg.sgv_ref.item() == pytest.approx(sgv1.item(), rel=1e-5)  # frozen after calibration
    assert sg.sgv_ema.item() == pytest.approx(0.9 * sgv1.item() + 0.1 * sgv2.item(), rel=1e-5)
    assert sg.tgc_ema.item() == pytest.approx(0.9 * tgc1.item() + 0.1 * tgc2.item(), abs=3e-3)
    # the next forward uses the new windows (times theta of the neuron)
    neuron = create_neuron("lif", surrogate="atan", threshold=0.5)
    torch.testing.assert_close(sg.call_params(mems2[0], step=2, neuron=neuron)["w"], sg.w_t[2] * 0.5)


def test_per_channel_time_granularity_matches_plain_pytorch():
    sg = create_surrogate("a2sg_reconstructed", update_every=1, calib_epochs=0, granularity="layer_channel_time", w0=0.6)
    sg.on_epoch_start(0)
    mems, grads = hand_made(T=2, shape=(6, 3, 4, 4), seed=3)
    run_controller_step(sg, mems, grads)  # calib_epochs=0: the first sample is sgv_ref, then the update
    sgv = ref_sgv(mems, [0.6, 0.6], 0.5, per_channel=True)
    assert sg.w_t.shape == (2, 3) and sg.log_w_base.shape == (3,)
    torch.testing.assert_close(sg.sgv_ref.double(), sgv, rtol=1e-5, atol=1e-6)
    for channel in range(3):
        tgc, c = ref_cosines(grads, channel)
        log_w_base = math.log(0.6) + 0.01 * math.tanh(0.5 - tgc.item())  # SGV term is 0
        assert sg.log_w_base[channel].item() == pytest.approx(log_w_base, abs=1e-4)
        expected = (math.exp(log_w_base) * (1 + 0.5 * (1 - c))).clamp(0.2, 2.0)
        torch.testing.assert_close(sg.w_t[:, channel].double(), expected, atol=3e-3, rtol=0)
    w = sg.call_params(mems[0], step=1)["w"]
    assert w.shape == (3, 1, 1) and torch.equal(w.flatten(), sg.w_t[1])
    with pytest.raises(ValueError, match="3 channels but the input has 5"):
        sg(torch.zeros(2, 5, 4, 4), step=0)


def test_layer_granularity_shares_one_window_and_clamps_hold():
    sg = create_surrogate("a2sg_reconstructed", update_every=1, calib_epochs=0, granularity="layer", eta_w=10.0, w0=1.9)
    sg.on_epoch_start(0)
    mems, grads = hand_made(T=2, seed=4)
    run_controller_step(sg, mems, [grads[0], -grads[0]])  # TGC = -1: e = 1.5 -> widen to the clamp
    assert sg.log_w_base.item() == pytest.approx(math.log(2.0))
    torch.testing.assert_close(sg.w_t, torch.full((2,), 2.0))
    run_controller_step(sg, mems, [grads[0], grads[0]])  # same SGV, TGC = 1: e = -0.5 -> narrow
    assert sg.log_w_base.item() == pytest.approx(math.log(0.2))  # log 2 + 10 tanh(~-0.5) is below log 0.2
    torch.testing.assert_close(sg.w_t, torch.full((2,), 0.2), atol=1e-3, rtol=0)  # c = 1 up to bf16
    # layer granularity: the mean over t of the per-step windows, with c differing per step
    sg2 = create_surrogate("a2sg_reconstructed", update_every=1, calib_epochs=0, granularity="layer")
    sg2.on_epoch_start(0)
    mems3, grads3 = hand_made(T=3, seed=5)
    run_controller_step(sg2, mems3, grads3)
    tgc, c = ref_cosines(grads3)
    expected = (math.exp(math.log(0.5) + 0.01 * math.tanh(0.5 - tgc.item())) * (1 + 0.5 * (1 - c))).mean()
    torch.testing.assert_close(sg2.w_t.double(), expected.expand(3), atol=3e-3, rtol=0)
    # temporal_mod off: w_t = exp(log_w_base) at every step
    sg3 = create_surrogate("a2sg_reconstructed", update_every=1, calib_epochs=0, temporal_mod=False)
    sg3.on_epoch_start(0)
    run_controller_step(sg3, mems3, grads3)
    torch.testing.assert_close(sg3.w_t, sg3.log_w_base.exp().expand(3))


def test_memstat_ema_and_eval_leaves_state_alone():
    sg = create_surrogate("a2sg_reconstructed", adapt="memstat", kappa=2.0, update_every=100)
    neuron = create_neuron("lif", surrogate="atan", threshold=0.5)
    std_ema = torch.full((2,), 0.5 / 2.0, dtype=torch.float64)  # starts at w0 / kappa
    for seed in range(3):
        mems, grads = hand_made(T=2, seed=seed)
        run_controller_step(sg, mems, grads, neuron=neuron)
        stds = torch.stack([m.double().std(unbiased=False) / 0.5 for m in mems])
        std_ema = 0.9 * std_ema + 0.1 * stds
        torch.testing.assert_close(sg.std_ema.double(), std_ema, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sg.w_t.double(), (2.0 * std_ema).clamp(0.2, 2.0), rtol=1e-5, atol=1e-6)
    before = {k: v.clone() for k, v in sg.state_dict().items()}
    sg.eval()
    sg(mems[0] - 1, mem=mems[0], step=0)
    sg.train()
    with torch.no_grad():
        sg(mems[0] - 1, mem=mems[0], step=0)
    for k, v in sg.state_dict().items():
        assert torch.equal(v, before[k]), k


def ref_sgv_of(values, per_channel):
    """std / (mean + 1e-8) over batch x neurons of one step's [B, C, ...] values (per channel: dim 1)."""
    rows = values.movedim(1, 0).flatten(1) if per_channel else values.reshape(1, -1)
    return (rows.std(-1, unbiased=False) / (rows.mean(-1) + 1e-8)).squeeze(0)


def circulate_firing_controller_step(adapt, granularity, T=3):
    """One training forward and optimiser step of a signed circulate-firing neuron (D = 2) with the reconstructed
    A2SG; returns the neuron and, per step, its calls' inputs x[L, ...] and windows w, and the membrane H[t] (with
    .grad).  A step's h is reduced at its last call: none is held through the backward."""
    neuron = create_neuron("circulate_firing", mode="signed", D=2, num_steps=T, surrogate="a2sg_reconstructed",
                           surrogate_kwargs=dict(adapt=adapt, granularity=granularity, update_every=1,
                                                 calib_epochs=0))
    sg, calls, windows, membranes = neuron.surrogate, {}, {}, {}

    def record(surrogate, x, params, context):
        calls.setdefault(context["step"], []).append(x.detach().double())
        windows.setdefault(context["step"], []).append(params["w"])
        membranes[context["step"]] = context["mem"]
        context["mem"].retain_grad()

    sg.observers.append(record)
    sg.on_epoch_start(0)
    gen = torch.Generator().manual_seed(7)
    out = neuron((torch.randn(T, 8, 3, 5, generator=gen) * 1.5).requires_grad_())
    assert sg._observation is None or sg._observation.slope is None
    (out * torch.randn(out.shape, generator=gen)).sum().backward()
    sg.after_optimizer_step(1)
    return neuron, calls, windows, membranes


@pytest.mark.parametrize("granularity", ["layer_time", "layer_channel_time"])
def test_reconstructed_statistics_take_each_circulate_firing_step_once(granularity):
    """Circulate firing calls the surrogate twice per step (up- and down-crossings, D levels each): the SGV term of
    a step is the CV of the neuron's whole slope dS/dH = sum over calls and levels of h(x), TGC the cosines of
    dL/dH[t], each step counted once."""
    neuron, calls, _, membranes = circulate_firing_controller_step("sgv_tgc", granularity)
    sg = neuron.surrogate
    assert [len(calls[t]) for t in sorted(calls)] == [2, 2, 2]
    slopes = [sum(closed_form("asym_triangle", x, 0.5, 0.5).sum(0) for x in calls[t]) for t in sorted(calls)]
    grads = [membranes[t].grad for t in sorted(membranes)]
    per_channel = granularity == "layer_channel_time"
    sgv = torch.stack([ref_sgv_of(slope, per_channel) for slope in slopes]).mean(0)
    torch.testing.assert_close(sg.sgv_ema.double(), sgv, rtol=1e-5, atol=1e-6)
    for channel in range(3) if per_channel else [None]:
        tgc, _ = ref_cosines(grads, channel)
        assert sg.tgc_ema[channel if per_channel else ...].item() == pytest.approx(tgc.item(), abs=3e-3)
    sg.observers.clear()  # the test's recording closure
    restored = pickle.loads(pickle.dumps(neuron))  # after a training step (a weak reference to a membrane is not)
    assert torch.equal(restored.surrogate.w_t, sg.w_t)


def test_memstat_updates_once_per_circulate_firing_step():
    """Once per step, after the step's last call: both calls of a step use the same window."""
    neuron, _, windows, membranes = circulate_firing_controller_step("memstat", "layer_time")
    sg = neuron.surrogate
    assert all(torch.equal(*windows[t]) for t in windows)
    stds = torch.stack([membranes[t].detach().double().std(unbiased=False) for t in sorted(membranes)])
    std_ema = 0.9 * 0.5 + 0.1 * stds  # starts at w0 / kappa; theta = 1
    torch.testing.assert_close(sg.std_ema.double(), std_ema, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,options", [("a2sg", {}), ("a2sg_reconstructed", {}),
                                          ("a2sg_reconstructed", {"adapt": "memstat"})])
def test_statistics_and_controller_steps_read_no_device_value_on_the_host(name, options):
    """On a GPU a host read of a device value (``.item()``, ``bool(tensor)``) or a tensor made from host data waits
    for the device; the reconstructed controller read its ``calibrated`` buffer so on every controller step."""
    sg = create_surrogate(name, update_every=1, calib_epochs=1, **options)
    sg.train()
    mems, grads = hand_made(T=3)
    for epoch in range(2):  # a calibration step, then an update
        sg.on_epoch_start(epoch)
        with OperationCounter() as counter:
            mems = [m.detach().requires_grad_() for m in mems]
            spikes = [sg(mem - THETA, mem=mem, step=t) for t, mem in enumerate(mems)]
            sum(((s + m) * g).sum() for s, m, g in zip(spikes, mems, grads)).backward()
            sg.after_optimizer_step(epoch)
        assert not counter.host_reads()
    assert int(sg.num_controller_steps) == 2 and bool(sg.calibrated)


def test_fixed_arms_never_move_but_log_statistics():
    for asym in (0.0, 0.5):
        sg = create_surrogate("a2sg_reconstructed", adapt="none", asym=asym, update_every=1, calib_epochs=0)
        sg.on_epoch_start(0)
        for seed in range(2):
            run_controller_step(sg, *hand_made(seed=seed))
        torch.testing.assert_close(sg.w_t, torch.full((3,), 0.5))
        assert sg.log_w_base.item() == pytest.approx(math.log(0.5)) and sg.sgv_ema.item() > 0


def test_buffers_are_saved_and_restored_exactly():
    def make():
        return create_surrogate("a2sg_reconstructed", update_every=2, calib_epochs=0, granularity="layer_channel_time")

    sg = make()
    sg.on_epoch_start(0)
    batches = [hand_made(T=3, shape=(4, 2, 3), seed=s) for s in range(5)]
    for mems, grads in batches[:3]:
        run_controller_step(sg, mems, grads)
    state = sg.state_dict()
    assert set(state) == {"log_w_base", "w_t", "sgv_ref", "calibrated", "sgv_ema", "tgc_ema", "tgc_t", "std_ema",
                          "a2sg_step", "num_controller_steps"}
    assert state["w_t"].shape == (3, 2) and int(state["a2sg_step"]) == 3
    restored = make()  # fresh: lazily sized buffers are resized by load_state_dict
    restored.load_state_dict(state)
    restored.on_epoch_start(0)
    for key, value in restored.state_dict().items():
        assert torch.equal(value, state[key]), key
    for mems, grads in batches[3:]:  # both continue identically (step 4 is a controller step)
        run_controller_step(sg, mems, grads)
        run_controller_step(restored, mems, grads)
    assert int(sg.num_controller_steps) == 2
    for key, value in restored.state_dict().items():
        assert torch.equal(value, sg.state_dict()[key]), key
    with pytest.raises(RuntimeError, match="size mismatch"):
        create_surrogate("a2sg_reconstructed").load_state_dict(state)  # per-channel state into a per-layer controller


def test_freeze_controller_and_hessian_vector_product_through_a_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32),
                                create_neuron("lif", surrogate="a2sg_reconstructed", surrogate_kwargs={"update_every": 1}))
    sg = model[1].surrogate
    x = torch.randn(4, 8, 10) + 1.0
    with frozen_controllers(model):
        out = model(x)
        assert sg._observation is None
        grads = torch.autograd.grad(out.sum(), list(model[0].parameters()), create_graph=True)
        vector = [torch.randn_like(g) for g in grads]
        hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vector)), list(model[0].parameters()))
        assert all(torch.isfinite(h).all() for h in hvp) and any(h.abs().sum() > 0 for h in hvp)
        sg.after_optimizer_step(1)
        sg.on_epoch_start(5)
    assert int(sg.a2sg_step) == 0 and not sg.calibrated and len(sg.w_t) == 4
    model(x).sum().backward()  # not frozen: a controller step registers the hooks
    assert sg._observation is not None and sg._observation.gram is not None


def _controller_step_on(rank):
    sg = create_surrogate("a2sg_reconstructed", update_every=1, calib_epochs=0)
    sg.on_epoch_start(0)
    run_controller_step(sg, *hand_made(seed=10 + rank))
    return sg.w_t.tolist(), sg.sgv_ref.item(), sg.tgc_ema.item()


def test_two_processes_average_statistics_and_keep_the_same_windows(tmp_path):
    results = run_in_gloo_processes(_controller_step_on, tmp_path)
    sgv = torch.stack([ref_sgv(hand_made(seed=10 + r)[0], [0.5] * 3, 0.5) for r in range(2)]).mean()
    tgc, c = [torch.stack(v).mean(0) for v in zip(*[ref_cosines(hand_made(seed=10 + r)[1]) for r in range(2)])]
    expected = math.exp(math.log(0.5) + 0.01 * math.tanh(0.5 - tgc.item())) * (1 + 0.5 * (1 - c))
    assert results[0] == results[1]  # every replica keeps the same windows
    assert results[0][1] == pytest.approx(sgv.item(), rel=1e-5)
    assert results[0][2] == pytest.approx(tgc.item(), abs=3e-3)
    torch.testing.assert_close(torch.tensor(results[0][0], dtype=torch.float64), expected, atol=3e-3, rtol=0)


@pytest.mark.slow
def test_engine_trains_quickstart_with_a2sg(tmp_path):
    config = Config(model="resnet19", model_options={"width": 0.25}, num_steps=2, dataset="digits",
                    dataset_options={"size": 16}, batch_size=32, eval_batch_size=120, epochs=3, lr=0.05,
                    weight_decay=5e-4, seed=7, surrogate="a2sg_reconstructed",
                    output_dir=str(tmp_path))  # test_engine's TINY with the A2SG defaults
    summary = train(config)
    state = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    windows = {k: v for k, v in state.items() if k.endswith("surrogate.w_t")}
    print(f"\nA2SG quickstart: test accuracy {summary['test_accuracy']:.2f}% "
          f"(best {summary['best_test_accuracy']:.2f}%)")
    for name, w in windows.items():
        print(f"  {name}: {[round(v, 4) for v in w.tolist()]}")
    assert summary["best_test_accuracy"] > 60.0  # chance is 10%
    assert len(windows) == 20 and all(w.shape == (2,) for w in windows.values())
    moved = torch.stack([(w - 0.5).abs().max() for w in windows.values()])
    assert (moved > 0.01).all()  # every layer's windows left w0
    steps = state[next(k for k in state if k.endswith("surrogate.a2sg_step"))]
    assert int(steps) == 3 * (1437 // 32)
    assert all(bool(v) for k, v in state.items() if k.endswith("surrogate.calibrated"))


@pytest.mark.parametrize("granularity", ["layer_time", "layer_channel_time"])
def test_weight_grad_tgc_matches_per_timestep_weight_gradients(granularity):
    """tgc_source="weight_grad": TGC and c are the cosines between dL/dW_t of the conv feeding the layer,
    here against per-timestep gradients obtained independently by autograd (the conv applied to each
    timestep's slice with its own leaf copy of W)."""
    from repro.models.layers import SeqToANN, TDBatchNorm, unfold
    from repro.models.resnet import fed_by

    torch.manual_seed(8)
    steps, batch = 3, 4
    conv_bn = SeqToANN(torch.nn.Conv2d(2, 5, 3, padding=1, bias=False), TDBatchNorm(5))
    neuron = fed_by(conv_bn, create_neuron("lif", surrogate="a2sg_reconstructed", surrogate_kwargs=dict(
        tgc_source="weight_grad", granularity=granularity, update_every=2, calib_epochs=1)))
    surrogate = neuron.surrogate
    surrogate.on_epoch_start(0)
    inputs, target = torch.randn(steps, batch, 2, 6, 6) + 0.5, torch.randn(steps, batch, 5, 6, 6)
    for step in range(2):  # the second forward is a controller step
        (neuron(conv_bn(inputs)) - target).pow(2).mean().backward()
        surrogate.after_optimizer_step(step + 1)

    weights = [conv_bn[0].weight.detach().clone().requires_grad_() for _ in range(steps)]
    with surrogate.freeze_controller():
        folded = torch.cat([torch.nn.functional.conv2d(x, w, padding=1) for x, w in zip(inputs, weights)])
        loss = (neuron(unfold(conv_bn[1](folded), steps)) - target).pow(2).mean()
    per_step = torch.autograd.grad(loss, weights)
    rows = [g.flatten(1) if granularity == "layer_channel_time" else g.reshape(1, -1) for g in per_step]
    rows = [r / r.norm(dim=1, keepdim=True) for r in rows]
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected_tgc = torch.stack([(rows[i] * rows[j]).sum(1) for i, j in pairs]).mean(0)
    assert int(surrogate.num_controller_steps) == 1 and (expected_tgc < 0.999).all()
    torch.testing.assert_close(surrogate.tgc_ema.reshape(-1), expected_tgc, rtol=1e-4, atol=1e-5)
