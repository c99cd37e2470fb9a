"""Fused multi-step path of ``CFNeuron``: the whole time loop in one ``torch.autograd.Function``.

The reference loop of ``CFNeuron.forward`` builds a per-step graph: two surrogate calls per step, each
saving its [levels, ...] input, plus the reset and output nodes.  The fused path computes the same
forward without a graph and runs the reverse-time recurrence itself in ``backward`` [reconstructed; the
equations below follow from the forward of ``models/circulate_firing.py``].

Forward, beta = decay, l_j the levels (j theta; (2j - 1) theta on the ring), r the reset unit (theta;
2 theta on the ring), c the output scale (1 or theta), S the Heaviside step (x >= 0, or x > 0 for the
ring's down-crossings), U[-1] = 0::

    H[t]    = beta U[t-1] + I[t]
    up[t]   = sum_j S(H[t] - l_j)          down[t] = sum_j S(-H[t] - l_j)      (no down for unsigned)
    U[t]    = H[t] - r (up[t] - down[t])   (the count detached if ``reset_detach``)
    out[t]  = c up[t] (wrap_binary) | c (up[t] - down[t]) (otherwise)

Surrogate derivative of one crossing x: h(x) = ``shape(x, **params)`` with the parameters the surrogate
gave for that call (``call_params(x, mem=H[t], step=t, neuron=neuron)``, as the reference loop calls it;
captured at forward time; a surrogate that reads no membrane gets I[t] as x and mem), or for a learned TLSG h(x) = psi_k'(x) with k = k[t] (the straight-through
term psi_k(x) - stopgrad(psi_k(x)) of ``TimestepLearnableSurrogate.forward``), which also gives k a
gradient.  Backward, g[t] = dL/dout[t], e[t] = dL/dU[t] (e[T-1] = 0), a = 0 if ``reset_detach`` else 1::

    G_up[t]   = c g[t] - a r e[t]                                  (dL/dup[t])
    G_down[t] = -c g[t] [not wrap_binary] + a r e[t]               (dL/ddown[t])
    dL/dH[t]  = e[t] + G_up[t] sum_j h(H[t] - l_j) - G_down[t] sum_j h(-H[t] - l_j)
    e[t-1]    = beta dL/dH[t],        dL/dI[t] = dL/dH[t]
    dL/dk[t]  = sum over elements of G_up[t] sum_j dpsi_k/dk(H[t] - l_j) + G_down[t] sum_j dpsi_k/dk(-H[t] - l_j)

(psi_k' and dpsi_k/dk from the closed forms ``TimestepLearnableSurrogate.proxy_derivatives``, through
``proxy_vjp``; the gradient of k[t] reaches rho through ``sharpness(t)``, evaluated before the Function.)

Recorded potentials (``record_potentials``: the balanced loss ``pnb``, the diagnostics): the Function also
returns H[T, ...] (``recorded_potential="pre_fire"``) or U[T, ...] (``"post_reset"``), the steps of
``neuron.potentials``; a gradient arriving there is added to dL/dH[t] or to e[t] = dL/dU[t].

Saved for backward: the input I[T, ...] (fp32) and, per step, the surrogate parameters of both calls
(or k[T]); ``backward`` replays H from I (the same operations, so bitwise the forward's; no surrogate
call, so no side effect runs twice), then runs the recurrence above, overwriting H[t] with dL/dI[t].

The forward is bitwise equal to the reference loop: charge, reset and output are its operations in the
same order, and the crossings are counted by comparisons, H - l >= 0 iff H >= l, -H - l >= 0 iff
H <= -l, -H - l > 0 iff H < -l (in IEEE arithmetic a - b rounds to zero only when a == b), summed
exactly (small integers).  Gradients agree to float rounding (tests/test_fused_cf.py).

Double backward (``create_graph=True``: Hessian-vector products): ``backward`` rebuilds the reference
step graph from the saved I (``crossing_inputs`` and ``discharge`` of the reference loop, with
``SpikeFunction`` and the saved parameters, or the straight-through term with the saved k) and
differentiates it.

Fused surrogates: a repro ``Surrogate`` that does not override ``forward`` and has no per-call side effect on
this forward (``Surrogate.observes``: no observers; A2SG outside its first forward and its statistics steps), nor
parameters that require gradients (fixed or per-call parameters: the classic ones, ``tgo``, ``mpd_agl``, A2SG's
per-step windows); the TLSG ``learnable`` with ``learn=none`` or ``granularity=fixed`` (plain spike function),
``learn=st_smooth``, and ``learn=asgl_mix`` in eval mode (no random mask there: the same as
``st_smooth``).  Not fused (``unfused_reason`` says why; the reference loop runs and logs it once):
observers (the diagnostics' window counts), ``asgl_mix`` in training (random masks), A2SG on its statistics
forwards, a surrogate that overrides ``forward``, and tracing by ``torch.compile`` (not logged; the
reference loop is traceable), except where the kernels apply with a fixed surrogate or a learned TLSG
(``compiled_kernel_shape``): there the layer is traced as the operator ``repro::cf_outputs``
(``models/triton_cf.py``; recorded potentials included; no graph break, no double backward through it).
A surrogate with per-call side effects (``Surrogate.observes``) is not traced at all: ``CFNeuron.forward``
runs as one eager call (``fused.forward_eagerly``, one graph break).

Backends: the torch code above, and the Triton kernels of ``models/triton_cf.py`` (one forward, one backward
kernel that replays H in registers and evaluates the derivative for every level in the kernel, reducing
dL/dk[t] per program; recorded potentials and their gradient included), chosen on CUDA (or in the Triton
interpreter) when the surrogate has fixed parameters, parameters of the step that read no membrane
(``Surrogate.reads_membrane`` False: ``mpd_agl``, ``tgo``, A2SG's windows on the forwards that take no statistics;
one value per step) or is a learned TLSG, and its
derivative (``shape``, or ``proxy_derivatives``) is written in the closed-form vocabulary
(``surrogates/closed_form.py``); per-channel widths keep the torch code, and so does ``neuron.triton = False``.
The kernels are tested in the Triton interpreter on CPU only (tests/test_triton_cf.py), not yet on a GPU.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..surrogates import FixedSurrogate, SpikeFunction, Surrogate
from ..surrogates.learnable import TimestepLearnableSurrogate, learns_sharpness
from . import triton_cf, triton_surrogates
from .dynamics import CFConfig, crossing_inputs, discharge
from .fused import differentiate, kernel_derivative, kernel_shape_name, kernels_apply, kernels_run_on, \
    surrogate_unfused_reason


def unfused_reason(neuron, x: Tensor) -> str | None:
    """Why this forward of ``neuron`` (a ``CFNeuron``) on ``x`` cannot take the fused path (None: it can)."""
    surrogate = neuron.surrogate
    if isinstance(surrogate, Surrogate) and surrogate.observes:  # as the LIF fused path, which calls observe
        what = "has observers attached" if surrogate.observers else "has per-call side effects on this forward"
        return f"the surrogate {type(surrogate).__name__} {what}"
    if torch.compiler.is_compiling() and compiled_kernel_shape(neuron, x) is not None:
        return None
    return surrogate_unfused_reason(surrogate)


def compiled_kernel_shape(neuron, x: Tensor) -> str | None:
    """Under torch.compile, the name of the derivative the ``repro::cf_outputs`` operator (the Triton kernels)
    evaluates for ``neuron`` on ``x``, or None when the operator does not apply: it needs kernels that read ``x``
    and a fixed surrogate or a learned TLSG (st_smooth, or asgl_mix in eval)."""
    surrogate = neuron.surrogate
    fixed = (isinstance(surrogate, FixedSurrogate) and type(surrogate).call_params is FixedSurrogate.call_params
             and type(surrogate).forward is Surrogate.forward)
    learned = (learns_sharpness(surrogate) and type(surrogate).forward is TimestepLearnableSurrogate.forward
               and (surrogate.learn == "st_smooth" or not surrogate.training))
    if not (getattr(neuron, "triton", True) and (fixed or learned)
            and kernels_run_on(x)):
        return None
    return kernel_shape_name(type(surrogate).proxy_derivatives if learned else surrogate.shape)


def fused_cf(neuron, x: Tensor) -> Tensor:
    """Outputs [T, B, ...] of ``neuron`` on input ``x`` through ``FusedCFFunction``: fp32, or bf16 / fp16 saved and
    read by the kernels in its own dtype (their outputs in it too; the torch code computes in fp32 and returns fp32);
    a learned TLSG's k[t] (differentiable w.r.t. its rho) enters as an input; with ``record_potentials`` the
    recorded potentials (fp32) go to ``neuron.potentials``."""
    surrogate = neuron.surrogate
    k = surrogate.sharpness_per_step(x.shape[0]) if learns_sharpness(surrogate) else None
    if torch.compiler.is_compiling():  # unfused_reason let it through: the kernels as one operator
        config = neuron.step_config()
        params = [] if k is not None else [surrogate.params[name]
                                           for name in triton_surrogates.shape_parameters(surrogate.shape)]
        record = neuron.recorded_potential if neuron.record_potentials else ""
        out, potentials = torch.ops.repro.cf_outputs(x, k, neuron.decay, neuron.levels, params,
                                                     compiled_kernel_shape(neuron, x), config.mode, config.reset_unit,
                                                     config.scale, config.reset_detach, record)
        if record:
            neuron.record_steps(potentials)
        return out
    if not neuron.record_potentials:
        return FusedCFFunction.apply(x, k, neuron)
    out, potentials = FusedCFFunction.apply(x, k, neuron)
    neuron.record_steps(potentials)
    return out


class FusedCFFunction(torch.autograd.Function):
    """(I[T, ...], k[T] or None) -> out[T, ...] (and H or U [T, ...] with ``record_potentials``) for one
    ``CFNeuron``; see the module docstring."""

    @staticmethod
    def forward(ctx, x: Tensor, k: Tensor | None, neuron) -> Tensor:

        config = neuron.step_config()
        levels = neuron.levels.view(-1, *([1] * (x.dim() - 1)))
        surrogate, params, on_charge = neuron.surrogate, [], None
        fixed_params = k is None and type(surrogate).call_params is FixedSurrogate.call_params
        step_params = k is None and not fixed_params and not surrogate.reads_membrane
        directions = 1 if config.mode == "unsigned" else 2
        if fixed_params:  # ignores x and context
            params = [[surrogate.params] * directions] * x.shape[0]
        elif step_params:  # from the step and the neuron (MPD-AGL): I[t] stands in for H[t], one call per direction
            contexts = [dict(mem=x[t], step=t, neuron=neuron) for t in range(x.shape[0])]
            params = [[step] * directions for step in surrogate.step_params(x, contexts, calls=directions)]
        elif k is None:
            def on_charge(charged: Tensor, step: int) -> None:
                context = dict(mem=charged, step=step, neuron=neuron)
                params.append([surrogate.call_params(shifted, **context)
                               for shifted, _ in crossing_inputs(charged, levels, config.mode)])

        recorded = neuron.recorded_potential if neuron.record_potentials else None
        kernel = None
        if (fixed_params or step_params or k is not None) and getattr(neuron, "triton", True):
            kernel = kernel_tables(surrogate, k, x, [calls[0] for calls in params] if step_params else None)
        if kernel is not None:
            out, potentials = triton_cf.cf_forward(x, neuron.decay, neuron.levels.float(), config.mode,
                                                   config.reset_unit, config.scale, record=recorded)
        else:
            out, potentials = integrate(at_least_fp32(x), neuron.decay, levels, config, on_charge, keep=recorded)
        if any(ctx.needs_input_grad[:2]):
            ctx.save_for_backward(x, k)
            ctx.kernel, ctx.level_tensor = kernel, neuron.levels.float()
            ctx.config, ctx.decay, ctx.levels, ctx.params = config, neuron.decay, levels, params
            ctx.surrogate_type, ctx.shape, ctx.recorded = type(surrogate), surrogate.shape, recorded
            ctx.per_level = fixed_params or step_params or k is not None  # the same parameters at every level
        return out if recorded is None else (out, potentials)

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_potentials: Tensor | None = None):
        x, k = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the rebuilt step graph
            return double_differentiable_grads(ctx, x, k, grad_out, grad_potentials)
        config, decay, levels = ctx.config, ctx.decay, ctx.levels
        if ctx.kernel is not None:
            shape, params, switches = ctx.kernel
            grad_x, grad_k = triton_cf.cf_backward(x, grad_out, decay, ctx.level_tensor, config.mode, config.reset_unit,
                                                   config.scale, config.reset_detach, shape, params,
                                                   switches=switches, learned_k=k is not None, record=ctx.recorded,
                                                   grad_potentials=grad_potentials)
            return (grad_x if ctx.needs_input_grad[0] else None,
                    grad_k.to(k.dtype) if ctx.needs_input_grad[1] else None, None)
        grad_k = torch.zeros_like(k) if ctx.needs_input_grad[1] else None
        grad_out = grad_out.float()
        # H[t], overwritten by dL/dH[t] below
        _, grad_mem = integrate(at_least_fp32(x), decay, levels, config, outputs=False, keep="pre_fire")
        attached, signed_out = not config.reset_detach, config.mode != "wrap_binary"
        carry = None  # e[t] = dL/dU[t]
        for t in range(x.shape[0] - 1, -1, -1):
            if grad_potentials is not None and ctx.recorded == "post_reset":  # the recorded U[t]
                carry = grad_potentials[t] if carry is None else carry + grad_potentials[t]
            grad_up = grad_out[t] * config.scale
            grad_down = -grad_up if signed_out else None
            if carry is not None and attached:
                grad_up = grad_up.add(carry, alpha=-config.reset_unit)
                grad_down = carry * config.reset_unit if grad_down is None else grad_down.add(
                    carry, alpha=config.reset_unit)
            grad_h = torch.zeros_like(grad_up) if carry is None else carry
            for i in range(1 if config.mode == "unsigned" else 2):
                upstream = (grad_up, grad_down)[i]
                if upstream is None:  # wrap_binary, reset detached: down-crossings reach nothing
                    continue
                bumps = crossing_grad(ctx, t, i, grad_mem[t], upstream, k, grad_k)
                grad_h = grad_h.add(bumps, alpha=-1 if i else 1)  # x = -H - l_j for the down-crossings
            if grad_potentials is not None and ctx.recorded == "pre_fire":  # the recorded H[t]
                grad_h = grad_h + grad_potentials[t]
            grad_mem[t] = grad_h
            carry = decay * grad_h
        return (grad_mem.to(x.dtype) if ctx.needs_input_grad[0] else None), grad_k, None


def at_least_fp32(x: Tensor) -> Tensor:
    """What the torch code computes in: fp32 for half input, else x's own dtype (float64 for gradcheck)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def kernel_tables(surrogate: Surrogate, k: Tensor | None, x: Tensor, params: list[dict] | None = None
                  ) -> tuple | None:
    """(kernel derivative, parameter table [T, 1, P], switches) for ``triton_cf.cf_backward`` when the kernels
    run on ``x``'s device, the derivative compiles and the parameters of each step are single values: ``params``
    (None: a fixed surrogate's own), or a learned TLSG's k[t]; else None."""
    derivative = kernel_derivative(surrogate, k)
    if not kernels_apply(derivative, x):
        return None
    if k is not None:
        params = [{"k": value} for value in k.detach().unbind()]
    elif params is None:
        params = [surrogate.params] * x.shape[0]
    return triton_surrogates.kernel_inputs(derivative, params, torch.Size([1]), x.device)


