"""Fused multi-step path of ``LIF``: the whole time loop in one ``torch.autograd.Function``.

The reference loop of ``LIF.forward`` builds a per-step autograd graph (two to four saved fp32
tensors per step and a dozen graph nodes).  The fused path computes the same forward without a
graph and runs the reverse-time recurrence itself in ``backward`` [reconstructed; the BPTT
equations below follow from the forward of ``models/neurons.py``].

Forward (``dynamics.charge`` + ``LIF.fire``), lambda = decay, c = 1 - lambda if ``decay_input`` else 1,
theta = the neuron's fixed threshold (used by the reset), theta_t = the firing threshold of step t
(``neuron.fire_context``: theta for ``LIF``, a detached per-step tensor for adaptive subclasses)::

    u[t] = lambda * R[t-1] + c * I[t] (- theta * s[t-1] for subtract with reset_decayed=False)
    R[t] = u[t] * (1 - s[t]) (zero) | u[t] - theta * s[t] (subtract, decayed) | u[t] (otherwise)
    s[t] = H(u[t] - theta_t)

Saved for backward: the input I[T, ...] (one tensor, the same size as the membrane) and, per
step, theta_t and the surrogate parameters ``surrogate.call_params(u[t] - theta_t, **context)``
captured at forward time (small; a surrogate that reads no membrane, ``Surrogate.reads_membrane``, gets u[t]
or, on the forward kernel, I[t] in place of both).  ``backward`` first replays the forward from I with the saved
thresholds (same operations, so u and s are bitwise the forward's; no surrogate or ``fire_context``
call, so no side effect runs twice), then, g[t] = dL/ds[t], h[t] = shape(u[t] - theta_t, **params[t]),
e[t] = dL/du[t], e[T] = 0::

    dL/ds[t] = g[t] + B[t] * e[t+1]      B = -lambda u[t] (zero), -lambda theta (subtract, decayed),
                                          -theta (subtract), 0 (none or ``reset_detach``)
    e[t]     = dL/ds[t] * h[t] + A[t] * e[t+1]      A = lambda (1 - s[t]) (zero), lambda (otherwise)
    dL/dI[t] = c e[t]
    dL/dlambda = sum_t e[t+1] * R'[t] - [decay_input] sum_t e[t] * I[t],
                 R'[t] = R[t] (zero, subtract decayed), u[t] (subtract not decayed, none)

Double backward (``create_graph=True``: Hessian-vector products, sharpness): ``backward`` rebuilds the
step graph from the saved I with ``dynamics.charge`` and the core ``SpikeFunction`` (saved thresholds
and parameters) and differentiates it, so second derivatives equal the reference loop's.

The fused forward is bitwise equal to the reference loop (same floating-point operations in the
same order: products with a 0/1 spike are exact, so the CPU's ``addcmul`` and ``sub(alpha=theta)`` round
as the reference's separate operations; off the CPU the zero reset uses separate operations, since
CUDA's ``addcmul`` contracts lambda u + c I into one FMA, and ``u >= theta`` equals ``u - theta >= 0`` in IEEE
arithmetic), so spikes are identical; gradients agree to float rounding (tests/test_fused.py).

Per-call side effects run as in the reference loop: the forward calls ``surrogate.observe`` (observers,
A2SG's statistics) with x = u[t] - theta_t, and a surrogate that wants dL/du[t] (A2SG's gradient
statistics, a tensor hook in the reference loop) registers a callback through the context key
``register_membrane_grad``; the backward calls it with e[t] as soon as e[t] is known, and one that wants
dL/ds[t] (A2SG's window search) through ``register_spike_grad``, called with dL/ds[t] before h[t] applies.

Learned sharpness (the TLSG ``learnable`` surrogate, learned k[t]): h[t] = psi_k'(u[t] - theta_t) with
k = k[t], an input of the Function (``sharpness_per_step``, differentiable w.r.t. rho), and
dL/dk[t] = sum over elements of dL/ds[t] * dpsi_k/dk(u[t] - theta_t), both from the closed forms
``TimestepLearnableSurrogate.proxy_derivatives`` (the derivatives of the straight-through term of the TLSG's
``forward``; ``proxy_vjp`` here, the same function compiled in the kernels).

Recorded potentials (``record_potentials``: the balanced loss, the diagnostics' histograms): the Function
also returns u[T, ...] (``neuron.potentials`` are its steps), and a gradient G[t] arriving there is
added to e[t] (the recorded u[t] is the same pre-fire membrane the recurrence differentiates).

Not fused (``unfused_reason`` says why; ``LIF.forward`` then runs the reference loop and logs the
reason once): a subclass that
overrides ``step`` or ``fire`` (override ``fire_context`` instead to stay fused), a plain callable
surrogate, a surrogate that overrides ``Surrogate.forward`` (other than the TLSG) or has parameters
that require gradients (other than a TLSG's rho), the TLSG with ``learn=asgl_mix`` in training (random
masks), and tracing by ``torch.compile`` (the reference loop is traceable and inductor fuses its
elementwise steps; this is the intended path under compile, not logged), except where the kernels apply
with a fixed threshold and fixed surrogate parameters (``compiled_kernels_apply``): there the layer is
traced as the operator ``repro::lif_spikes`` (``models/triton_lif.py``, forward and backward kernel, no
graph break; no double backward through it).  A surrogate with per-call side effects (``Surrogate.observes``:
observers; A2SG on its first forward and on training forwards that take statistics) is not traced:
``LIF.forward`` runs as one eager call (``forward_eagerly``, one graph break per layer) and takes the fused
path there.

Backends: device-agnostic torch code (above), and the Triton kernels of ``models/triton_lif.py``, chosen
automatically on CUDA when no recorded potential or fp16 margin is involved and the surrogate's derivative
(``shape``, or a learned TLSG's ``proxy_derivatives``) is written in the closed-form vocabulary
(``surrogates/closed_form.py``): the backward kernel replays u from I in registers and evaluates that same
function in the kernel, with the saved theta_t and surrogate parameters as small [T, 1 or C] tables
(DS-ATGO's thresholds and TGO widths, MPD-AGL's widths, A2SG's per-step / per-channel windows, k[t]) and
None / bool parameters (A2SG's ramp ``height``, ``clip``) as compile-time switches; for a learned TLSG it
also sums dL/dk[t] per program.  Where callbacks are registered (A2SG's statistics steps) the kernel also
writes dL/ds[t] and e[t] (two fp32 [T, ...] tensors, on those steps only) and the callbacks get them in the
torch path's order after the kernel.  For a fixed threshold the forward is a kernel too (the spikes need
nothing from the surrogate): it writes the spikes, and where the surrogate reads u[t] (per-call parameters
of a surrogate that reads the membrane, ``Surrogate.reads_membrane``; ``observe``: observers, A2SG's
statistics) also the membrane u[T, ...] in fp32, bitwise ``integrate``'s, whose steps then go to
``fire_context`` and the surrogate in the loop's order.  Per-step parameters that read no membrane (MPD-AGL's and
A2SG's windows; TGO's widths) come for all steps from one ``Surrogate.step_params`` call: before the loop for a
fixed threshold, after it for DS-ATGO's (unless observed).  Where the observation reads only a fixed sample of rows
of each step (``Surrogate.observation_sample``: A2SG's window search, the paper's statistics) both kernels write
only those rows, [T, U, S] in fp32 (``surrogates.base.RowSample``): ``observe`` gets the rows of u[t] - theta_t
(context ``sampled``; I[t] stands in for u[t]), the callbacks the rows of dL/ds[t] and e[t]; the torch code
hands over the same rows of its full tensors.  A threshold computed from u[t] (``fire_context`` overridden:
DS-ATGO's layer or channel statistics) takes one launch of the same kernel per step
(``triton_lif.lif_forward_by_step``): it charges u[t], bitwise ``integrate``'s, into one fp32 buffer [B, C, ...],
``fire_context`` and the surrogate run on it in torch exactly as in the loop, and the next launch fires s[t]
against theta_t (read in fp32); so thresholds, running thresholds, spikes and the saved tables equal the
torch path's.
``LIF(triton=False)`` keeps the torch code.  The A2SG, TLSG and per-step (DS-ATGO) kernels are tested in the
Triton interpreter on CPU only (``TRITON_INTERPRET=1``, which also selects them there), not yet on a GPU.
"""
from __future__ import annotations

