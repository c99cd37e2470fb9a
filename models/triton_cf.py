"""Triton kernels of the fused circulate-firing path (``models/fused_cf.py``): one forward and one backward kernel.

One program owns a BLOCK of neurons (x viewed as [T, N], masked tail) and runs the time loop in registers.
The equations are ``FusedCFFunction``'s [reconstructed, as in fused_cf.py]: beta = decay, l_j the D levels,
r the reset unit, c the output scale, U[-1] = 0::

    H[t]   = beta U[t-1] + I[t]
    up[t]  = sum_j [H[t] >= l_j]          down[t] = sum_j [H[t] <= -l_j] (signed) | [H[t] < -l_j] (ring)
    U[t]   = H[t] - r (up[t] - down[t])   (no down for ``unsigned``)
    out[t] = c up[t] (wrap_binary) | c (up[t] - down[t])

``_step`` does the fp32 operations of ``fused_cf.integrate`` in its order (multiply, then add;
crossings by comparison; every launch with ``enable_fp_fusion=False``), so H, the counts and the outputs
are bitwise the reference loop's on the same device.

**Forward** (``cf_forward``): reads I in its own dtype, writes out in I's dtype (small integers times c)
and, when asked, the recorded potentials H[t] or U[t] in fp32 (the balanced loss), saves nothing.
**Backward** (``cf_backward``): replays H from I into registers (CHUNK steps at a time, as ``triton_lif``),
then, with e = dL/dU (e[T-1] = 0), a = 0 if ``reset_detach`` else 1, h the surrogate derivative (the
surrogate's ``shape`` with its fixed parameters, or a learned TLSG's ``proxy_derivatives`` with k[t])
evaluated in the kernel for every level::

    G_up     = c g[t] - a r e[t]          G_down = -c g[t] [not wrap_binary] + a r e[t]
    dL/dH[t] = e[t] + G_up sum_j h(H - l_j) - G_down sum_j h(-H - l_j)
    e[t-1]   = beta dL/dH[t],   dL/dI[t] = dL/dH[t]
    dL/dk[t] = sum over neurons of G_up sum_j dh/dk(H - l_j) + G_down sum_j dh/dk(-H - l_j)

written in I's dtype; dL/dk as per-(program, t) partials summed in float64 by torch.  A gradient at the
recorded potentials is added to dL/dH[t] (H recorded) or to e[t] (U recorded).  Gradients agree with
the torch path to float tolerance (another association).  Tested in the Triton interpreter on CPU only
(tests/test_triton_cf.py); not yet run on a GPU.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .triton_lif import CHUNK, _check_dtype, _decay_pointer, _device_guard, backward_block, forward_block, shape_of
from .triton_surrogates import kernel_inputs, shape_parameters

try:
    import triton
    import triton.language as tl

    from .triton_lif import _lanes, _surrogate
except ImportError:  # triton_lif.triton_available() is False and the kernels below are not defined
    triton = None

MODES = ("signed", "unsigned", "wrap_signed", "wrap_binary")
RECORDS = (None, "pre_fire", "post_reset")

if triton is not None:

    @triton.jit
    def _step(u, ptr, valid, beta, levels_ptr, reset_unit, D: tl.constexpr, MODE: tl.constexpr):
        """(H[t], up[t], net[t], U[t]) from U[t-1] and I[t] (at ``ptr``, in its own dtype), in the operation order
        of fused_cf.integrate."""
        charged = beta * u + tl.load(ptr, mask=valid, other=0.0).to(tl.float32)
        up = tl.zeros_like(charged)
        down = tl.zeros_like(charged)
        for j in tl.static_range(D):
            level = tl.load(levels_ptr + j)
            up += (charged >= level).to(tl.float32)
            if MODE == "signed":
                down += (charged <= -level).to(tl.float32)
            elif MODE != "unsigned":
                down += (charged < -level).to(tl.float32)
        net = up - down
        return charged, up, net, charged - reset_unit * net

    @triton.jit
    def _cf_forward_kernel(x_ptr, beta_ptr, levels_ptr, out_ptr, pot_ptr, N, reset_unit, scale, T: tl.constexpr,
                           D: tl.constexpr, MODE: tl.constexpr, RECORD: tl.constexpr, BLOCK: tl.constexpr):
        offsets, valid, stride = _lanes(N, BLOCK)
        beta = tl.load(beta_ptr)
        u = tl.zeros([BLOCK], dtype=tl.float32)
        for t in tl.static_range(T):
            charged, up, net, u = _step(u, x_ptr + t * stride + offsets, valid, beta, levels_ptr, reset_unit, D, MODE)
            out = (up if MODE == "wrap_binary" else net) * scale
            tl.store(out_ptr + t * stride + offsets, out.to(out_ptr.dtype.element_ty), mask=valid)
            if RECORD == "pre_fire":
                tl.store(pot_ptr + t * stride + offsets, charged, mask=valid)
            elif RECORD == "post_reset":
                tl.store(pot_ptr + t * stride + offsets, u, mask=valid)

    @triton.jit
    def _crossings(SHAPE: tl.constexpr, charged, sign, levels_ptr, param_ptr, t, N_PARAMS: tl.constexpr,
                   SWITCHES: tl.constexpr, D: tl.constexpr, LEARNED_K: tl.constexpr):
        """(sum_j h(sign H - l_j), sum_j dh/dk(sign H - l_j)) (the second 0 unless LEARNED_K)."""
        bumps = tl.zeros_like(charged)
        slopes = tl.zeros_like(charged)
        for j in tl.static_range(D):
            shifted = sign * charged - tl.load(levels_ptr + j)
            if LEARNED_K:
                h, slope_k = _surrogate(SHAPE, shifted, param_ptr, t, 0, 1, N_PARAMS, False, SWITCHES)
                slopes += slope_k
            else:
                h = _surrogate(SHAPE, shifted, param_ptr, t, 0, 1, N_PARAMS, False, SWITCHES)
            bumps += h
        return bumps, slopes

    @triton.jit
    def _cf_backward_kernel(x_ptr, g_ptr, beta_ptr, levels_ptr, param_ptr, gx_ptr, k_partial_ptr, gp_ptr, N,
                            reset_unit, scale, T: tl.constexpr, CHUNK: tl.constexpr, D: tl.constexpr,
                            MODE: tl.constexpr, RECORD: tl.constexpr, DETACH: tl.constexpr, SHAPE: tl.constexpr,
                            N_PARAMS: tl.constexpr, SWITCHES: tl.constexpr, LEARNED_K: tl.constexpr,
                            BLOCK: tl.constexpr):
        offsets, valid, stride = _lanes(N, BLOCK)
        beta = tl.load(beta_ptr)
        # replay up to the last chunk's start, keeping U at every chunk start
        u = tl.zeros([BLOCK], dtype=tl.float32)
        starts = (u,)
        for t in tl.static_range((T - 1) // CHUNK * CHUNK):
            charged, up, net, u = _step(u, x_ptr + t * stride + offsets, valid, beta, levels_ptr, reset_unit, D, MODE)
            if (t + 1) % CHUNK == 0:
                starts = starts + (u,)
        e = tl.zeros([BLOCK], dtype=tl.float32)  # dL/dU[t]
        for k in tl.static_range((T - 1) // CHUNK, -1, -1):
            u = starts[k]
            stash = (u,)  # stash[j + 1] = H[k CHUNK + j]
            for t in tl.static_range(k * CHUNK, k * CHUNK + CHUNK):
                if t < T:
                    charged, up, net, u = _step(u, x_ptr + t * stride + offsets, valid, beta, levels_ptr,
                                                reset_unit, D, MODE)
                    stash = stash + (charged,)
            for t in tl.static_range(k * CHUNK + CHUNK - 1, k * CHUNK - 1, -1):
                if t < T:
                    charged = stash[t - k * CHUNK + 1]
                    if RECORD == "post_reset":  # a gradient at the recorded U[t] joins e[t]
                        e += tl.load(gp_ptr + t * stride + offsets, mask=valid, other=0.0)
                    grad_out = tl.load(g_ptr + t * stride + offsets, mask=valid, other=0.0).to(tl.float32)
                    grad_up = grad_out * scale
                    if MODE == "wrap_binary":
                        grad_down = tl.zeros_like(grad_up)
                    else:
                        grad_down = -grad_up
                    if not DETACH:
                        grad_up = grad_up - reset_unit * e
                        grad_down = grad_down + reset_unit * e
                    bumps, slopes = _crossings(SHAPE, charged, 1.0, levels_ptr, param_ptr, t, N_PARAMS, SWITCHES, D,
                                               LEARNED_K)
                    grad_h = e + grad_up * bumps
                    slope_sum = grad_up * slopes
                    if MODE != "unsigned":
                        bumps, slopes = _crossings(SHAPE, charged, -1.0, levels_ptr, param_ptr, t, N_PARAMS,
                                                   SWITCHES, D, LEARNED_K)
                        grad_h = grad_h - grad_down * bumps
                        slope_sum = slope_sum + grad_down * slopes
                    if LEARNED_K:
                        tl.store(k_partial_ptr + tl.program_id(0) * T + t,
                                 tl.sum(tl.where(valid, slope_sum, 0.0), axis=0))
                    if RECORD == "pre_fire":  # a gradient at the recorded H[t]
                        grad_h += tl.load(gp_ptr + t * stride + offsets, mask=valid, other=0.0)
                    tl.store(gx_ptr + t * stride + offsets, grad_h.to(gx_ptr.dtype.element_ty), mask=valid)
                    e = beta * grad_h


def _check(x: Tensor, mode: str, levels: Tensor, record: str | None) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if record not in RECORDS:
        raise ValueError(f"record must be one of {RECORDS}, got {record!r}")
    _check_dtype(x)
    if levels.dtype != torch.float32 or levels.dim() != 1:
        raise ValueError(f"levels must be a 1-D fp32 tensor, got {levels.dtype} of shape {tuple(levels.shape)}")


def cf_forward(x: Tensor, decay: Tensor, levels: Tensor, mode: str, reset_unit: float, scale: float, *,
               record: str | None = None, block: int | None = None, num_warps: int = 4) -> tuple[Tensor, Tensor | None]:
    """(outputs [T, ...] in x's dtype, the recorded potentials or None), bitwise the reference loop's (module
    docstring).  ``decay``: beta, a one-element tensor; ``levels``: the D levels l_j, fp32 [D] on x's device;
    ``record``: None, ``"pre_fire"`` (H[t]) or ``"post_reset"`` (U[t]), recorded in fp32; ``block``, ``num_warps``: the
    launch configuration (as ``triton_lif.lif_forward``'s)."""
    _check(x, mode, levels, record)
    x = x.contiguous()
    out = torch.empty_like(x)
    potentials = torch.empty(x.shape, device=x.device) if record else None
    steps, neurons = x.shape[0], x[0].numel()
    block = block or forward_block(x.dtype)
    with _device_guard(x):
        _cf_forward_kernel[(triton.cdiv(neurons, block),)](
            x, _decay_pointer(decay), levels, out, out if potentials is None else potentials, neurons, reset_unit,
            scale, T=steps, D=levels.numel(), MODE=mode, RECORD=record, BLOCK=block, num_warps=num_warps,
            enable_fp_fusion=False)
    return out, potentials


def cf_backward(x: Tensor, grad_out: Tensor, decay: Tensor, levels: Tensor, mode: str, reset_unit: float,
                scale: float, reset_detach: bool, shape, params: Tensor, *, switches: tuple = (),
                learned_k: bool = False, record: str | None = None, grad_potentials: Tensor | None = None,
                block: int | None = None, chunk: int = CHUNK, num_warps: int = 4) -> tuple[Tensor, Tensor | None]:
    """(dL/dI [T, ...] in x's dtype, dL/dk[T] in float64 or None unless ``learned_k``).

    ``shape``: a ``triton.jit`` derivative (``triton_surrogates.kernel_shape``: the surrogate's ``shape``, or
    with ``learned_k`` a TLSG's ``proxy_derivatives``); ``params``: its numeric parameters per step, fp32
    [T, 1, P] (both directions, every level); ``switches``: its trailing None / bool parameters;
    ``grad_potentials``: the gradient at the potentials ``cf_forward`` recorded (``record``), fp32 [T, ...];
    ``block``, ``chunk``, ``num_warps``: as ``triton_lif.lif_backward``'s.
    """
    _check(x, mode, levels, record)
    record = record if grad_potentials is not None else None
    grad_potentials = None if grad_potentials is None else grad_potentials.float().contiguous()
    x, grad_out = x.contiguous(), grad_out.contiguous()
    steps, neurons = x.shape[0], x[0].numel()
    if params.dim() != 3 or params.shape[:2] != (steps, 1):
        raise ValueError(f"params must be fp32 [T = {steps}, 1, P], got shape {tuple(params.shape)}")
    block = block or backward_block(steps)
    programs = triton.cdiv(neurons, block)
    grad_x = torch.empty_like(x)
    k_partials = torch.empty((programs, steps) if learned_k else (1,), dtype=torch.float32, device=x.device)
    with _device_guard(x):
        _cf_backward_kernel[(programs,)](
            x, grad_out, _decay_pointer(decay), levels, params.contiguous(), grad_x, k_partials,
            k_partials if grad_potentials is None else grad_potentials, neurons, reset_unit, scale, T=steps,
            CHUNK=chunk, D=levels.numel(), MODE=mode, RECORD=record, DETACH=reset_detach, SHAPE=shape,
            N_PARAMS=params.shape[2], SWITCHES=tuple(switches), LEARNED_K=learned_k, BLOCK=block, num_warps=num_warps,
            enable_fp_fusion=False)
    return grad_x, (k_partials.sum(0, dtype=torch.float64) if learned_k else None)


@torch.library.custom_op("repro::cf_outputs", mutates_args=())
def cf_outputs(x: Tensor, k: Tensor | None, decay: Tensor, levels: Tensor, params: list[float], shape: str, mode: str,
               reset_unit: float, scale: float, reset_detach: bool, record: str) -> tuple[Tensor, Tensor]:
    """(outputs, recorded potentials or an empty tensor) of a circulate-firing layer with a fixed surrogate
    (``shape`` named by ``triton_lif.shape_name``, ``params`` its parameters) or a learned TLSG (``shape`` its
    ``proxy_derivatives``, ``k`` = k[T]), ``record`` "" (nothing), "pre_fire" or "post_reset", as one operator with
    its autograd formula: what ``torch.compile`` traces in place of ``models/fused_cf.py``'s autograd Function
    (opaque to inductor, no graph break; no double backward)."""
    out, potentials = cf_forward(x, decay, levels, mode, reset_unit, scale, record=record or None)
    return out, x.new_empty(0) if potentials is None else potentials


@cf_outputs.register_fake
def _(x, k, decay, levels, params, shape, mode, reset_unit, scale, reset_detach, record):
    return torch.empty_like(x), torch.empty_like(x, dtype=torch.float32) if record else x.new_empty(0)


@torch.library.custom_op("repro::cf_grads", mutates_args=())
def cf_grads(x: Tensor, grad_out: Tensor, grad_potentials: Tensor | None, k: Tensor | None, decay: Tensor,
             levels: Tensor, params: list[float], shape: str, mode: str, reset_unit: float, scale: float,
             reset_detach: bool, record: str) -> tuple[Tensor, Tensor]:
    """(dL/dI, dL/dk[T] in float64, zeros without k) of ``cf_outputs`` through ``cf_backward``."""
    function = shape_of(shape)
    rows = ([{"k": value} for value in k.detach().unbind()] if k is not None
            else [dict(zip(shape_parameters(function), params))] * x.shape[0])
    compiled, table, switches = kernel_inputs(function, rows, torch.Size([1]), x.device)  # checked at forward
    grad_x, grad_k = cf_backward(x, grad_out, decay, levels, mode, reset_unit, scale, reset_detach,
                                 compiled, table, switches=switches, learned_k=k is not None,
                                 record=record or None, grad_potentials=grad_potentials)
    return grad_x, (grad_k if grad_k is not None else x.new_zeros(x.shape[0], dtype=torch.float64))


@cf_grads.register_fake
def _(x, grad_out, grad_potentials, k, decay, levels, params, shape, mode, reset_unit, scale, reset_detach, record):
    return torch.empty_like(x), x.new_empty(x.shape[0], dtype=torch.float64)


def _save_for_cf_grads(ctx, inputs, output) -> None:
    x, k, decay, levels, *switches = inputs
    ctx.save_for_backward(x, k, decay, levels)
    ctx.switches = switches


def _cf_outputs_backward(ctx, grad_out, grad_potentials):
    x, k, decay, levels = ctx.saved_tensors
    record = ctx.switches[-1]
    grad_x, grad_k = torch.ops.repro.cf_grads(x, grad_out, grad_potentials if record else None, k, decay, levels,
                                              *ctx.switches)
    return (grad_x, None if k is None else grad_k.to(k.dtype)) + (None,) * (2 + len(ctx.switches))


cf_outputs.register_autograd(_cf_outputs_backward, setup_context=_save_for_cf_grads)