def crossing_grad(ctx, t: int, direction: int, charged: Tensor, upstream: Tensor, k: Tensor | None,
                  grad_k: Tensor | None) -> Tensor:
    """upstream * sum_j h(x_j) for the up- (direction 0, x_j = H - l_j) or down-crossings (1, x_j = -H - l_j)
    of step t, and a learned k[t]'s gradient added to ``grad_k``.  With scalar parameters (fixed ones or
    k[t]) the levels are taken one at a time: [levels, ...] temporaries are D times larger, and on CPU
    allocations above 32 MiB are page-faulted afresh at every step."""

    if not ctx.per_level:  # per-call parameters, computed at forward time for the [levels, ...] input
        shifted, _ = crossing_inputs(charged, ctx.levels, ctx.config.mode)[direction]
        return ctx.shape(shifted, **ctx.params[t][direction]).sum(0).mul_(upstream)
    base, total = (charged if direction == 0 else -charged), None
    for level in ctx.config.levels:
        shifted = base - level
        if k is None:
            bumps = ctx.shape(shifted, **ctx.params[t][direction])
        else:
            bumps, slope = ctx.surrogate_type.proxy_vjp(shifted, k[t], upstream)
            if grad_k is not None:
                grad_k[t] += slope
        total = bumps if total is None else total.add_(bumps)
    return total if k is not None else total.mul_(upstream)