import logging
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ..surrogates import FixedSurrogate, SpikeFunction, Surrogate
from ..surrogates.base import RowSample
from ..surrogates.learnable import TimestepLearnableSurrogate, learns_sharpness
from . import triton_lif, triton_surrogates
from .dynamics import charge

logger = logging.getLogger(__name__)
_reported: set[tuple[str, str]] = set()


class StepConfig(NamedTuple):
    """The switches of one LIF, captured at forward time (backward reads no module state)."""

    threshold: float
    reset: str
    reset_decayed: bool
    reset_detach: bool
    decay_input: bool
    fire_ge: bool


def unfused_reason(neuron, x: Tensor) -> str | None:
    """Why the fused path cannot run this forward of ``neuron`` (an ``LIF`` that keeps its ``step`` and
    ``fire``: ``LIF.unfused_reason`` checks that) on ``x`` (None: it can)."""
    if torch.compiler.is_compiling() and compiled_kernels_apply(neuron, x):
        return None
    return surrogate_unfused_reason(neuron.surrogate)


def surrogate_unfused_reason(surrogate) -> str | None:
    """Why the fused neuron paths cannot run ``surrogate`` (None: they can), or torch.compile is tracing."""
    name = type(surrogate).__name__
    tlsg = isinstance(surrogate, TimestepLearnableSurrogate)
    if not isinstance(surrogate, Surrogate):
        return f"the surrogate {name} is a plain callable, not a repro Surrogate"
    if type(surrogate).forward is not (TimestepLearnableSurrogate.forward if tlsg else Surrogate.forward):
        return f"the surrogate {name} overrides forward()"
    if learns_sharpness(surrogate) and surrogate.learn == "asgl_mix" and surrogate.training:
        return "the learnable surrogate with learn='asgl_mix' draws random masks in training"
    if not learns_sharpness(surrogate) and any(p.requires_grad for p in surrogate.parameters()):
        return f"the surrogate {name} has learnable parameters"
    if torch.compiler.is_compiling():
        return "torch.compile is tracing the neuron (the reference loop is traceable)"
    return None


