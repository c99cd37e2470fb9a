"""The fused CFNeuron path (models/fused_cf.py) against the reference loop of CFNeuron.forward (the oracle,
itself tested against closed forms in test_circulate_firing.py): outputs bitwise, input and sharpness
gradients to float tolerance, for every mode, reset switch and surrogate kind; the fallback where the
fused path does not apply; double backward."""
import itertools
import logging
import random

import pytest
import torch
from torch import nn

import repro.models.fused as fused_module
from repro.models import CFNeuron, create_neuron
from repro.models.fused_cf import FusedCFFunction, integrate, unfused_reason
from repro.surrogates import create_surrogate
from reference import assert_fused_model_step_matches, assert_inference_matches, fused_test_loss_backward

MODES = [("signed", "single"), ("unsigned", "single"), ("wrap_signed", "single"), ("wrap_signed", "modulo"),
         ("wrap_binary", "single"), ("wrap_binary", "modulo")]
SURROGATES = {
    "sigmoid": dict(name="sigmoid"),
    "tlsg": dict(name="learnable"),  # per_layer_t, st_smooth: k[t] learns through the fused backward
    "tlsg_none": dict(name="learnable", learn="none"),
}


def make_pair(surrogate: dict, steps: int, **kwargs):
    """Two identical neurons, fused and reference, each with its own surrogate; a TLSG gets distinct k[t]."""
    pair = []
    for fused in (True, False):
        options = dict(surrogate)
        sg = create_surrogate(options.pop("name"), **options)
        neuron = CFNeuron(surrogate=sg, num_steps=steps, fused=fused, **kwargs)
        if hasattr(sg, "rho"):
            with torch.no_grad():
                sg.rho.copy_(torch.linspace(2.0, 4.0, sg.rho.numel()))
        pair.append(neuron)
    return pair


def inputs_for(steps: int, shape: tuple, theta: float, seed: int) -> torch.Tensor:
    """Random currents spanning saturation, with exact level hits (+-j theta, +-(2j - 1) theta) at step 0."""
    torch.manual_seed(seed)
    x = torch.randn(steps, *shape) * 2.5 * theta
    hits = torch.tensor([1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 0.0]) * theta
    x.view(steps, -1)[0, :hits.numel()] = hits[: x[0].numel()]
    return x


def forward_backward(neuron, inputs, upstream):
    """Outputs, input and rho gradients of sum(out * upstream) (+ a term on the recorded potentials)."""
    out, grad_x = fused_test_loss_backward(neuron, inputs, upstream)
    rho = getattr(neuron.surrogate, "rho", None)
    return out, grad_x, (rho.grad.clone() if isinstance(rho, nn.Parameter) else None)


def assert_same(fused, reference, inputs, upstream, case=""):
    assert unfused_reason(fused, inputs) is None, case
    out, grad_x, grad_rho = forward_backward(fused, inputs, upstream)
    assert type(out.grad_fn).__name__ == "FusedCFFunctionBackward"
    ref_out, ref_grad_x, ref_grad_rho = forward_backward(reference, inputs, upstream)
    assert torch.equal(out, ref_out), case
    if reference.record_potentials:
        assert torch.equal(torch.stack(fused.potentials), torch.stack(reference.potentials)), case
    torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-5, atol=1e-6, msg=case)
    if ref_grad_rho is None:
        assert grad_rho is None, case
    else:
        assert ref_grad_rho.abs().sum() > 0, case
        torch.testing.assert_close(grad_rho, ref_grad_rho, rtol=1e-5, atol=1e-5, msg=case)
    return out


