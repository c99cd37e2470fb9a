"""The fused LIF path (models/fused.py) against the reference loop of LIF.forward (the oracle, itself
tested against closed forms and snnTorch in test_neurons.py): spikes and membrane bitwise, input and
decay gradients to float tolerance, for every switch combination and several surrogates; the
fallback where the fused path does not apply."""
import itertools
import logging
import random

import pytest
import torch
from torch import nn

import repro.models.fused as fused_module
from repro.models import LIF, AdaptiveThresholdLIF, TDBatchNorm
from repro.diagnostics import saved_tensor_bytes
from repro.models.fused import StepConfig, integrate
from repro.surrogates import Surrogate, create_surrogate
from kernel_launches import OperationCounter
from reference import assert_fused_model_step_matches, assert_inference_matches, fused_test_loss_backward

RESETS = [("zero", True), ("subtract", True), ("subtract", False), ("none", True)]
SURROGATES = ["atan", "rectangular", "triangle", "sigmoid", "fast_sigmoid", "tgo", "mpd_agl"]
SWITCHES = list(itertools.product([False, True], [False, True], [False, True], ["clamp", "sigmoid"], [False, True]))


def make_pair(**kwargs):
    """Two identical neurons, fused and reference, each with its own surrogate instance."""
    surrogate = kwargs.pop("surrogate")
    norm = TDBatchNorm(kwargs.pop("channels"), dims=1)
    with torch.no_grad():
        norm.weight.uniform_(0.3, 1.5)  # mpd_agl reads the feeding BN's gamma: per-step widths
    pair = []
    for fused in (True, False):
        neuron = LIF(surrogate=create_surrogate(surrogate), fused=fused, **kwargs)
        neuron.set_input_norm(norm)
        pair.append(neuron)
    return pair


def forward_backward(neuron, inputs, upstream):
    """Spikes, input and decay gradients of sum(out * upstream) (+ a term on the recorded potentials)."""
    out, grad_x = fused_test_loss_backward(neuron, inputs, upstream)
    decay_grad = None if neuron.decay_raw.grad is None else neuron.decay_raw.grad.clone()
    return out, grad_x, decay_grad


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("reset,reset_decayed", RESETS)
def test_fused_equals_reference_loop_for_every_switch(reset, reset_decayed, surrogate):
    rng = random.Random(f"{reset}{reset_decayed}{surrogate}")
    for fire_ge, reset_detach, decay_input, decay_param, learnable in SWITCHES:
        steps, batch, channels = rng.randint(1, 10), rng.randint(1, 3), rng.randint(2, 5)
        shape = (steps, batch, channels) + ((rng.randint(1, 3),) if rng.random() < 0.5 else ())
        torch.manual_seed(rng.randrange(1 << 30))
        inputs = torch.randn(shape) * 0.9 + 0.6
        upstream = torch.randn(shape)
        fused, reference = make_pair(
            surrogate=surrogate, channels=channels, decay=rng.choice([0.2, 0.5, 0.9]), threshold=rng.choice([0.5, 1.0]),
            reset=reset, reset_decayed=reset_decayed, fire_ge=fire_ge, reset_detach=reset_detach,
            decay_input=decay_input, decay_param=decay_param, decay_learnable=learnable)
        assert fused.unfused_reason(inputs) is None
        out, grad_x, grad_decay = forward_backward(fused, inputs, upstream)
        assert type(out.grad_fn).__name__ == "FusedLIFFunctionBackward"
        ref_out, ref_grad_x, ref_grad_decay = forward_backward(reference, inputs, upstream)
        case = f"T={steps} fire_ge={fire_ge} detach={reset_detach} decay_input={decay_input} {decay_param} {learnable}"
        assert torch.equal(out, ref_out), case
        torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-5, atol=1e-6, msg=case)
        if learnable:
            torch.testing.assert_close(grad_decay, ref_grad_decay, rtol=1e-5, atol=1e-5, msg=case)
        else:
            assert grad_decay is None and ref_grad_decay is None