def compiled_kernels_apply(neuron, x: Tensor) -> bool:
    """Under torch.compile, whether ``neuron`` runs as the ``repro::lif_spikes`` operator (the Triton kernels):
    as the eager kernel forward, a fixed threshold and fixed surrogate parameters, no observer, no recorded
    potentials, the exact saved input."""
    surrogate = neuron.surrogate
    return (neuron.triton and not neuron.record_potentials and neuron.saved_precision == "fp32"
            and neuron.fixed_threshold and isinstance(surrogate, FixedSurrogate)
            and type(surrogate).call_params is FixedSurrogate.call_params
            and not surrogate.observes
            and kernels_run_on(x) and kernel_shape_name(surrogate.shape) is not None)


@torch.compiler.assume_constant_result
def kernel_shape_name(shape: Callable) -> str | None:
    """The name of ``shape`` for the ``repro::lif_spikes`` operator if it compiles for the kernels, else None
    (a constant for torch.compile, which does not trace this)."""
    return triton_lif.shape_name(shape) if triton_surrogates.kernel_shape(shape) is not None else None


def observed_under_compile(surrogate) -> bool:
    """Whether torch.compile is tracing a call of a surrogate with side effects (``Surrogate.observes``: A2SG's
    statistics and gradient callbacks, observers); the neuron then runs as ``forward_eagerly``."""
    return torch.compiler.is_compiling() and isinstance(surrogate, Surrogate) and surrogate.observes


@torch.compiler.disable
def forward_eagerly(neuron, *inputs: Tensor):
    """``neuron.forward(*inputs)`` outside torch.compile's graph: one graph break per layer, where tracing the
    surrogate's per-call side effects breaks the graph at each and recompiles on each new callback; run eagerly,
    the layer takes the fused path (the kernels on CUDA)."""
    return neuron.forward(*inputs)


def report_fallback(neuron, reason: str) -> None:
    """Log each (neuron class, fallback reason) once per process."""
    key = (type(neuron).__name__, reason)
    if key not in _reported:
        _reported.add(key)
        logger.info("%s: fused path not used, running the reference loop: %s", *key)