@pytest.mark.parametrize("surrogate", list(SURROGATES))
@pytest.mark.parametrize("mode,wrap_mode", MODES)
def test_fused_equals_reference_loop_for_every_mode(mode, wrap_mode, surrogate):
    rng = random.Random(f"{mode}{wrap_mode}{surrogate}")
    for reset_detach, steps in itertools.product([False, True], [1, 2, 5]):
        batch, channels = rng.randint(1, 3), rng.randint(2, 6)
        shape = (batch, channels) + ((rng.randint(1, 3), rng.randint(1, 3)) if rng.random() < 0.5 else ())
        theta = rng.choice([0.5, 0.75, 1.0])
        kwargs = dict(mode=mode, wrap_mode=wrap_mode, D=rng.choice([1, 2, 4]), theta=theta,
                      tau=rng.choice([1.0, 2.0, 4.0]), reset_detach=reset_detach,
                      output_scale=rng.choice(["S", "theta_S"]))
        fused, reference = make_pair(SURROGATES[surrogate], steps, **kwargs)
        inputs = inputs_for(steps, shape, theta, rng.randrange(1 << 30))
        upstream = torch.randn(steps, *shape)
        out = assert_same(fused, reference, inputs, upstream, case=f"T={steps} {shape} {kwargs}")
        assert (out != 0).any()


@pytest.mark.parametrize("surrogate", [
    dict(name="atan"), dict(name="rectangular"), dict(name="triangle"), dict(name="fast_sigmoid"),
    dict(name="tgo"), dict(name="mpd_agl"), dict(name="mpd_agl", width="lsg"),
    dict(name="mpd_agl", granularity="channel"),
    dict(name="learnable", shape="rect"), dict(name="learnable", shape="atan"),
    dict(name="learnable", granularity="per_layer"), dict(name="learnable", granularity="fixed"),
    dict(name="learnable", init="mpd", lr_mult=0.1)], ids=lambda s: "-".join(map(str, s.values())))
def test_fused_equals_reference_loop_for_other_surrogates(surrogate):
    inputs, upstream = inputs_for(3, (2, 4, 3), 1.0, 5), torch.randn(3, 2, 4, 3)
    norm = nn.BatchNorm1d(4)
    with torch.no_grad():
        # mpd_agl: per-step widths from the feeding BN's gammas, two of them guarded (|gamma| >= 1e-3), counted
        norm.weight.copy_(torch.tensor([-0.6, 0.0004, 0.8, 1.2]))
    for mode in ("signed", "wrap_signed"):
        fused, reference = make_pair(surrogate, 3, mode=mode)
        fused.set_input_norm(norm), reference.set_input_norm(norm)
        assert_same(fused, reference, inputs, upstream, case=mode)
        if surrogate == dict(name="mpd_agl", granularity="channel"):
            assert fused.surrogate.guard_count > 0
        if hasattr(reference.surrogate, "guard_count"):  # once per call, as the reference loop counts
            assert torch.equal(fused.surrogate.guard_count, reference.surrogate.guard_count), mode


def test_frozen_and_asgl_mix_in_eval_stay_fused():
    """freeze_epochs: k[t] gets a zero gradient (rho stays in the graph); asgl_mix draws no mask in eval,
    where it is st_smooth."""
    inputs, upstream = inputs_for(2, (3, 8), 1.0, 7), torch.randn(2, 3, 8)
    fused, reference = make_pair(dict(name="learnable", freeze_epochs=1), 2)
    for neuron in (fused, reference):
        neuron.surrogate.on_epoch_start(0)
    out, grad_x, grad_rho = forward_backward(fused, inputs, upstream)
    ref_out, ref_grad_x, ref_grad_rho = forward_backward(reference, inputs, upstream)
    assert torch.equal(out, ref_out) and torch.equal(grad_rho, torch.zeros(2)) and torch.equal(ref_grad_rho, grad_rho)
    torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-5, atol=1e-6)
    fused, reference = make_pair(dict(name="learnable", learn="asgl_mix"), 2)
    fused.eval(), reference.eval()
    assert_same(fused, reference, inputs, upstream)


def test_a2sg_between_its_statistics_steps_stays_fused():
    """A2SG has side effects only on its first forward (sizing its windows) and on the forwards that take
    statistics (here every 3rd): in between, and in evaluation, the layer takes the fused path, with the
    per-step windows of the reference loop."""
    inputs, upstream = inputs_for(3, (2, 4, 3), 1.0, 5), torch.randn(3, 2, 4, 3)
    fused, reference = make_pair(dict(name="a2sg", update_every=3), 3, D=2)
    for neuron in (fused, reference):
        neuron(inputs)  # sizes the windows (reference loop)
        with torch.no_grad():
            neuron.surrogate.w_t.copy_(torch.tensor([0.3, 0.7, 1.1]))
    assert unfused_reason(fused, inputs) is None
    assert_same(fused, reference, inputs, upstream)
    fused.eval(), reference.eval()
    assert_same(fused, reference, inputs, upstream)