@pytest.mark.parametrize("shape", ["sigmoid", "rect", "atan"])
@pytest.mark.parametrize("granularity", ["per_layer_t", "per_layer"])
def test_learned_sharpness_fused_equals_reference_loop(shape, granularity):
    """The TLSG with learned k[t] (st_smooth): spikes, input, decay and rho gradients of the fused path
    equal the reference loop's (which differentiates the TLSG's own straight-through graph)."""
    rng = random.Random(f"{shape}{granularity}")
    for (reset, reset_decayed), fire_ge, reset_detach in itertools.product(RESETS, [False, True], [False, True]):
        steps = rng.randint(1, 10)
        shape_ = (steps, rng.randint(1, 3), rng.randint(2, 5))
        torch.manual_seed(rng.randrange(1 << 30))
        inputs, upstream = torch.randn(shape_) * 0.9 + 0.6, torch.randn(shape_)
        rho, decay = torch.randn(steps if granularity == "per_layer_t" else 1), rng.choice([0.2, 0.5, 0.9])
        results = []
        for fused in (True, False):
            surrogate = create_surrogate("learnable", shape=shape, granularity=granularity, num_steps=steps)
            with torch.no_grad():
                surrogate.rho.copy_(rho)  # a different k at every step
            neuron = LIF(surrogate=surrogate, fused=fused, decay=decay, reset=reset,
                         reset_decayed=reset_decayed, fire_ge=fire_ge, reset_detach=reset_detach,
                         decay_learnable=True)
            out, grad_x, grad_decay = forward_backward(neuron, inputs, upstream)
            results.append((out, grad_x, grad_decay, surrogate.rho.grad))
            assert (type(out.grad_fn).__name__ == "FusedLIFFunctionBackward") == fused
        (out, *grads), (ref_out, *ref_grads) = results
        case = f"T={steps} {reset} decayed={reset_decayed} fire_ge={fire_ge} detach={reset_detach}"
        assert torch.equal(out, ref_out), case
        assert grads[2].abs().sum() > 0, case
        for grad, ref_grad in zip(grads, ref_grads):
            torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5, msg=case)


@pytest.mark.parametrize("surrogate", ["atan", "learnable", "a2sg"])
@pytest.mark.parametrize("reset,reset_decayed", RESETS)
def test_recorded_potentials_fused_equal_reference_and_carry_gradient(reset, reset_decayed, surrogate):
    """record_potentials (balanced loss, diagnostics): the fused path records the same u[t] and
    back-propagates a loss on them (and on the spikes) as the reference loop does."""
    rng = random.Random(f"{reset}{reset_decayed}{surrogate}")
    for fire_ge, reset_detach in itertools.product([False, True], [False, True]):
        steps = rng.randint(1, 8)
        shape = (steps, 2, rng.randint(2, 5))
        torch.manual_seed(rng.randrange(1 << 30))
        inputs, upstream = torch.randn(shape) * 0.9 + 0.6, torch.randn(shape)
        results = []
        for fused in (True, False):
            kwargs = {"num_steps": steps} if surrogate == "learnable" else {}
            neuron = LIF(surrogate=create_surrogate(surrogate, **kwargs), fused=fused, reset=reset,
                         reset_decayed=reset_decayed, fire_ge=fire_ge, reset_detach=reset_detach,
                         decay_learnable=True)
            neuron.record_potentials = True
            results.append((*forward_backward(neuron, inputs, upstream), torch.stack(neuron.potentials)))
            assert (type(results[-1][0].grad_fn).__name__ == "FusedLIFFunctionBackward") == fused
        (out, grad_x, grad_decay, potentials), (ref_out, ref_grad_x, ref_grad_decay, ref_potentials) = results
        case = f"T={steps} fire_ge={fire_ge} detach={reset_detach}"
        assert torch.equal(out, ref_out) and torch.equal(potentials, ref_potentials), case
        torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-5, atol=1e-6, msg=case)
        torch.testing.assert_close(grad_decay, ref_grad_decay, rtol=1e-5, atol=1e-5, msg=case)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("reset,reset_decayed", RESETS)