def fused_lif(neuron, x: Tensor, decay: Tensor) -> Tensor:
    """Spikes [T, B, ...] of ``neuron`` on input ``x`` through ``FusedLIFFunction`` (or, under torch.compile,
    the kernels' operator); a learned TLSG's k[t] enters as an input; with ``record_potentials`` the pre-fire
    u[t] go to ``neuron.potentials``.  ``x`` may be fp32, bf16 or fp16: the kernels read and save it in its own
    dtype and write spikes (and dL/dI) in it; the torch code computes in fp32 and returns fp32 spikes."""
    surrogate = neuron.surrogate
    if torch.compiler.is_compiling():  # unfused_reason let it through: the kernels as one operator
        params = [surrogate.params[name] for name in triton_surrogates.shape_parameters(surrogate.shape)]
        return torch.ops.repro.lif_spikes(x, decay, neuron.threshold, params,
                                          kernel_shape_name(surrogate.shape), neuron.reset, neuron.reset_decayed,
                                          neuron.reset_detach, neuron.decay_input, neuron.fire_ge)
    k = surrogate.sharpness_per_step(x.shape[0]) if learns_sharpness(surrogate) else None
    if not neuron.record_potentials:
        return FusedLIFFunction.apply(x, decay, k, neuron)
    spikes, membrane = FusedLIFFunction.apply(x, decay, k, neuron)
    neuron.record_steps(membrane)
    return spikes