def double_differentiable_grads(ctx, x: Tensor, k: Tensor | None, grad_out: Tensor,
                               grad_potentials: Tensor | None):
    """Input and sharpness gradients as differentiable functions of (I, k, upstream gradient): the
    reference step graph rebuilt with ``crossing_inputs`` and ``discharge`` and the captured surrogate."""

    config, inputs = ctx.config, at_least_fp32(x)
    potential, out, recorded = torch.zeros_like(inputs[0]), [], []
    for t in range(x.shape[0]):
        charged = ctx.decay * potential + inputs[t]
        counts = []
        for i, (shifted, fire_ge) in enumerate(crossing_inputs(charged, ctx.levels, config.mode)):
            if k is None:
                spikes = SpikeFunction.apply(shifted, ctx.shape, ctx.params[t][i], fire_ge)
            else:  # TimestepLearnableSurrogate.forward's straight-through term with the saved k[t]
                spikes = ctx.surrogate_type.straight_through(shifted, k[t], fire_ge)
            counts.append(spikes.sum(0))
        potential, spikes = discharge(charged, counts, config)
        out.append(spikes)
        recorded.append(potential if ctx.recorded == "post_reset" else charged)
    outputs = [(torch.stack(out), grad_out), (torch.stack(recorded), grad_potentials)]
    return differentiate(outputs, (x, k), ctx.needs_input_grad)