def test_torch_backward_reads_nothing_on_the_host(reset, reset_decayed, precision):
    """The fused path's torch backward (where the kernels do not apply: recorded potentials, fp16 margins, a
    surrogate outside the kernels' vocabulary) takes lambda as a device scalar: no host read, which on a GPU
    would wait for the device once per layer and backward (it read ``float(decay)`` before); the membrane's replay
    (``integrate``) reads lambda only on the CPU, where nothing waits."""
    for surrogate, reset_detach in itertools.product(["atan", "learnable"], [False, True]):
        torch.manual_seed(0)
        inputs = (torch.randn(3, 2, 4) * 0.9 + 0.6).requires_grad_()
        neuron = LIF(surrogate=create_surrogate(surrogate, **({"num_steps": 3} if surrogate == "learnable" else {})),
                     reset=reset, reset_decayed=reset_decayed, reset_detach=reset_detach, decay_learnable=True,
                     saved_precision=precision)
        neuron.record_potentials = precision == "fp32"  # fp16 margins and recorded potentials exclude each other
        out = neuron(inputs)
        assert type(out.grad_fn).__name__ == "FusedLIFFunctionBackward"
        loss = out.sum() + (torch.stack(neuron.potentials).square().sum() if neuron.record_potentials else 0)
        with OperationCounter() as counter:
            loss.backward()
        with OperationCounter() as replay:  # the fp32 backward's replay; it reads lambda on the CPU only (addcmul)
            if precision == "fp32":
                config = StepConfig(neuron.threshold, reset, reset_decayed, reset_detach, neuron.decay_input,
                                    neuron.fire_ge)
                integrate(inputs.detach(), neuron.decay.detach(), config, lambda u, t: neuron.threshold, keep=True,
                          fire=False)
        assert neuron.decay_raw.grad is not None, (surrogate, reset_detach)
        assert counter.host_reads() == replay.host_reads(), (surrogate, reset_detach)


def replayed_membrane(neuron, inputs):
    """u[T, ...] from the fused path's replay (what its backward differentiates)."""
    config = StepConfig(neuron.threshold, neuron.reset, neuron.reset_decayed, neuron.reset_detach, neuron.decay_input,
                        neuron.fire_ge)
    _, membrane = integrate(inputs, neuron.decay.float(), config, lambda u, t: neuron.threshold, keep=True)
    return membrane


@pytest.mark.parametrize("reset,reset_decayed", RESETS)
def test_membrane_bitwise_equal_to_recorded_reference_potentials(reset, reset_decayed):
    torch.manual_seed(3)
    inputs = torch.randn(7, 4, 6) + 0.5
    neuron = LIF(decay=0.3, threshold=0.8, reset=reset, reset_decayed=reset_decayed, decay_input=True,
                 preset="reference", fused=False)
    neuron.record_potentials = True
    spikes = neuron(inputs)
    assert 0 < spikes.mean() < 1
    assert torch.equal(replayed_membrane(neuron, inputs), torch.stack(neuron.potentials))
    neuron.record_potentials, neuron.fused = False, True
    assert torch.equal(neuron(inputs), spikes)


def test_decay_gradient_against_finite_differences():
    """Independent check of the hand-written decay gradient.  Without spikes (|I| < theta, and
    decay_input makes u a weighted mean of the inputs) and with the reset detached (an attached reset
    passes surrogate gradient even when nothing fires) the surrogate gradient of sum_t G[t] s[t] w.r.t.
    w (lambda = sigmoid(w)) equals d/dw sum_t G[t] psi(u[t](w) - theta), psi = sigmoid(alpha x) the
    primitive of the sigmoid surrogate, with u[t] = lambda u[t-1] + (1 - lambda) I[t] in float64."""
    torch.manual_seed(5)
    alpha, theta = 2.0, 2.0
    inputs = (torch.randn(6, 3, 8) * 0.5 + 0.3).clamp(-1.5, 1.5)
    upstream = torch.randn(6, 3, 8)
    neuron = LIF(decay=0.4, threshold=theta, surrogate=create_surrogate("sigmoid", alpha=alpha), preset="reference",
                 decay_learnable=True, decay_param="sigmoid", decay_input=True, reset_detach=True)
    out = neuron(inputs.clone().requires_grad_())
    assert out.sum() == 0 and type(out.grad_fn).__name__ == "FusedLIFFunctionBackward"
    out.backward(upstream)

    def smooth_loss(w: float) -> float:
        lam = 1 / (1 + torch.exp(torch.tensor(-w, dtype=torch.float64)))
        u, total = torch.zeros(3, 8, dtype=torch.float64), 0.0
        for current, weight in zip(inputs.double(), upstream.double()):
            u = lam * u + (1 - lam) * current
            total += float((weight * torch.sigmoid(alpha * (u - theta))).sum())
        return total

    w, eps = float(neuron.decay_raw.detach()), 1e-4
    numeric = (smooth_loss(w + eps) - smooth_loss(w - eps)) / (2 * eps)
    assert abs(numeric) > 1e-3
    assert float(neuron.decay_raw.grad) == pytest.approx(numeric, rel=1e-4)


def test_no_grad_inference_and_bf16_input_match_reference():
    torch.manual_seed(7)
    inputs = torch.randn(5, 2, 3, 4, 4) + 0.6
    assert_inference_matches(*make_pair(surrogate="atan", channels=3, reset="subtract", preset="reference"), inputs)