class FusedLIFFunction(torch.autograd.Function):
    """(I[T, ...], lambda, k[T] or None) -> s[T, ...] (and u[T, ...] with ``record_potentials``) for one
    ``LIF`` with every switch; see the module docstring."""

    @staticmethod
    def forward(ctx, x: Tensor, decay: Tensor, k: Tensor | None, neuron) -> Tensor:
        config = StepConfig(float(neuron.threshold), neuron.reset, neuron.reset_decayed, neuron.reset_detach,
                            neuron.decay_input, neuron.fire_ge)
        surrogate = neuron.surrogate
        fixed_params = type(surrogate).call_params is FixedSurrogate.call_params  # ignores x: skip computing it
        observed = surrogate.observes
        thresholds, params, contexts, callbacks, spike_callbacks = [], [], [], {}, {}
        # fp16 margins (when a backward will run) need the input only for a learnable decay with
        # decay_input (its gradient reads I)
        half = (neuron.saved_precision == "fp16" and any(ctx.needs_input_grad[:3])
                and not (config.decay_input and ctx.needs_input_grad[1]))
        margins = torch.empty(x.shape, dtype=torch.float16, device=x.device) if half else None
        # per-step parameters that read no membrane (MPD-AGL, A2SG, TGO): every step's from one step_params call, before
        # the loop for a fixed threshold (I[t] standing in for u[t]), else after it where no observe needs them earlier
        ahead = neuron.fixed_threshold and not surrogate.reads_membrane
        deferred = not (fixed_params or surrogate.reads_membrane or ahead or observed or half)
        if ahead:
            contexts = [neuron.fire_context(x[step], step)[1] for step in range(x.shape[0])]
            ahead_params = surrogate.step_params(x, contexts)

        def threshold_at(u: Tensor, step: int):
            threshold, context = neuron.fire_context(u, step)
            thresholds.append(threshold)
            if deferred:
                contexts.append(context)
                return threshold
            # x = u - theta_t where something reads it; a surrogate that reads no membrane gets u itself
            shifted = u - threshold if observed or half or (not fixed_params and surrogate.reads_membrane) else u
            params.append(surrogate.params if fixed_params else ahead_params[step] if ahead
                          else surrogate.call_params(shifted, **context))
            if observed:
                observe(step, shifted, params[-1], context)
            if half:
                store_half_margin(shifted, margins[step])
            return threshold

        def observe(step: int, shifted: Tensor, used: dict, context: dict) -> None:
            if any(ctx.needs_input_grad[:3]):
                context["register_membrane_grad"] = callbacks.setdefault(step, []).append
                context["register_spike_grad"] = spike_callbacks.setdefault(step, []).append
            surrogate.observe(shifted, used, context)

        recording = neuron.record_potentials
        derivative = kernel_derivative(surrogate, k)
        kernels = not recording and not half and neuron.triton and kernels_apply(derivative, x)
        sample = None  # the rows the surrogate's observation reads, where it reads only those
        if kernels and neuron.fixed_threshold:
            # fixed threshold: the spikes need nothing from the surrogate, so the forward kernel runs; a surrogate
            # that reads u[t] (per-call parameters, observe) gets the kernel's membrane step by step, in loop order,
            # or only the rows it samples (A2SG's window search)
            per_step = observed or (not fixed_params and k is None and surrogate.reads_membrane)
            sample = surrogate.observation_sample() if observed else None
            if sample is not None and surrogate.reads_membrane:
                raise TypeError(f"{type(surrogate).__name__}.observation_sample() needs call_params to read no "
                                "membrane (reads_membrane = False): it gets the sampled rows as x")
            rows = None if sample is None else sample.layout(x.shape[1:])
            membrane = (torch.empty(triton_lif.kept_shape(x, rows), dtype=torch.float32, device=x.device)
                        if per_step else None)
            spikes = triton_lif.lif_forward(x, decay, config.threshold, config.reset, config.reset_decayed,
                                            config.decay_input, config.fire_ge, membrane=membrane, rows=rows)
            if sample is not None:  # each step's sampled rows observed with its parameters (the context's mem: I[t])
                shifted_rows = membrane - config.threshold  # all steps at once (theta_t = theta)
                thresholds, params = [config.threshold] * x.shape[0], ahead_params
                for step, context in enumerate(contexts):
                    context["sampled"] = True
                    observe(step, shifted_rows[step], params[step], context)
            elif per_step:
                for step in range(x.shape[0]):
                    threshold_at(membrane[step], step)
            else:  # nothing to observe, the parameters known
                thresholds = [config.threshold] * x.shape[0]
                params = ([{"k": value} for value in k.detach().unbind()] if k is not None
                          else [surrogate.params] * x.shape[0] if fixed_params else ahead_params)
        elif kernels:  # theta_t from the statistics of u[t] (DS-ATGO): a kernel launch per step, threshold_at between
            spikes = triton_lif.lif_forward_by_step(x, decay, config.threshold, config.reset, config.reset_decayed,
                                                    config.decay_input, config.fire_ge, threshold_at)
        else:
            spikes, membrane = integrate(x.float(), decay, config, threshold_at, keep=recording)
        if deferred:
            params = surrogate.step_params(x, contexts)
        if any(ctx.needs_input_grad[:3]):
            ctx.save_for_backward(margins if half else x, decay, k)
            ctx.config, ctx.thresholds, ctx.params, ctx.shape = config, thresholds, params, surrogate.shape
            ctx.callbacks, ctx.spike_callbacks = callbacks, spike_callbacks
            ctx.surrogate_type, ctx.half, ctx.sample = type(surrogate), half, sample
            ctx.kernel = kernel_tables(derivative, config, thresholds, params, x) if kernels else None
        return (spikes, membrane) if recording else spikes

    @staticmethod
    def backward(ctx, grad_spikes: Tensor, grad_membrane: Tensor | None = None):
        x, decay, k = ctx.saved_tensors  # x: the input, or the fp16 margins with saved_precision="fp16"
        if torch.is_grad_enabled() and ctx.half:
            raise RuntimeError("double backward (create_graph=True) rebuilds the step graph from the input, which "
                               "saved_precision='fp16' does not keep: use the default saved_precision='fp32'")
        if torch.is_grad_enabled():  # create_graph=True: differentiate the rebuilt step graph
            return double_differentiable_grads(ctx, x, decay, k, grad_spikes, grad_membrane)
        config, want_decay = ctx.config, ctx.needs_input_grad[1]
        if ctx.kernel is not None:
            shape, step_thresholds, params, switches = ctx.kernel
            rows = None if ctx.sample is None else ctx.sample.layout(x.shape[1:])  # the kernel writes only these
            spike_grads, membrane_grads = (torch.empty(triton_lif.kept_shape(x, rows), dtype=torch.float32,
                                                       device=x.device)
                                           if any(callbacks.values()) else None
                                           for callbacks in (ctx.spike_callbacks, ctx.callbacks))
            grad_x, grad_decay, grad_k = triton_lif.lif_backward(
                x, grad_spikes, decay, config.threshold, step_thresholds, shape, params, config.reset,
                config.reset_decayed, config.reset_detach, config.decay_input, config.fire_ge, want_decay,
                switches=switches, learned_k=k is not None, spike_grads=spike_grads, membrane_grads=membrane_grads,
                rows=rows)
            for t in range(x.shape[0] - 1, -1, -1):  # the torch path's order: dL/ds[t], then dL/du[t], t = T-1..0
                for callbacks, grads in ((ctx.spike_callbacks, spike_grads), (ctx.callbacks, membrane_grads)):
                    if grads is not None:
                        report_grad(callbacks, t, grads[t])
            return (grad_x, grad_decay.to(decay.dtype) if want_decay else None,
                    grad_k.to(k.dtype) if ctx.needs_input_grad[2] else None, None)
        x = x if ctx.half else x.float()  # the torch code runs in fp32 (the kernels read I in its own dtype)
        grad_k = torch.zeros_like(k) if ctx.needs_input_grad[2] else None

        def surrogate_vjp(t: int, shifted: Tensor, grad_s: Tensor, out: Tensor) -> None:
            """out = dL/ds[t] * h[t]; a learned k[t] also gets its gradient."""
            if k is None:
                torch.mul(grad_s, ctx.shape(shifted, **ctx.params[t]), out=out)
                return
            grad_x, grad_k_t = ctx.surrogate_type.proxy_vjp(shifted, k[t], grad_s)
            out.copy_(grad_x)
            if grad_k is not None:
                grad_k[t] += grad_k_t

        # u[t] (replayed, bitwise the forward's), or with fp16 margins the margins u[t] - theta_t themselves
        # (u[t] = margin + theta_t is formed only where the reset gradient or the decay gradient reads it)
        needs_u = want_decay or (config.reset == "zero" and not config.reset_detach)
        if ctx.half:
            membrane = x.float()
        else:
            _, membrane = integrate(x, decay, config, lambda u, step: ctx.thresholds[step], keep=True, fire=False)
        lam = decay.detach().float()  # a device scalar in every product below: no host read of lambda
        theta = config.threshold
        compare, complement = (torch.ge, torch.lt) if config.fire_ge else (torch.gt, torch.le)
        grad_spikes = grad_spikes.float()
        grad_mem = membrane  # e[t] overwrites u[t] once step t has used it
        mask = torch.empty_like(membrane[0])  # 1 - s[t] (zero reset) or s[t], from u[t] - theta_t as the forward fired
        grad_decay = torch.zeros((), dtype=torch.float64, device=x.device)
        last = x.shape[0] - 1
        for t in range(last, -1, -1):
            if ctx.half:  # the margin (its sign exact), overwritten by e[t] below once read
                shifted = membrane[t]
                u = shifted + ctx.thresholds[t] if needs_u else None
            else:
                u = membrane[t]
                shifted = u - ctx.thresholds[t]
            if t == last:
                report_grad(ctx.spike_callbacks, t, grad_spikes[t], ctx.sample)
                surrogate_vjp(t, shifted, grad_spikes[t], grad_mem[t])
                if grad_membrane is not None:  # the recorded u[t]
                    grad_mem[t].add_(grad_membrane[t])
                report_grad(ctx.callbacks, t, grad_mem[t], ctx.sample)
                continue
            carry = grad_mem[t + 1]
            grad_s = grad_spikes[t]
            if not config.reset_detach and config.reset == "zero":
                grad_s = torch.addcmul(grad_s, u * carry, -lam)
            elif not config.reset_detach and config.reset == "subtract":
                grad_s = (torch.addcmul(grad_s, carry, -(lam * theta)) if config.reset_decayed
                          else grad_s.add(carry, alpha=-theta))
            leak = None
            if config.reset == "zero":
                complement(shifted, 0, out=mask)
                leak = carry * mask if want_decay else None  # e[t+1] (1 - s[t])
            if want_decay:
                grad_decay += torch.dot((carry if leak is None else leak).flatten(), u.flatten())
                if config.reset == "subtract" and config.reset_decayed:
                    compare(shifted, 0, out=mask)
                    grad_decay -= theta * torch.dot(carry.flatten(), mask.flatten())
            report_grad(ctx.spike_callbacks, t, grad_s, ctx.sample)
            surrogate_vjp(t, shifted, grad_s, grad_mem[t])  # u[t] is not read after this
            if leak is not None:
                grad_mem[t].addcmul_(leak, lam)
            elif config.reset == "zero":
                grad_mem[t].addcmul_(carry, mask.mul_(lam))
            else:
                grad_mem[t].addcmul_(carry, lam)
            if grad_membrane is not None:
                grad_mem[t].add_(grad_membrane[t])
            report_grad(ctx.callbacks, t, grad_mem[t], ctx.sample)
        return finish_grads(ctx, x, decay, grad_mem, grad_decay if want_decay else None, grad_k)