@pytest.mark.parametrize("recorded", ["pre_fire", "post_reset"])
@pytest.mark.parametrize("surrogate", ["sigmoid", "tlsg"])
def test_recorded_potentials_fused_equal_reference_and_carry_gradient(surrogate, recorded):
    """record_potentials (the balanced loss): the fused path records the same H or U and back-propagates a
    loss on them as the reference loop does."""
    rng = random.Random(f"{surrogate}{recorded}")
    for (mode, wrap_mode), reset_detach in itertools.product(MODES, [False, True]):
        steps = rng.randint(1, 6)
        inputs = inputs_for(steps, (2, 5), 1.0, rng.randrange(1 << 30))
        upstream = torch.randn(inputs.shape)
        pair = make_pair(SURROGATES[surrogate], steps, mode=mode, wrap_mode=wrap_mode, reset_detach=reset_detach)
        for neuron in pair:
            neuron.record_potentials, neuron.recorded_potential = True, recorded
        assert_same(*pair, inputs, upstream, f"{mode} {wrap_mode} detach={reset_detach}")


def test_replayed_potential_bitwise_equal_to_recorded_reference_potentials():
    inputs = inputs_for(6, (4, 10), 0.75, 3)
    for mode, wrap_mode in MODES:
        neuron = CFNeuron(mode=mode, wrap_mode=wrap_mode, theta=0.75, tau=3.0, surrogate="sigmoid", fused=False)
        neuron.record_potentials = True
        neuron(inputs)
        levels = neuron.levels.view(-1, 1, 1)
        _, replayed = integrate(inputs, neuron.decay, levels, neuron.step_config(), outputs=False, keep="pre_fire")
        assert torch.equal(replayed, torch.stack(neuron.potentials)), mode


def test_no_grad_eval_bf16_and_options():
    inputs = inputs_for(4, (2, 3, 5), 1.0, 11)
    assert_inference_matches(*make_pair(SURROGATES["tlsg"], 4), inputs)
    assert not create_neuron("circulate_firing", surrogate="sigmoid", fused=False).fused
    assert "fused=True" in repr(create_neuron("circulate_firing", surrogate="sigmoid"))


def test_fallback_reasons():
    x = torch.randn(2, 3, 4)
    neuron = CFNeuron(surrogate="learnable", num_steps=2)
    assert unfused_reason(neuron, x) is None
    neuron.record_potentials = True
    assert unfused_reason(neuron, x) is None  # the Function returns the potentials too
    mix = CFNeuron(surrogate=create_surrogate("learnable", learn="asgl_mix"), num_steps=2)
    assert "asgl_mix" in unfused_reason(mix, x)
    assert unfused_reason(mix.eval(), x) is None
    assert "A2SG has per-call side effects" in unfused_reason(CFNeuron(surrogate="a2sg", num_steps=2), x)  # sizing
    observed = CFNeuron(surrogate="sigmoid")
    observed.surrogate.observers.append(lambda *args: None)
    assert "observers" in unfused_reason(observed, x)
    assert unfused_reason(CFNeuron(surrogate=create_surrogate("learnable", learn="none")), x) is None


def test_fallback_runs_reference_loop_and_logs_once(monkeypatch, caplog):
    monkeypatch.setattr(fused_module, "_reported", set())
    x = inputs_for(2, (3, 4), 1.0, 13)
    mix = CFNeuron(surrogate=create_surrogate("learnable", learn="asgl_mix"), num_steps=2)
    observed = CFNeuron(surrogate="sigmoid", num_steps=2)
    observed.surrogate.observers.append(lambda *args: None)
    with caplog.at_level(logging.INFO, logger=fused_module.__name__):
        for _ in range(2):
            for neuron in (mix, observed):
                out = neuron(x.clone().requires_grad_())
                assert type(out.grad_fn).__name__ != "FusedCFFunctionBackward"
    messages = [r.getMessage() for r in caplog.records if "fused path not used" in r.getMessage()]
    assert len(messages) == 2
    assert messages[0].startswith("CFNeuron: ") and "learnable surrogate with learn='asgl_mix'" in messages[0]
    assert "observers" in messages[1]


