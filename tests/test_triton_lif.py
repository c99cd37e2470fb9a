"""The Triton LIF kernels (models/triton_lif.py) against the torch fused path (models/fused.py) and the
reference loop of ``LIF.forward`` (the oracle): spikes identical and membrane bitwise equal to both
``integrate`` and the loop's recorded potentials, the input and decay gradients of ``FusedLIFFunction``
to float tolerance, for every reset x reset_detach x fire_ge x decay_input and T in {1, 3, 10}.

Without a GPU the kernels run in the Triton interpreter on CPU tensors.  ``TRITON_INTERPRET=1`` is read
when the kernels are decorated, so ``test_kernels_in_triton_interpreter`` reruns this file in a
subprocess with it set (this process, and any other test module importing triton, never sees it).
Inside that subprocess, or in-process on a CUDA machine, the kernel tests run directly.
"""
import os
import random
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the Triton LIF kernels cannot be tested")

from repro.models import LIF  # noqa: E402
from repro.models.fused import FusedLIFFunction, StepConfig, integrate  # noqa: E402
from repro.models.triton_lif import lif_backward, lif_forward, triton_available  # noqa: E402
from repro.surrogates import create_surrogate  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = torch.device("cpu" if INTERPRETED else "cuda")
BLOCK = 128  # several programs and a masked tail on N of a few hundred
RESETS = [("zero", True), ("subtract", True), ("subtract", False), ("none", True)]
kernels_run_here = pytest.mark.skipif(
    not (INTERPRETED or torch.cuda.is_available()),
    reason="no CUDA device: these run on CPU in test_kernels_in_triton_interpreter's subprocess")


@pytest.mark.skipif(INTERPRETED, reason="already inside the interpreter subprocess")
def test_kernels_in_triton_interpreter():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not in_triton_interpreter", __file__],
        env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    output = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert " passed" in result.stdout and "skipped" not in result.stdout, output


def test_triton_available():
    assert triton_available(torch.device("cuda"))
    assert triton_available(torch.device("cpu")) == INTERPRETED


def bitwise_equal(a, b) -> bool:
    """Equal bit patterns (signed zeros included)."""
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


def make_case(rng: random.Random, steps: int, decay_input: bool):
    """Inputs [T, B, C] (C odd: N is never a multiple of BLOCK), decay, threshold; some inputs of step 0
    land exactly on the threshold, where fire_ge decides."""
    lam, theta = rng.choice([0.2, 0.5, 0.9]), rng.choice([0.5, 1.0])
    shape = (steps, rng.randint(2, 4), 2 * rng.randint(20, 50) + 1)
    torch.manual_seed(rng.randrange(1 << 30))
    x = (torch.randn(shape) * 0.9 + 0.6) / (1 - lam if decay_input else 1)
    decay = torch.tensor(lam)
    x[0, 0, :8] = theta / (1 - decay) if decay_input else theta
    return x.to(DEVICE), decay.to(DEVICE), theta


def kernel_grads(membrane, surrogate, upstream, x, decay, theta, thresholds, reset, reset_decayed, reset_detach,
                 fire_ge, decay_input):
    """(dL/dI, dL/dlambda) from ``lif_backward`` completed as ``FusedLIFFunction.backward`` does."""
    step_thresholds = torch.tensor(thresholds or [theta] * len(membrane), device=DEVICE).view(-1, *[1] * x[0].dim())
    h = surrogate.derivative(membrane - step_thresholds)
    args = (membrane, h, upstream, float(decay), theta, thresholds, reset, reset_decayed, reset_detach, fire_ge)
    grad_mem, grad_decay = lif_backward(*args, want_decay=True, block=BLOCK)
    grad_mem_only, none = lif_backward(*args, want_decay=False, block=BLOCK)
    assert none is None and torch.equal(grad_mem_only, grad_mem)
    assert grad_decay.dtype == torch.float64 and grad_decay.dim() == 0
    if decay_input:
        grad_decay = grad_decay - torch.dot(grad_mem.flatten(), x.flatten())
        grad_mem = grad_mem * (1 - decay)
    return grad_mem, grad_decay.float()


def fused_grads(neuron, x, decay, upstream):
    x, decay = x.clone().requires_grad_(), decay.clone().requires_grad_()
    out = FusedLIFFunction.apply(x, decay, None, neuron)
    return out, torch.autograd.grad(out, (x, decay), upstream)