HALF_TINY = 2.0 ** -24  # the smallest positive fp16 (subnormal)
HALF_MAX = 65504.0


def store_half_margin(margin: Tensor, out: Tensor) -> None:
    """out (fp16) = margin (fp32) rounded to nearest, its magnitude clamped to [2^-24, 65504] (fp16's
    smallest subnormal and largest finite value) except for exact zeros: the sign (so the spike and the
    reset mask) and exact zeros are preserved.  No data-dependent branch (no host sync on CUDA)."""
    magnitude = margin.abs().clamp_(HALF_TINY, HALF_MAX)
    out.copy_(torch.where(margin == 0, margin, magnitude.copysign_(margin)))


def finish_grads(ctx, x: Tensor, decay: Tensor, grad_mem: Tensor, grad_decay: Tensor | None,
                 grad_k: Tensor | None):
    """From e = dL/du and the decay gradient's reset/leak part: dL/dI = c e, and the decay_input term."""
    if grad_decay is not None and ctx.config.decay_input:
        grad_decay = grad_decay - torch.dot(grad_mem.flatten(), x.flatten())
    grad_input = grad_mem.mul_(1 - decay.detach().float()) if ctx.config.decay_input else grad_mem
    return grad_input, (None if grad_decay is None else grad_decay.to(decay.dtype)), grad_k, None


