"""Triton kernels for the two elementwise time loops of the fused LIF path (``models/fused.py``).

One program owns a BLOCK of neurons (x viewed as [T, N], masked tail) and runs the whole time loop
in registers: u, s (forward) and e = dL/du (backward) never leave the program between steps.

Forward (``lif_forward``), the equations of ``integrate`` [reconstructed, as in fused.py] with a fixed
threshold theta, lambda = decay, c = scale (1 - lambda for ``decay_input``, else 1), u[0] = c * I[0]::

    u[t] = c I[t] + (lambda u[t-1]) (1 - s[t-1])                 zero
    u[t] = (u[t-1] - theta s[t-1]) lambda + c I[t]               subtract, reset_decayed
    u[t] = ((u[t-1] lambda) + c I[t]) - theta s[t-1]             subtract
    u[t] = u[t-1] lambda + c I[t]                                none
    s[t] = u[t] >= theta (fire_ge) | u[t] > theta

written with the fp32 operations of ``integrate`` in its order (the bracketing above), compiled with
``enable_fp_fusion=False`` so that no multiply-add is contracted into an FMA.  The products with a 0/1
spike are exact, so torch's CPU ``addcmul`` (here fma(value * t1, t2, self)) rounds as the separate
operations do: u is bitwise ``integrate``'s on CPU and the reference loop's (``neurons.charge``: separate
kernels) on any device, hence the spikes are identical.  Caveat [unverified, no GPU]: torch's CUDA
``addcmul`` computes self + value * (t1 * t2), which nvcc may contract into fma(value, t1 * t2, self),
one rounding; if it does, ``integrate``'s zero reset on CUDA differs in the last bit from the reference
loop and from this kernel (which follows the loop).

Backward (``lif_backward``), the recurrence of ``FusedLIFFunction.backward`` with e[T] = 0,
g = dL/ds, h[t] = surrogate derivative at u[t] - theta_t (given), s[t] recomputed as
u[t] >= theta_t (or >) with theta_t the step's firing threshold::

    dL/ds[t] = g[t] + B[t] e[t+1]     B = -lambda u[t] (zero), -lambda theta (subtract, decayed),
                                      -theta (subtract), 0 (none or reset_detach)
    e[t]     = dL/ds[t] h[t] + lambda m[t] e[t+1]       m = 1 - s[t] (zero), 1 (otherwise)
    dL/dlambda (partial) = sum_t e[t+1] R'[t],  R' = (1 - s) u (zero), u - theta s (subtract,
                                      decayed), u (subtract not decayed, none)

The returned e is dL/du (the caller scales it by 1 - lambda for ``decay_input``), and the decay
gradient leaves out the decay_input term -sum_t e[t] I[t] (the caller adds it).  The decay sum is
accumulated per lane in fp64 over t, reduced per program, and the per-program partials are summed in
torch (fp64); it matches the reference's fp32 dot products to float rounding, not bitwise.  e matches
to float rounding too (bitwise here except the attached zero reset, where torch's addcmul is an FMA).

Tested only in the Triton interpreter (``TRITON_INTERPRET=1``, CPU tensors) against the torch
reference in tests/test_triton_lif.py; never run on a real GPU (none was available when written).  Every
constexpr variant was compiled offline for sm_90 (the PTX has mul.rn/add.rn and no fma), not launched.
"""
from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # triton_available() is False and the kernels below are not defined
    triton = None

RESETS = ("zero", "subtract", "none")