@kernels_run_here
@pytest.mark.parametrize("decay_input", [False, True])
@pytest.mark.parametrize("fire_ge", [False, True])
@pytest.mark.parametrize("reset_detach", [False, True])
@pytest.mark.parametrize("reset,reset_decayed", RESETS)
def test_kernels_match_fused_path(reset, reset_decayed, reset_detach, fire_ge, decay_input):
    rng = random.Random(f"{reset}{reset_decayed}{reset_detach}{fire_ge}{decay_input}")
    for steps in (1, 3, 10):
        x, decay, theta = make_case(rng, steps, decay_input)
        config = StepConfig(theta, reset, reset_decayed, reset_detach, decay_input, fire_ge)
        ref_spikes, _ = integrate(x, decay, config, lambda u, t: theta, keep=False)
        _, ref_membrane = integrate(x, decay, config, lambda u, t: theta, keep=True)
        scale = float(1 - decay) if decay_input else None
        args = (x, float(decay), scale, theta, reset, reset_decayed, fire_ge)
        spikes, none = lif_forward(*args, keep=False, block=BLOCK)
        none_too, membrane = lif_forward(*args, keep=True, block=BLOCK)
        case = f"T={steps} shape={tuple(x.shape)} lambda={float(decay)} theta={theta}"
        assert none is None and none_too is None
        assert torch.equal(spikes, ref_spikes), case
        assert bitwise_equal(membrane, ref_membrane), case
        assert steps == 1 or 0 < spikes.mean() < 1, case

        kwargs = dict(decay=float(decay), decay_param="clamp", threshold=theta, reset=reset,
                      reset_decayed=reset_decayed, reset_detach=reset_detach, fire_ge=fire_ge, decay_input=decay_input)
        loop = LIF(fused=False, **kwargs).to(DEVICE)
        loop.record_potentials = True
        assert torch.equal(loop(x), spikes), case
        assert bitwise_equal(membrane, torch.stack(loop.potentials)), case

        neuron = LIF(surrogate=create_surrogate("atan"), triton=False, **kwargs).to(DEVICE)  # torch fused path
        upstream = torch.randn(x.shape, device=DEVICE)
        out, (ref_grad_x, ref_grad_decay) = fused_grads(neuron, x, decay, upstream)
        assert torch.equal(out, spikes), case
        grad_x, grad_decay = kernel_grads(membrane, neuron.surrogate, upstream, x, decay, theta, None, reset,
                                          reset_decayed, reset_detach, fire_ge, decay_input)
        torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-5, atol=1e-6, msg=case)
        torch.testing.assert_close(grad_decay, ref_grad_decay, rtol=1e-5, atol=1e-5, msg=case)


class StepThresholdLIF(LIF):
    """A scalar firing threshold theta_t that grows with t; the reset still uses theta."""

    def fire_context(self, u, step):
        threshold = self.threshold * (1 + 0.1 * step)
        return threshold, dict(mem=u, step=step, neuron=self)


@kernels_run_here
@pytest.mark.parametrize("reset,reset_decayed", RESETS)
def test_backward_with_per_step_thresholds(reset, reset_decayed):
    rng = random.Random(f"{reset}{reset_decayed}")
    x, decay, theta = make_case(rng, 6, decay_input=True)
    neuron = StepThresholdLIF(threshold=theta, reset=reset, reset_decayed=reset_decayed, decay_input=True,
                              surrogate=create_surrogate("sigmoid")).to(DEVICE)
    thresholds = [theta * (1 + 0.1 * t) for t in range(len(x))]
    config = StepConfig(theta, reset, reset_decayed, neuron.reset_detach, True, neuron.fire_ge)
    _, membrane = integrate(x, decay, config, lambda u, t: thresholds[t], keep=True)
    upstream = torch.randn(x.shape, device=DEVICE)
    _, (ref_grad_x, ref_grad_decay) = fused_grads(neuron, x, decay, upstream)
    grad_x, grad_decay = kernel_grads(membrane, neuron.surrogate, upstream, x, decay, theta, thresholds, reset,
                                      reset_decayed, neuron.reset_detach, neuron.fire_ge, True)
    torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_decay, ref_grad_decay, rtol=1e-5, atol=1e-5)


@kernels_run_here
@pytest.mark.parametrize("reset,reset_decayed", RESETS)
def test_fused_path_chooses_the_kernels_and_equals_the_reference_loop(monkeypatch, reset, reset_decayed):
    """LIF's fused path runs the kernels by itself where they apply (fixed threshold and surrogate
    parameters) and gives the reference loop's spikes and gradients; DS-ATGO's per-step thresholds and
    triton=False keep the torch code."""
    import repro.models.triton_lif as triton_lif
    from repro.models import AdaptiveThresholdLIF

    calls = []
    original = triton_lif.lif_forward
    monkeypatch.setattr(triton_lif, "lif_forward", lambda *a, **k: calls.append(k["keep"]) or original(*a, **k))
    rng = random.Random(f"wiring{reset}{reset_decayed}")
    x, decay, theta = make_case(rng, 5, decay_input=False)
    upstream = torch.randn(x.shape, device=DEVICE)
    results = []
    for fused in (True, False):
        neuron = LIF(surrogate="sigmoid", preset="reference", decay=float(decay), decay_learnable=True,
                     threshold=theta, reset=reset, reset_decayed=reset_decayed, fused=fused).to(DEVICE)
        inputs = x.clone().requires_grad_()
        out = neuron(inputs)
        results.append((out, *torch.autograd.grad(out, (inputs, neuron.decay_raw), upstream)))
    assert calls == [False, True]  # the forward, then the backward's replay
    assert torch.equal(results[0][0], results[1][0])
    for fused_grad, reference_grad in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(fused_grad, reference_grad, rtol=1e-5, atol=1e-5)
    calls.clear()
    AdaptiveThresholdLIF(num_steps=5).to(DEVICE)(x.clone().requires_grad_()).sum().backward()
    LIF(triton=False).to(DEVICE)(x.clone().requires_grad_()).sum().backward()
    assert calls == []