def kernel_derivative(surrogate: Surrogate, k: Tensor | None) -> Callable:
    """What the backward kernel evaluates: the surrogate's ``shape``, or for a learned TLSG (k given) its
    ``proxy_derivatives`` (psi_k' and dpsi_k/dk, the kernel also reducing dL/dk[t])."""
    return surrogate.shape if k is None else type(surrogate).proxy_derivatives


def kernels_apply(derivative: Callable, x: Tensor) -> bool:
    """Whether the kernels can run on ``x`` (on CUDA, or in the Triton interpreter, ``TRITON_INTERPRET=1``, how they
    are tested on CPU; fp32, bf16 or fp16: float64 keeps the torch code) and ``derivative`` is written in the
    closed-form vocabulary (``models/triton_surrogates.py``)."""
    return kernels_run_on(x) and triton_surrogates.kernel_shape(derivative) is not None


def kernels_run_on(x: Tensor) -> bool:
    """Whether the kernels can read ``x``: its device (``triton_lif.triton_available``) and dtype."""
    return triton_lif.triton_available(x.device) and x.dtype in triton_lif.DTYPES


def kernel_tables(torch_shape: Callable, config: StepConfig, thresholds: list, params: list[dict],
                  x: Tensor) -> tuple | None:
    """(kernel shape, theta_t table [T, 1 or C] or None for the fixed threshold, parameter table
    [T, 1 or C, P], the shape's switches) for ``triton_lif.lif_backward``; None when a threshold or
    parameter is neither a number nor one value per layer or channel, or a switch changes between steps
    (the torch backward runs then)."""
    inputs = triton_surrogates.kernel_inputs(torch_shape, params, x[0].shape, x.device)
    if inputs is None:
        return None
    shape, table, switches = inputs
    if all(isinstance(t, (int, float)) and t == config.threshold for t in thresholds):
        return shape, None, table, switches
    rows = [triton_surrogates.per_channel(t, x[0].shape, x.device) for t in thresholds]
    if any(row is None for row in rows):
        return None
    widest = max(row.numel() for row in rows)
    return shape, torch.stack([row.expand(widest) for row in rows]), table, switches


def report_grad(callbacks: dict[int, list], step: int, grad: Tensor, sample: RowSample | None = None) -> None:
    """Give e[t] = dL/du[t] (``ctx.callbacks``) or dL/ds[t] (``ctx.spike_callbacks``, the spike's whole
    gradient, reset path included) to the callbacks the surrogate registered at step t (A2SG's statistics); with
    the ``sample`` its observation took (``Surrogate.observation_sample``), a copy of the sampled rows of ``grad``
    (the torch backward overwrites its buffers)."""
    for callback in callbacks.get(step, ()):
        callback(grad if sample is None else sample.rows(grad).clone())


def double_differentiable_grads(ctx, x: Tensor, decay: Tensor, k: Tensor | None, grad_spikes: Tensor,
                                grad_membrane: Tensor | None):
    """Input, decay and sharpness gradients as differentiable functions of (I, lambda, k, upstream
    gradients): the step graph rebuilt with ``dynamics.charge`` and ``SpikeFunction`` (saved thresholds and
    parameters) or the TLSG's straight-through term (saved k)."""
    config, inputs = ctx.config, x.float()
    mem, spk, out, mems = torch.zeros_like(inputs[0]), torch.zeros_like(inputs[0]), [], []
    for t in range(x.shape[0]):
        mem = charge(inputs[t], mem, spk, decay, config.threshold, config.reset, config.reset_decayed,
                     config.reset_detach, config.decay_input)
        if ctx.callbacks.get(t):
            mem.register_hook(lambda grad, t=t: report_grad(ctx.callbacks, t, grad, ctx.sample))
        shifted = mem - ctx.thresholds[t]
        if k is None:
            spk = SpikeFunction.apply(shifted, ctx.shape, ctx.params[t], config.fire_ge)
        else:
            spk = ctx.surrogate_type.straight_through(shifted, k[t], config.fire_ge)
        if ctx.spike_callbacks.get(t):
            spk.register_hook(lambda grad, t=t: report_grad(ctx.spike_callbacks, t, grad, ctx.sample))
        out.append(spk)
        mems.append(mem)
    outputs = [(torch.stack(out), grad_spikes), (torch.stack(mems), grad_membrane)]
    return differentiate(outputs, (x, decay, k), ctx.needs_input_grad)