class StepThresholdLIF(LIF):
    """A per-step, per-channel threshold through ``fire_context`` (the fused path's extension point)."""

    def fire_context(self, u, step):
        threshold = self.threshold * (1 + 0.1 * step) * torch.linspace(0.8, 1.2, u.shape[1]).view(1, -1, 1)
        return threshold, dict(mem=u, step=step, neuron=self, threshold=threshold)


def test_fire_context_override_stays_fused_and_matches_reference():
    torch.manual_seed(11)
    inputs, upstream = torch.randn(6, 3, 4, 5) + 0.7, torch.randn(6, 3, 4, 5)
    for reset in ("zero", "subtract"):
        kwargs = dict(surrogate="tgo", preset="reference", decay_learnable=True, reset=reset)
        fused, reference = StepThresholdLIF(fused=True, **kwargs), StepThresholdLIF(fused=False, **kwargs)
        fused.surrogate.tgo_stat = reference.surrogate.tgo_stat = "thr"  # width from the per-step threshold
        assert fused.unfused_reason(inputs) is None
        out, grad_x, grad_decay = forward_backward(fused, inputs, upstream)
        ref_out, ref_grad_x, ref_grad_decay = forward_backward(reference, inputs, upstream)
        assert torch.equal(out, ref_out) and 0 < out.mean() < 1
        torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_decay, ref_grad_decay, rtol=1e-5, atol=1e-5)


def test_adaptive_threshold_neuron_equals_reference_whichever_path():
    """Fused once AdaptiveThresholdLIF moves its per-step threshold into fire_context; until then it
    falls back (the reason names the overridden method).  Either way the results are the oracle's."""
    torch.manual_seed(13)
    inputs, upstream = torch.randn(4, 8, 6) + 0.3, torch.randn(4, 8, 6)
    fused = AdaptiveThresholdLIF(num_steps=4, surrogate=create_surrogate("tgo"))
    reference = AdaptiveThresholdLIF(num_steps=4, surrogate=create_surrogate("tgo"))
    reference.fused = False
    reason = fused.unfused_reason(inputs)
    assert reason is None or "overrides fire()" in reason
    out, grad_x, grad_decay = forward_backward(fused, inputs, upstream)
    ref_out, ref_grad_x, ref_grad_decay = forward_backward(reference, inputs, upstream)
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_decay, ref_grad_decay, rtol=1e-5, atol=1e-5)
    assert torch.equal(fused.running_thr, reference.running_thr)
    assert torch.equal(torch.stack(fused.thresholds), torch.stack(reference.thresholds))


class LearnableScaleATan(Surrogate):
    """A surrogate with a parameter (not overriding forward): falls back while it requires grad."""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(2.0))

    def call_params(self, x, **context):
        return {"alpha": self.alpha.detach()}

    @staticmethod
    def shape(x, alpha):
        return (alpha / 2) / (1 + (torch.pi / 2 * alpha * x) ** 2)


class OverridingForward(Surrogate):
    def forward(self, x, fire_ge=False, **context):
        return (x >= 0).float()


class OverridingFire(LIF):
    def fire(self, u, step):
        return super().fire(u, step)


def test_fallback_reasons():
    x = torch.randn(3, 2, 4, requires_grad=True)
    assert LIF().unfused_reason(x) is None
    recording = LIF()
    recording.record_potentials = True
    assert recording.unfused_reason(x) is None  # the Function returns u[T] too
    assert "overrides fire()" in OverridingFire().unfused_reason(x)
    assert "plain callable" in LIF(surrogate=lambda v: (v > 0).float()).unfused_reason(x)
    assert LIF(surrogate="a2sg").unfused_reason(x) is None  # statistics through Surrogate.observe
    assert LIF(surrogate=create_surrogate("learnable", num_steps=3)).unfused_reason(x) is None  # k[t] an input
    mix = LIF(surrogate=create_surrogate("learnable", learn="asgl_mix", num_steps=3))
    assert "asgl_mix" in mix.unfused_reason(x) and mix.eval().unfused_reason(x) is None
    assert "overrides forward" in LIF(surrogate=OverridingForward()).unfused_reason(x)
    observed = LIF()
    observed.surrogate.observers.append(lambda *args: None)
    assert observed.unfused_reason(x) is None
    scaled = LIF(surrogate=LearnableScaleATan())
    assert "learnable parameters" in scaled.unfused_reason(x)
    scaled.surrogate.alpha.requires_grad_(False)
    assert scaled.unfused_reason(x) is None
    assert LIF().eval().unfused_reason(x) is None