@torch.no_grad()
def integrate(x: Tensor, decay: Tensor, levels: Tensor, config: CFConfig,
              on_charge: Callable[[Tensor, int], None] | None = None, outputs: bool = True,
              keep: str | None = None) -> tuple[Tensor | None, Tensor | None]:
    """The forward time loop without a graph, bitwise equal to the reference loop of ``CFNeuron.forward``.

    Returns (the outputs [T, ...] if ``outputs``, the potentials [T, ...] named by ``keep``: H
    (``"pre_fire"``) or U (``"post_reset"``), or None).  The forward gives its outputs (and keeps the
    recorded potentials), the backward's replay keeps H only.  ``on_charge(H[t], t)`` runs after each
    charge (the forward captures the surrogate parameters there).  ``levels`` is [levels, 1, ...].
    """
    out = torch.empty_like(x) if outputs else None
    kept = torch.empty_like(x) if keep else None
    below = -levels
    down_crossed = torch.le if config.mode == "signed" else torch.lt  # -H - l >= 0 / > 0
    crossed = x.new_empty(levels.shape[:1] + x.shape[1:])  # fp32 0/1 per level (faster than bool)
    potential = torch.zeros_like(x[0])
    for t in range(x.shape[0]):
        charged = torch.add(decay * potential, x[t], out=kept[t] if keep == "pre_fire" else None)
        if on_charge is not None:
            on_charge(charged, t)
        up = torch.ge(charged, levels, out=crossed).sum(0)
        net = up if config.mode == "unsigned" else up - down_crossed(charged, below, out=crossed).sum(0)
        potential = charged - config.reset_unit * net
        if keep == "post_reset":
            kept[t] = potential
        if outputs:
            torch.mul(up if config.mode == "wrap_binary" else net, config.scale, out=out[t])
    return out, kept