def differentiate(outputs: list[tuple[Tensor, Tensor | None]], inputs: tuple, needs_input_grad: tuple) -> tuple:
    """The gradients (with graph) of the rebuilt outputs for their upstream gradients (pairs; a None
    gradient: output unused) w.r.t. the Function's tensor inputs that need one (None for the others and
    for the trailing neuron argument)."""
    used = [(output, grad) for output, grad in outputs if grad is not None]
    wanted = [tensor for tensor, needed in zip(inputs, needs_input_grad) if needed]
    grads = iter(torch.autograd.grad([output for output, _ in used], wanted, [grad for _, grad in used],
                                     create_graph=True, allow_unused=True))
    return (*(next(grads) if needed else None for needed in needs_input_grad[:len(inputs)]), None)


@torch.no_grad()
def integrate(x: Tensor, decay: Tensor, config: StepConfig, threshold_at: Callable[[Tensor, int], object],
              keep: bool, fire: bool = True) -> tuple[Tensor | None, Tensor | None]:
    """The forward time loop without a graph, bitwise equal to ``dynamics.charge`` + ``LIF.fire``.

    ``threshold_at(u, t)`` gives theta_t (the forward calls ``fire_context`` and the surrogate there; the
    backward's replay looks up the saved thresholds).  Returns (spikes fp32 [T, ...] if ``fire``, u [T, ...]
    if ``keep``): the forward fires (and keeps u when it records the potentials; otherwise one membrane
    buffer is updated in place), the replay keeps u only.  The reset mask (1 - s for the zero reset, s for
    subtract) lives in a one-step buffer.
    """
    lam = decay.detach()
    on_cpu = x.device.type == "cpu"
    lam_value = float(lam) if on_cpu and config.reset == "zero" else None  # addcmul's scalar (no sync off the CPU)
    scale = 1 - lam if config.decay_input else None
    zero, subtract = config.reset == "zero", config.reset == "subtract"
    compare, complement = (torch.ge, torch.lt) if config.fire_ge else (torch.gt, torch.le)
    membrane = torch.empty_like(x) if keep else torch.empty_like(x[0])
    spikes = torch.empty_like(x) if fire else None
    mask = torch.empty_like(x[0]) if zero or (subtract and not fire) else None
    for t in range(x.shape[0]):
        u = membrane[t] if keep else membrane
        current = x[t] if scale is None else scale * x[t]
        if t == 0:
            u.copy_(current)
        else:
            prev = membrane[t - 1] if keep else membrane
            fired = mask if spikes is None else spikes[t - 1]  # s[t-1] for subtract
            if zero and on_cpu:  # lambda * u * (1 - s) + c I; the CPU's addcmul is fma(lambda u, mask, c I)
                torch.addcmul(current, prev, mask, value=lam_value, out=u)  # = the separate ops (mask 0/1)
            elif zero:  # CUDA's addcmul is fma(value, t1 t2, self): round lambda u first, as dynamics.charge
                torch.mul(prev, lam, out=u)
                torch.addcmul(current, u, mask, out=u)  # fma(1, (lambda u) mask, c I): mask 0/1, one rounding
            elif subtract and config.reset_decayed:  # lambda * (u - theta s) + c I
                torch.sub(prev, fired, alpha=config.threshold, out=u)
                u.mul_(lam).add_(current)
            elif subtract:  # lambda * u + c I - theta s
                torch.mul(prev, lam, out=u)
                u.add_(current).sub_(fired, alpha=config.threshold)
            else:
                torch.mul(prev, lam, out=u)
                u.add_(current)
        threshold = threshold_at(u, t)
        if fire:
            compare(u, threshold, out=spikes[t])
        if zero:
            complement(u, threshold, out=mask)
        elif subtract and not fire:
            compare(u, threshold, out=mask)
    return spikes, (membrane if keep else None)