def triton_available(device: torch.device | str) -> bool:
    """Whether the kernels can run on ``device``: triton imports, and the device is CUDA or the Triton
    interpreter is on (then CPU tensors work)."""
    return triton is not None and (torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _fire(u, threshold, FIRE_GE: tl.constexpr):
        if FIRE_GE:
            return (u >= threshold).to(tl.float32)
        return (u > threshold).to(tl.float32)

    @triton.jit
    def _forward_kernel(x_ptr, out_ptr, T, N, lam, scale, threshold, RESET: tl.constexpr, DECAYED: tl.constexpr,
                        FIRE_GE: tl.constexpr, KEEP: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        valid = offsets < N
        x_ptr += offsets
        out_ptr += offsets
        u = tl.load(x_ptr, mask=valid) * scale
        s = _fire(u, threshold, FIRE_GE)
        tl.store(out_ptr, u if KEEP else s, mask=valid)
        for _ in range(1, T):
            x_ptr += N
            out_ptr += N
            current = tl.load(x_ptr, mask=valid) * scale
            if RESET == "zero":
                u = current + lam * u * (1.0 - s)
            elif RESET == "subtract" and DECAYED:
                u = (u - threshold * s) * lam + current
            elif RESET == "subtract":
                u = u * lam + current - threshold * s
            else:
                u = u * lam + current
            s = _fire(u, threshold, FIRE_GE)
            tl.store(out_ptr, u if KEEP else s, mask=valid)

    @triton.jit
    def _backward_kernel(mem_ptr, h_ptr, g_ptr, thr_ptr, out_ptr, partial_ptr, T, N, lam, theta, reset_coef,
                         RESET: tl.constexpr, DECAYED: tl.constexpr, DETACH: tl.constexpr, FIRE_GE: tl.constexpr,
                         WANT_DECAY: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        valid = offsets < N
        last = tl.cast(T - 1, tl.int64) * N + offsets  # the loop runs from t = T - 1 down to 0
        mem_ptr += last
        h_ptr += last
        g_ptr += last
        out_ptr += last
        thr_ptr += T - 1
        e = tl.load(g_ptr, mask=valid, other=0.0) * tl.load(h_ptr, mask=valid, other=0.0)
        tl.store(out_ptr, e, mask=valid)
        acc = tl.zeros([BLOCK], dtype=tl.float64)
        for _ in range(1, T):
            mem_ptr -= N
            h_ptr -= N
            g_ptr -= N
            out_ptr -= N
            thr_ptr -= 1
            u = tl.load(mem_ptr, mask=valid, other=0.0)
            s = _fire(u, tl.load(thr_ptr), FIRE_GE)
            grad_s = tl.load(g_ptr, mask=valid, other=0.0)
            if not DETACH and RESET == "zero":
                grad_s = grad_s + -lam * u * e
            elif not DETACH and RESET == "subtract":
                grad_s = grad_s + reset_coef * e
            carry = e * (1.0 - s) if RESET == "zero" else e  # e[t+1] m[t]
            if WANT_DECAY:
                acc += carry.to(tl.float64) * u.to(tl.float64)
                if RESET == "subtract" and DECAYED:
                    acc -= theta * (e * s).to(tl.float64)
            e = grad_s * tl.load(h_ptr, mask=valid, other=0.0) + lam * carry
            tl.store(out_ptr, e, mask=valid)
        if WANT_DECAY:
            tl.store(partial_ptr + tl.program_id(0), tl.sum(acc, axis=0))


def _device_guard(tensor: Tensor):
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _check_reset(reset: str) -> None:
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")


def lif_forward(x: Tensor, lam: float, scale: float | None, threshold: float, reset: str, reset_decayed: bool,
                fire_ge: bool, keep: bool, *, block: int = 1024) -> tuple[Tensor | None, Tensor | None]:
    """``integrate`` (models/fused.py) for a fixed threshold: x [T, ...] fp32 -> (spikes, None), or
    (None, pre-reset membrane u) with ``keep``; bitwise equal to it (see the module docstring)."""
    _check_reset(reset)
    x = x.to(torch.float32).contiguous()
    out = torch.empty_like(x)
    steps, neurons = x.shape[0], x[0].numel()
    with _device_guard(x):
        _forward_kernel[(triton.cdiv(neurons, block),)](
            x, out, steps, neurons, lam, 1.0 if scale is None else scale, threshold, RESET=reset,
            DECAYED=reset_decayed, FIRE_GE=fire_ge, KEEP=keep, BLOCK=block, enable_fp_fusion=False)
    return (None, out) if keep else (out, None)


def lif_backward(membrane: Tensor, h: Tensor, grad_spikes: Tensor, lam: float, threshold: float,
                 thresholds_per_step: list[float] | None, reset: str, reset_decayed: bool, reset_detach: bool,
                 fire_ge: bool, want_decay: bool, *, block: int = 1024) -> tuple[Tensor, Tensor | None]:
    """The reverse-time recurrence of ``FusedLIFFunction.backward``: (e = dL/du [T, ...] fp32, the decay
    gradient without the decay_input term as an fp64 scalar, or None unless ``want_decay``).

    ``membrane`` is u [T, ...], ``h`` the surrogate derivative at u[t] - theta_t, ``threshold`` the
    neuron's theta (reset terms), ``thresholds_per_step`` the firing thresholds theta_t (default theta).
    """
    _check_reset(reset)
    membrane, h, grad_spikes = (t.to(torch.float32).contiguous() for t in (membrane, h, grad_spikes))
    steps, neurons = membrane.shape[0], membrane[0].numel()
    device = membrane.device
    if thresholds_per_step is None:
        thresholds = torch.full((steps,), threshold, dtype=torch.float32, device=device)
    else:
        thresholds = torch.tensor(thresholds_per_step, dtype=torch.float32, device=device)
    programs = triton.cdiv(neurons, block)
    grad_mem = torch.empty_like(membrane)
    partials = torch.zeros(programs if want_decay else 1, dtype=torch.float64, device=device)
    reset_coef = -(lam * threshold if reset_decayed else threshold)  # in float64, as fused.py's alpha
    with _device_guard(membrane):
        _backward_kernel[(programs,)](
            membrane, h, grad_spikes, thresholds, grad_mem, partials, steps, neurons, lam, threshold, reset_coef,
            RESET=reset, DECAYED=reset_decayed, DETACH=reset_detach, FIRE_GE=fire_ge, WANT_DECAY=want_decay,
            BLOCK=block, enable_fp_fusion=False)
    return grad_mem, (partials.sum() if want_decay else None)