def test_fallback_runs_reference_loop_and_logs_once(monkeypatch, caplog):
    monkeypatch.setattr(fused_module, "_reported", set())
    neuron = LIF(surrogate=create_surrogate("learnable", learn="asgl_mix", num_steps=3))
    x = torch.randn(3, 2, 4) + 1.0
    with caplog.at_level(logging.INFO, logger=fused_module.__name__):
        for _ in range(2):
            out = neuron(x.requires_grad_())
            assert type(out.grad_fn).__name__ != "FusedLIFFunctionBackward"
    messages = [r.getMessage() for r in caplog.records if "fused path not used" in r.getMessage()]
    assert len(messages) == 1 and messages[0].startswith("LIF: ") and "asgl_mix" in messages[0]
    unfused = LIF(fused=False)
    assert type(unfused(x).grad_fn).__name__ != "FusedLIFFunctionBackward"


@pytest.mark.parametrize("adapt,granularity", [("sgv_tgc", "layer_time"), ("sgv_tgc", "layer_channel_time"),
                                               ("memstat", "layer_time")])
def test_a2sg_controller_fused_equals_reference(adapt, granularity):
    """A2SG's statistics run in Surrogate.observe and get dL/du[t] from the fused backward
    (register_membrane_grad) instead of tensor hooks: same windows, EMAs and gradients as the reference
    loop over several controller steps, and the same window occupancy in a WindowMonitor."""
    from repro.diagnostics import WindowMonitor

    torch.manual_seed(31)
    neurons = [LIF(surrogate=create_surrogate("a2sg", adapt=adapt, granularity=granularity, update_every=2,
                                              calib_epochs=1), preset="reference", fused=fused) for fused in (True, False)]
    for neuron in neurons:
        neuron.surrogate.on_epoch_start(0)
    for iteration in range(8):
        if iteration == 4:
            for neuron in neurons:
                neuron.surrogate.on_epoch_start(1)  # calibration over: the controller moves the windows
        inputs, upstream = torch.randn(4, 3, 5, 2) * 0.8 + 0.6, torch.randn(4, 3, 5, 2)
        outputs = [forward_backward(neuron, inputs, upstream) for neuron in neurons]
        assert type(outputs[0][0].grad_fn).__name__ == "FusedLIFFunctionBackward"
        assert torch.equal(outputs[0][0], outputs[1][0]), iteration
        torch.testing.assert_close(outputs[0][1], outputs[1][1], rtol=1e-5, atol=1e-6, msg=str(iteration))
        for neuron in neurons:
            neuron.surrogate.after_optimizer_step(iteration + 1)
    fused_state, reference_state = (neuron.surrogate.state_dict() for neuron in neurons)
    assert int(fused_state["num_controller_steps"]) == 4 if adapt == "sgv_tgc" else True
    for name, value in reference_state.items():
        torch.testing.assert_close(fused_state[name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.allclose(reference_state["w_t"], torch.full_like(reference_state["w_t"], 0.5))
    occupancy = []
    for neuron in neurons:
        with WindowMonitor(neuron.eval()) as monitor:
            neuron(torch.randn(4, 3, 5, 2, generator=torch.Generator().manual_seed(5)))
        occupancy.append(monitor.inside)
    assert occupancy[0].keys() == occupancy[1].keys() and occupancy[0]
    for name in occupancy[0]:
        for step, count in occupancy[0][name].items():
            assert torch.equal(count, occupancy[1][name][step])


@pytest.mark.parametrize("surrogate,record", [("sigmoid", False), ("learnable", False), ("sigmoid", True)])
def test_double_backward_equals_reference_hessian_vector_product(surrogate, record):
    """create_graph=True through the fused path (train mode, as Hessian diagnostics may run) gives the
    reference loop's Hessian-vector product, for the input, a learnable decay and (TLSG) rho; with
    ``record``, the loss also reads the recorded potentials."""
    torch.manual_seed(23)
    inputs = torch.randn(5, 3, 6) * 0.8 + 0.7
    vector = torch.randn(5, 3, 6)
    results = []
    for fused in (True, False):
        neuron = LIF(surrogate=create_surrogate(surrogate, **({"num_steps": 5} if surrogate == "learnable" else {})),
                     preset="reference", decay_learnable=True, fused=fused)
        params = [neuron.decay_raw, *neuron.surrogate.parameters()]
        neuron.record_potentials = record
        x = inputs.clone().requires_grad_()
        out = neuron(x)
        loss = (out * torch.linspace(-1, 1, 6)).sum() ** 2 / 10  # a loss with curvature in the spikes
        if record:
            loss = loss + (torch.stack(neuron.potentials) ** 2).sum() / 10
        grad_x, *grad_params = torch.autograd.grad(loss, (x, *params), create_graph=True)
        hvp = torch.autograd.grad((grad_x * vector).sum() + sum(g.sum() for g in grad_params), (x, *params))
        results.append((out, grad_x, *grad_params, *hvp))
        if fused:
            assert type(out.grad_fn).__name__ == "FusedLIFFunctionBackward"
    (out, *fused_grads), (ref_out, *ref_grads) = results
    assert torch.equal(out, ref_out)
    assert all(grad.abs().sum() > 0 for grad in fused_grads)
    for fused_grad, ref_grad in zip(fused_grads, ref_grads):
        torch.testing.assert_close(fused_grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_resnet19_fused_equals_reference_training_step():
    assert_fused_model_step_matches(32, neuron="plif")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_equals_reference_on_cuda():
    torch.manual_seed(19)
    inputs, upstream = (torch.randn(6, 4, 8, 5, 5) + 0.6).cuda(), torch.randn(6, 4, 8, 5, 5).cuda()
    for preset in ("snntorch", "reference"):
        fused = LIF(preset=preset, decay_learnable=True, fused=True).cuda()
        reference = LIF(preset=preset, decay_learnable=True, fused=False).cuda()
        out, grad_x, grad_decay = forward_backward(fused, inputs, upstream)
        ref_out, ref_grad_x, ref_grad_decay = forward_backward(reference, inputs, upstream)
        assert torch.equal(out, ref_out)
        torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_decay, ref_grad_decay, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_traces_the_reference_loop_without_graph_breaks():
    """Under torch.compile the neuron traces its reference loop (inductor fuses it): same spikes and
    gradients as the eager fused path, no graph break (the fallback log is skipped while tracing)."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(29)
    inputs, upstream = torch.randn(4, 2, 8, 3, 3) + 0.5, torch.randn(4, 2, 8, 3, 3)
    eager = LIF(surrogate="atan", preset="reference", decay_learnable=True)
    compiled = LIF(surrogate="atan", preset="reference", decay_learnable=True)
    compiled.compile()
    out, grad_x, grad_decay = forward_backward(compiled, inputs, upstream)
    ref_out, ref_grad_x, ref_grad_decay = forward_backward(eager, inputs, upstream)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_decay, ref_grad_decay, rtol=1e-5, atol=1e-5)



def compile_training_run(neuron_name: str, surrogate: str, options: dict, compiled: bool, steps: int,
                         after_step=lambda step: None) -> tuple[nn.Module, list[float]]:
    """Linear -> neuron (T = 4) -> Linear trained by SGD for ``steps`` steps on fixed batches, compiled with the
    backend "eager" (the captured graphs run as traced) if ``compiled``, with the engine's surrogate hooks;
    ``after_step(step)`` after each step.  Returns the model and the losses."""
    from repro.models import create_neuron

    generator = torch.Generator().manual_seed(7)
    batches = [(torch.randn(4, 16, 12, generator=generator) * 1.5, torch.randint(0, 5, (16,), generator=generator))
               for _ in range(steps)]
    torch.manual_seed(0)
    neuron = create_neuron(neuron_name, surrogate=surrogate, num_steps=4, surrogate_kwargs=options)
    model = nn.Sequential(nn.Linear(12, 12), neuron, nn.Linear(12, 5))
    if compiled:
        model.compile(backend="eager")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    neuron.surrogate.on_epoch_start(0)  # the engine's hook (ends a2sg_reconstructed's calibration)
    losses = []
    for step, (x, y) in enumerate(batches):
        loss = nn.functional.cross_entropy(model(x).mean(0), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        neuron.surrogate.after_optimizer_step(step)
        losses.append(loss.item())
        after_step(step)
    return model, losses


@pytest.mark.parametrize("neuron_name,surrogate,options", [
    ("lif", "a2sg", {}), ("circulate_firing", "a2sg", {}),
    ("lif", "a2sg_reconstructed", {"calib_epochs": 0, "update_every": 1})])
def test_torch_compile_runs_an_observing_neuron_eagerly(neuron_name, surrogate, options):
    """Under torch.compile a neuron whose surrogate has per-call side effects (A2SG's statistics and gradient
    callbacks) runs as one eager call (``forward_eagerly``, the fused path): graph breaks only there, no
    recompile over 3 training steps (tracing the callbacks broke the graph at each and hit the recompile
    limit), and the same losses and windows as the eager model, bitwise (backend "eager": the captured graphs
    run as traced).  The paper's search on LIF and circulate firing, our reconstruction on LIF."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    frames = []  # after the first step's tracing
    runs = {compiled: compile_training_run(neuron_name, surrogate, options, compiled, steps=3,
                                           after_step=lambda step: frames.append(counters["frames"]["total"]))
            for compiled in (False, True)}
    (model, losses), (reference, reference_losses) = runs[True], runs[False]
    windows = model[1].surrogate.w_t
    assert not torch.equal(windows, torch.full_like(windows, 0.5))  # the controller moved them
    assert losses == reference_losses and torch.equal(windows, reference[1].surrogate.w_t)
    assert counters["graph_break"] and all("forward_eagerly" in reason for reason in counters["graph_break"])
    assert frames[3] == frames[-1]  # the compiled run: nothing traced again on the later steps


def test_torch_compile_traces_a2sg_between_its_statistics_steps_and_in_evaluation(monkeypatch):
    """A2SG has side effects only on a training forward that takes statistics (here every 2nd, update_every=2)
    and on the first forward (which sizes its buffers): only those run eagerly under torch.compile; the others
    and evaluation are traced (no graph break), with the eager model's losses and windows."""
    import torch._dynamo

    import repro.models.neurons as neurons_module

    eager_calls = []
    monkeypatch.setattr(neurons_module, "forward_eagerly",
                        torch.compiler.disable(lambda neuron, *inputs: eager_calls.append(1) or
                                               fused_module.forward_eagerly(neuron, *inputs)))
    torch._dynamo.reset()
    options = {"calib_epochs": 0, "update_every": 2, "eta_w": 0.5}
    results = {}
    for compiled in (False, True):
        eager_calls.clear()
        per_step = []
        model, losses = compile_training_run("lif", "a2sg_reconstructed", options, compiled, steps=4,
                                             after_step=lambda step: (per_step.append(len(eager_calls)),
                                                                      eager_calls.clear()))
        model.eval()
        with torch.no_grad():
            logits = model(torch.randn(4, 16, 12, generator=torch.Generator().manual_seed(3)))
        results[compiled] = losses, model[1].surrogate, logits, per_step, len(eager_calls)
    (losses, surrogate, logits, eager_steps, eager_eval), reference = results[True], results[False]
    assert eager_steps == [1, 1, 0, 1] and eager_eval == 0  # first forward, statistics steps 2 and 4
    assert reference[3] == [0, 0, 0, 0] and int(surrogate.num_controller_steps) == 2
    assert not torch.equal(surrogate.w_t, torch.full_like(surrogate.w_t, 0.5))  # the controller moved them
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference[0]), rtol=1e-6, atol=0)
    torch.testing.assert_close(surrogate.w_t, reference[1].w_t, rtol=1e-6, atol=0)
    torch.testing.assert_close(logits, reference[2], rtol=1e-5, atol=1e-6)


def test_store_half_margin_keeps_signs_and_zeros():
    margin = torch.tensor([1e-9, -1e-9, 0.0, 1e6, -1e6, 0.1, -3e-8, 7.0])
    out = torch.empty(margin.shape, dtype=torch.float16)
    fused_module.store_half_margin(margin, out)
    assert torch.equal(torch.sign(out.float()), torch.sign(margin))
    assert out[0] == 2.0 ** -24 and out[1] == -(2.0 ** -24) and out[2] == 0
    assert out[3] == 65504 and out[4] == -65504 and torch.isfinite(out).all()
    assert abs(float(out[5]) - 0.1) < 0.1 * 2 ** -11 and out[7] == 7


@pytest.mark.parametrize("reset,reset_decayed", RESETS)
def test_fp16_saved_margins_halve_memory_keep_spikes_and_approximate_gradients(reset, reset_decayed):
    """saved_precision='fp16': half the saved bytes, the same spikes, gradients within the fp16 rounding of
    the margins (atan, TLSG with learned k, learnable decay), reset masks exact."""
    rng = random.Random(f"fp16{reset}{reset_decayed}")
    for surrogate, fire_ge, reset_detach in itertools.product(["atan", "learnable"], [False, True], [False, True]):
        steps, channels = rng.randint(1, 8), rng.randint(2, 5)
        torch.manual_seed(rng.randrange(1 << 30))
        inputs, upstream = torch.randn(steps, 3, channels, 4) * 0.9 + 0.6, torch.randn(steps, 3, channels, 4)
        results = []
        for precision in ("fp32", "fp16"):
            kwargs = {"num_steps": steps} if surrogate == "learnable" else {}
            neuron = LIF(surrogate=create_surrogate(surrogate, **kwargs), reset=reset, reset_decayed=reset_decayed,
                         fire_ge=fire_ge, reset_detach=reset_detach, decay_learnable=True,
                         saved_precision=precision)
            _, nbytes = saved_tensor_bytes(lambda: neuron(inputs.clone().requires_grad_()))
            out, grad_x, grad_decay = forward_backward(neuron, inputs, upstream)
            rho = getattr(neuron.surrogate, "rho", None)
            results.append((nbytes, out, grad_x, grad_decay, None if rho is None else rho.grad))
        (bytes32, out, *grads), (bytes16, out16, *grads16) = results
        extras = bytes32 - inputs.numel() * 4  # the decay scalar and k[T]
        assert bytes16 == inputs.numel() * 2 + extras and 0 < extras <= 256  # decay, k[T] and their graphs
        assert torch.equal(out, out16)
        for grad, grad16 in zip(grads, grads16):
            if grad is not None:
                torch.testing.assert_close(grad16, grad, rtol=2e-2, atol=2e-3 * float(grad.abs().max()))


def test_fp16_saved_margins_exact_with_a_rectangular_surrogate():
    """With the snnTorch preset (detached zero reset, fixed decay) and the rectangle, the gradient reads the
    margins only through their sign and |margin| < width / 2, so it equals the fp32 path bitwise when no
    margin lies within fp16 rounding of +-width / 2 (checked)."""
    torch.manual_seed(32)
    inputs, upstream = torch.randn(6, 4, 8, 5) * 0.9 + 0.6, torch.randn(6, 4, 8, 5)
    probe = LIF(surrogate=create_surrogate("rectangular", width=1.0), fused=False)
    probe.record_potentials = True
    probe(inputs)
    margins = torch.stack(probe.potentials) - 1.0
    assert ((margins.abs() - 0.5).abs() > 1e-3).all()  # the precondition
    grads = []
    for precision in ("fp32", "fp16"):
        neuron = LIF(surrogate=create_surrogate("rectangular", width=1.0), saved_precision=precision)
        out, grad_x, _ = forward_backward(neuron, inputs, upstream)
        assert type(out.grad_fn).__name__ == "FusedLIFFunctionBackward"
        grads.append(grad_x)
    assert grads[0].abs().sum() > 0 and torch.equal(grads[0], grads[1])


def test_fp16_saved_margins_refuse_double_backward_and_keep_the_input_when_needed():
    inputs = torch.randn(3, 2, 5) + 0.8
    neuron = LIF(saved_precision="fp16", preset="reference", decay_learnable=True)
    x = inputs.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="saved_precision='fp32'"):
        torch.autograd.grad(neuron(x).sum() * 2, x, create_graph=True)
    # decay_input with a learnable decay: dL/dlambda reads the input, which is kept in fp32
    kept = [saved_tensor_bytes(lambda: LIF(saved_precision=precision, decay_input=True, decay_learnable=True)(
        inputs.clone().requires_grad_()))[1] for precision in ("fp16", "fp32")]
    assert kept[0] == kept[1] >= inputs.numel() * 4
    with pytest.raises(ValueError, match="saved_precision"):
        LIF(saved_precision="bf16")


def test_neuron_code_imports_only_lower_layers():
    """docs/performance.md's layers: step equations -> kernels -> fused paths -> modules; no module of the neuron
    code imports one above it (function-level imports included)."""
    import ast
    from pathlib import Path

    layers = ["dynamics", "triton_surrogates", "triton_lif", "triton_cf", "fused", "fused_cf", "neurons",
              "circulate_firing"]
    folder = Path(__file__).resolve().parents[1] / "models"
    for rank, name in enumerate(layers):
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported |= {node.module} if node.module else {alias.name for alias in node.names}
        assert imported <= set(layers[:rank]), f"models/{name}.py imports {sorted(imported - set(layers[:rank]))}"