@pytest.mark.parametrize("surrogate,recorded", [("sigmoid", None), ("tlsg", None), ("tlsg", "pre_fire"),
                                               ("sigmoid", "post_reset")])
def test_double_backward_equals_reference_hessian_vector_product(surrogate, recorded):
    """create_graph=True through the fused path gives the reference loop's gradients and Hessian-vector
    products, w.r.t. the input and (TLSG) rho; with ``recorded``, the loss also reads those potentials."""
    inputs, vector = inputs_for(3, (2, 6), 1.0, 23), torch.randn(3, 2, 6)
    results = []
    for neuron in make_pair(SURROGATES[surrogate], 3, D=2):
        neuron.record_potentials, neuron.recorded_potential = recorded is not None, recorded or "pre_fire"
        x = inputs.clone().requires_grad_()
        wanted = [x] + [p for p in neuron.parameters()]
        loss = (neuron(x) * torch.linspace(-1, 1, 6)).sum() ** 2 / 10  # curvature in the outputs
        if recorded:
            loss = loss + (torch.stack(neuron.potentials) ** 2).sum() / 10
        grads = torch.autograd.grad(loss, wanted, create_graph=True)
        hvp = torch.autograd.grad((grads[0] * vector).sum() + sum(g.sum() for g in grads[1:]), wanted)
        results.append(grads + hvp)
    assert results[0][-1].abs().sum() > 0
    for fused_grad, ref_grad in zip(*results):
        torch.testing.assert_close(fused_grad, ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("surrogate", ["sigmoid", "tlsg"])
def test_gradgradcheck_of_the_rebuilt_backward(surrogate):
    """The double backward is the derivative of the (surrogate) first-order gradient w.r.t. the input, k and
    the upstream gradient, by finite differences in float64.  With the reset detached the potentials are
    exactly linear in the input between level crossings (an attached reset differentiates the count through
    the surrogate, which finite differences do not see; the HVP test above covers it).  SpikeFunction
    evaluates h in fp32: a wider step and tolerance for the sigmoid; the TLSG term stays in float64."""
    neuron = make_pair(SURROGATES[surrogate], 2, D=2, theta=0.75, reset_detach=True)[0]
    x = (inputs_for(2, (1, 5), 0.75, 29) + 0.01).double().requires_grad_()  # off the exact level hits
    if surrogate == "tlsg":
        k = torch.tensor([3.0, 5.0], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(lambda x, k: FusedCFFunction.apply(x, k, neuron), (x, k))
    else:
        assert torch.autograd.gradgradcheck(lambda x: FusedCFFunction.apply(x, None, neuron), (x,), eps=1e-3,
                                            atol=1e-3, rtol=1e-3)


def test_resnet19_fused_equals_reference_training_step():
    assert_fused_model_step_matches(16, neuron="circulate_firing", surrogate="learnable")


@pytest.mark.parametrize("granularity", ["per_layer_t", "per_layer", "fixed"])
def test_sharpness_per_step_equals_the_per_step_sharpness(granularity):
    """The fused paths' batched k[T] has the values, gradients and checks of sharpness(t) for each t."""
    batched, stepped = (create_surrogate("learnable", granularity=granularity, num_steps=4) for _ in range(2))
    rho = torch.randn(batched.rho.shape)
    for surrogate in (batched, stepped):
        with torch.no_grad():
            surrogate.rho.copy_(rho)
    k = batched.sharpness_per_step(4)
    reference = torch.stack([stepped.sharpness(t) for t in range(4)])
    assert torch.equal(k, reference)
    if batched.learned:
        weights = torch.arange(1.0, 5.0)
        (k * weights).sum().backward()
        (reference * weights).sum().backward()
        torch.testing.assert_close(batched.rho.grad, stepped.rho.grad, rtol=1e-6, atol=0)  # summed in another order
    with pytest.raises(ValueError, match="beyond num_steps"):
        create_surrogate("learnable", num_steps=4).sharpness_per_step(5)
