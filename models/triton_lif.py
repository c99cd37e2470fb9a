"""Triton kernels of the fused LIF path (``models/fused.py``): one forward and one backward kernel per layer.

One program owns a BLOCK of neurons (x viewed as [T, N], masked tail) and runs the whole time loop in
registers.  The equations are ``FusedLIFFunction``'s [reconstructed, as in fused.py]: lambda = decay,
c = 1 - lambda with ``decay_input`` (else 1), theta the neuron's threshold (reset terms), theta_t the
firing threshold of step t (theta, or a per-step / per-step-and-channel table)::

    u[t] = lambda u[t-1] (1 - s[t-1]) + c I[t]                  zero
    u[t] = lambda (u[t-1] - theta s[t-1]) + c I[t]              subtract, reset_decayed
    u[t] = lambda u[t-1] + c I[t] - theta s[t-1]                subtract
    u[t] = lambda u[t-1] + c I[t]                               none
    s[t] = u[t] >= theta_t (fire_ge) | u[t] > theta_t

``_charge`` performs the fp32 operations of ``models/dynamics.py::charge`` in its order, and every launch
uses ``enable_fp_fusion=False`` (no multiply-add is contracted into an FMA): u, hence the spikes, are
bitwise the reference loop's on the same device (products with a 0/1 spike are exact).

**Forward** (``lif_forward``): reads I in its own dtype (fp32, bf16 or fp16), computes in fp32 and
writes s in I's dtype (and, if asked, u in fp32); saves nothing.

**Per-step forward** (``lif_forward_by_step``, DS-ATGO: theta_t from statistics of the layer's u[t]): the
same kernel with T = 1 and ``RESUME``, launched once per step.  Launch t reads u[t-1] from an fp32 buffer,
fires s[t-1] against theta_{t-1} (a device table of 1, C or N values, written by the caller's torch code
after launch t-1), writes it in I's dtype, charges u[t] and writes it back; s[T-1] is one torch comparison.

**Backward** (``lif_backward``): reads the saved I, g = dL/ds and the small tables, writes dL/dI in I's
dtype, and nothing else of size [T, ...].  It replays the membrane from I into registers (the same
``_charge`` and thresholds as the forward, so the same u and s), then runs the reverse recurrence with
the surrogate derivative h[t] = shape(u[t] - theta_t, params[t]) evaluated in the kernel: ``SHAPE`` is
the surrogate's own ``shape`` compiled by ``models/triton_surrogates.py``.  With e[T] = 0::

    dL/ds[t] = g[t] + B[t] e[t+1]      B = -lambda u[t] (zero), -lambda theta (subtract, decayed),
                                        -theta (subtract), 0 (none or reset_detach)
    e[t]     = dL/ds[t] h[t] + lambda m[t] e[t+1]        m = 1 - s[t] (zero), 1 (otherwise)
    dL/dI[t] = c e[t]
    dL/dlambda = sum_t e[t+1] R'[t] - [decay_input] sum_t e[t] I[t],
                 R' = (1 - s) u (zero), u - theta s (subtract, decayed), u (otherwise)
    dL/dk[t]   = sum over neurons of dL/ds[t] dpsi_k/dk(u[t] - theta_t)     (learned TLSG, ``learned_k``)

Optional outputs for A2SG's statistics callbacks: dL/ds[t] and e[t] as fp32 [T, ...], or only the rows that its
window search samples, [T, units, length] (``rows``; the forward's membrane likewise); written only when asked.

The replayed u[t] are kept in registers for CHUNK steps at a time: for T > CHUNK a first pass stores
(u, s) at every chunk start, and each chunk is replayed from its start (one more read of I).  The decay
gradient is summed per lane in fp32 over t, per program with ``tl.sum``, and the per-program partials
in float64 by torch (deterministic for a given BLOCK; no atomics); dL/dk[t] likewise, one partial per
(program, t).

Not bitwise (tested at float tolerance): e and dL/dI against the torch recurrence (which uses addcmul
and add-with-alpha, fused multiply-adds), the decay gradient (another summation order), and sigmoid
shapes (each backend's exp).  Tested in the Triton interpreter on CPU (``TRITON_INTERPRET=1``) in
tests/test_triton_lif.py and compiled for sm_90 offline (``benchmarks/kernel_resources.py``); the fixed
surrogates' kernels ran on an H200 (docs/performance.md), the A2SG windows / switches, the callbacks'
outputs, the learned-k reduction and the per-step forward only in the interpreter so far.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import os
from typing import Callable

import torch
from torch import Tensor

from .triton_surrogates import kernel_inputs, per_channel, shape_parameters

try:
    import triton
    import triton.language as tl
except ImportError:  # triton_available() is False and the kernels below are not defined
    triton = None

RESETS = ("zero", "subtract", "none")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what the kernels read and write
CHUNK = 32  # steps replayed into registers at once


def forward_block(dtype: torch.dtype) -> int:
    """4 warps x 32 lanes x 16 bytes of input per lane (4 fp32 or 8 bf16 / fp16: 16-byte loads)."""
    return 128 * (16 // torch.empty((), dtype=dtype).element_size())


def backward_block(steps: int) -> int:
    """4 warps x 32 lanes x V neurons per lane, V = 4, 2 or 1 (a power of two, as ``tl.arange`` needs) so that
    min(T, CHUNK) x V <= 32 replayed fp32 values per lane (compiled for sm_90: 115 registers, no spills, at
    T = 32 and V = 1; 254 at V = 2)."""
    lanes = max(1, min(4, 32 // min(steps, CHUNK)))
    return 128 * (1 << (lanes.bit_length() - 1))


def triton_available(device: torch.device | str) -> bool:
    """Whether the kernels can run on ``device``: triton imports, and the device is CUDA or the Triton
    interpreter is on (then CPU tensors work)."""
    return triton is not None and (torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _lanes(N, BLOCK: tl.constexpr):
        """(offsets, valid, stride) of this program's BLOCK neurons in x viewed as [T, N] (int64 offsets)."""
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        return offsets, offsets < N, tl.cast(N, tl.int64)

    @triton.jit
    def _row_slots(offsets, valid, stride, units, inner, every, length, ROWS: tl.constexpr):
        """(slots, mask, step size) of an optional fp32 output [T, ...]: the neurons' own offsets, or with ROWS the
        entries of a row sample [T, units, length] they fill (``RowLayout`` of surrogates/base.py: element n of
        a step [outer, units, inner] in row (n // inner) % units, position j = n // (inner units) inner + n % inner,
        taken where j % every == 0 as entry j // every; in int32, as a step has fewer than 2^31 elements)."""
        if ROWS:
            n = offsets.to(tl.int32)
            position = n // (inner * units) * inner + n % inner
            slots = (n // inner) % units * length + position // every
            mask = valid & (position % every == 0)
            size = tl.cast(units, tl.int64) * length
        else:
            slots, mask, size = offsets, valid, stride
        return slots, mask, size

    @triton.jit
    def _fire(u, threshold, FIRE_GE: tl.constexpr):
        if FIRE_GE:
            spikes = (u >= threshold).to(tl.float32)
        else:
            spikes = (u > threshold).to(tl.float32)
        return spikes

    @triton.jit
    def _charge(u, s, current, lam, theta, RESET: tl.constexpr, DECAYED: tl.constexpr):
        """u[t] from u[t-1], s[t-1] and c I[t], in the operation order of dynamics.charge."""
        if RESET == "zero":
            u = lam * u * (1.0 - s) + current
        elif RESET == "subtract" and DECAYED:
            u = lam * (u - theta * s) + current
        elif RESET == "subtract":
            u = lam * u + current - theta * s
        else:
            u = lam * u + current
        return u

    @triton.jit
    def _current(ptr, valid, scale, DECAY_INPUT: tl.constexpr):
        """c I[t] in fp32 from I[t] in its own dtype."""
        current = tl.load(ptr, mask=valid, other=0.0).to(tl.float32)
        if DECAY_INPUT:
            current = scale * current
        return current

    @triton.jit
    def _step_threshold(thr_ptr, t, channel, channels, theta, STEP_THRESHOLDS: tl.constexpr,
                        THRESHOLD_CHANNELS: tl.constexpr):
        """theta_t: theta, or the table's [t] or [t, channel] entry."""
        if THRESHOLD_CHANNELS:
            threshold = tl.load(thr_ptr + t * channels + channel)
        elif STEP_THRESHOLDS:
            threshold = tl.load(thr_ptr + t)
        else:
            threshold = theta
        return threshold

    @triton.jit
    def _surrogate(SHAPE: tl.constexpr, x, param_ptr, t, channel, channels, N_PARAMS: tl.constexpr,
                   PARAM_CHANNELS: tl.constexpr, SWITCHES: tl.constexpr):
        """h = SHAPE(x, *params[t], *SWITCHES) (params[t, channel] with per-channel parameters).  The switches go in
        one by one: Triton 3.6 does not unpack a constexpr tuple (``*SWITCHES``; 3.8 does)."""
        if PARAM_CHANNELS:
            row = param_ptr + (t * channels + channel) * N_PARAMS
        else:
            row = param_ptr + t * N_PARAMS
        if N_PARAMS == 0:
            params = ()
        elif N_PARAMS == 1:
            params = (tl.load(row),)
        elif N_PARAMS == 2:
            params = (tl.load(row), tl.load(row + 1))
        else:
            tl.static_assert(N_PARAMS == 3, "surrogate shapes with more than 3 parameters are not supported")
            params = (tl.load(row), tl.load(row + 1), tl.load(row + 2))
        if len(SWITCHES) == 0:
            h = SHAPE(x, *params)
        elif len(SWITCHES) == 1:
            h = SHAPE(x, *params, SWITCHES[0])
        else:
            tl.static_assert(len(SWITCHES) == 2, "surrogate shapes with more than 2 switches are not supported")
            h = SHAPE(x, *params, SWITCHES[0], SWITCHES[1])
        return h

    @triton.jit
    def _forward_kernel(x_ptr, lam_ptr, out_ptr, mem_ptr, thr_ptr, fired_ptr, N, inner, channels, theta, row_units,
                        row_inner, row_every, row_length, T: tl.constexpr, RESET: tl.constexpr, DECAYED: tl.constexpr,
                        DECAY_INPUT: tl.constexpr, FIRE_GE: tl.constexpr, SPIKES: tl.constexpr, KEEP: tl.constexpr,
                        ROWS: tl.constexpr, RESUME: tl.constexpr, THRESHOLD_CHANNELS: tl.constexpr,
                        BLOCK: tl.constexpr):
        offsets, valid, stride = _lanes(N, BLOCK)
        kept, keep, kept_step = _row_slots(offsets, valid, stride, row_units, row_inner, row_every, row_length, ROWS)
        lam = tl.load(lam_ptr)
        scale = 1.0 - lam
        u = tl.zeros([BLOCK], dtype=tl.float32)
        s = tl.zeros([BLOCK], dtype=tl.float32)
        if RESUME:  # a step of lif_forward_by_step: u[t-1] from mem, s[t-1] fired against theta_{t-1} into fired
            u = tl.load(mem_ptr + offsets, mask=valid, other=0.0)
            s = _fire(u, _step_threshold(thr_ptr, 0, (offsets // inner) % channels, channels, theta, True,
                                         THRESHOLD_CHANNELS), FIRE_GE)
            tl.store(fired_ptr + offsets, s.to(fired_ptr.dtype.element_ty), mask=valid)
        for t in tl.static_range(T):
            current = _current(x_ptr + t * stride + offsets, valid, scale, DECAY_INPUT)
            u = _charge(u, s, current, lam, theta, RESET, DECAYED)
            s = _fire(u, theta, FIRE_GE)
            if SPIKES:
                tl.store(out_ptr + t * stride + offsets, s.to(out_ptr.dtype.element_ty), mask=valid)
            if KEEP:
                tl.store(mem_ptr + t * kept_step + kept, u, mask=keep)

    @triton.jit
    def _backward_kernel(x_ptr, g_ptr, lam_ptr, thr_ptr, param_ptr, gx_ptr, partial_ptr, k_partial_ptr, gs_ptr,
                         gu_ptr, N, inner, channels, theta, row_units, row_inner, row_every, row_length,
                         T: tl.constexpr, CHUNK: tl.constexpr,
                         RESET: tl.constexpr, DECAYED: tl.constexpr, DETACH: tl.constexpr, DECAY_INPUT: tl.constexpr,
                         FIRE_GE: tl.constexpr, STEP_THRESHOLDS: tl.constexpr, THRESHOLD_CHANNELS: tl.constexpr,
                         SHAPE: tl.constexpr, N_PARAMS: tl.constexpr, PARAM_CHANNELS: tl.constexpr,
                         SWITCHES: tl.constexpr, LEARNED_K: tl.constexpr, WANT_DECAY: tl.constexpr,
                         STORE_SPIKE_GRADS: tl.constexpr, STORE_MEMBRANE_GRADS: tl.constexpr, ROWS: tl.constexpr,
                         BLOCK: tl.constexpr):
        offsets, valid, stride = _lanes(N, BLOCK)
        kept, keep, kept_step = _row_slots(offsets, valid, stride, row_units, row_inner, row_every, row_length, ROWS)
        channel = (offsets // inner) % channels  # of element n of a step [B, C, ...]
        lam = tl.load(lam_ptr)
        scale = 1.0 - lam
        # replay up to the last chunk's start, keeping (u, s) at every chunk start
        u = tl.zeros([BLOCK], dtype=tl.float32)
        s = tl.zeros([BLOCK], dtype=tl.float32)
        starts_u = (u,)
        starts_s = (s,)
        for t in tl.static_range((T - 1) // CHUNK * CHUNK):
            u = _charge(u, s, _current(x_ptr + t * stride + offsets, valid, scale, DECAY_INPUT), lam, theta, RESET,
                        DECAYED)
            s = _fire(u, _step_threshold(thr_ptr, t, channel, channels, theta, STEP_THRESHOLDS,
                                         THRESHOLD_CHANNELS), FIRE_GE)
            if (t + 1) % CHUNK == 0:
                starts_u = starts_u + (u,)
                starts_s = starts_s + (s,)
        e = tl.zeros([BLOCK], dtype=tl.float32)  # e[t+1]
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for k in tl.static_range((T - 1) // CHUNK, -1, -1):
            # replay chunk k into registers: stash[j + 1] = u[k CHUNK + j]
            u = starts_u[k]
            s = starts_s[k]
            stash = (u,)
            for t in tl.static_range(k * CHUNK, k * CHUNK + CHUNK):
                if t < T:
                    u = _charge(u, s, _current(x_ptr + t * stride + offsets, valid, scale, DECAY_INPUT), lam, theta,
                                RESET, DECAYED)
                    s = _fire(u, _step_threshold(thr_ptr, t, channel, channels, theta, STEP_THRESHOLDS,
                                                 THRESHOLD_CHANNELS), FIRE_GE)
                    stash = stash + (u,)
            # reverse recurrence over the chunk
            for t in tl.static_range(k * CHUNK + CHUNK - 1, k * CHUNK - 1, -1):
                if t < T:
                    u = stash[t - k * CHUNK + 1]
                    threshold = _step_threshold(thr_ptr, t, channel, channels, theta, STEP_THRESHOLDS,
                                                THRESHOLD_CHANNELS)
                    s = _fire(u, threshold, FIRE_GE)
                    grad_s = tl.load(g_ptr + t * stride + offsets, mask=valid, other=0.0).to(tl.float32)
                    if not DETACH and RESET == "zero":
                        grad_s = grad_s + -lam * u * e
                    elif not DETACH and RESET == "subtract" and DECAYED:
                        grad_s = grad_s + -(lam * theta) * e
                    elif not DETACH and RESET == "subtract":
                        grad_s = grad_s + -theta * e
                    if STORE_SPIKE_GRADS:
                        tl.store(gs_ptr + t * kept_step + kept, grad_s, mask=keep)
                    if RESET == "zero":
                        carry = e * (1.0 - s)  # e[t+1] m[t]
                    else:
                        carry = e
                    if WANT_DECAY:
                        acc += carry * u
                        if RESET == "subtract" and DECAYED:
                            acc -= theta * (e * s)
                    if LEARNED_K:  # SHAPE gives (h, dh/dk): the block's sum of dL/ds dpsi/dk -> partial [pid, t]
                        h, slope_k = _surrogate(SHAPE, u - threshold, param_ptr, t, channel, channels, N_PARAMS,
                                                PARAM_CHANNELS, SWITCHES)
                        tl.store(k_partial_ptr + tl.program_id(0) * T + t,
                                 tl.sum(tl.where(valid, grad_s * slope_k, 0.0), axis=0))
                    else:
                        h = _surrogate(SHAPE, u - threshold, param_ptr, t, channel, channels, N_PARAMS,
                                       PARAM_CHANNELS, SWITCHES)
                    e = grad_s * h + lam * carry
                    if STORE_MEMBRANE_GRADS:
                        tl.store(gu_ptr + t * kept_step + kept, e, mask=keep)
                    if WANT_DECAY and DECAY_INPUT:
                        acc -= e * tl.load(x_ptr + t * stride + offsets, mask=valid, other=0.0).to(tl.float32)
                    grad_x = scale * e if DECAY_INPUT else e
                    tl.store(gx_ptr + t * stride + offsets, grad_x.to(gx_ptr.dtype.element_ty), mask=valid)
        if WANT_DECAY:
            tl.store(partial_ptr + tl.program_id(0), tl.sum(acc, axis=0))


def _device_guard(tensor: Tensor):
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _check(x: Tensor, reset: str) -> None:
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    _check_dtype(x)


def _check_dtype(x: Tensor) -> None:
    if x.dtype not in DTYPES:
        raise ValueError(f"the spiking-layer kernels take fp32, bf16 or fp16 input, got {x.dtype}")


def _decay_pointer(decay: Tensor) -> Tensor:
    """lambda as one fp32 element on the device (read by the kernels: no host synchronisation)."""
    return decay.detach().to(torch.float32).reshape(1)


def lif_forward(x: Tensor, decay: Tensor, threshold: float, reset: str, reset_decayed: bool, decay_input: bool,
                fire_ge: bool, *, membrane: Tensor | None = None, rows: tuple[int, int, int, int] | None = None,
                block: int | None = None, num_warps: int = 4) -> Tensor:
    """Spikes [T, ...] in x's dtype for a fixed threshold, bitwise the reference loop's (module docstring).
    ``decay``: lambda, a one-element tensor; ``membrane``: an fp32 tensor that, if given, also receives the
    pre-reset membrane u (for a surrogate that reads it): of x's shape, or with ``rows`` (a ``RowLayout`` of
    surrogates/base.py: units, inner, every, length) [T, units, length], the sampled rows of u[t] alone;
    ``block``, ``num_warps``: the launch configuration (default ``forward_block``, 4 warps;
    ``benchmarks/kernel_tuning.py``)."""
    _check(x, reset)
    x = x.contiguous()
    out = torch.empty_like(x)
    keep = membrane is not None
    layout = _row_layout(x, rows)
    if keep:
        _output_or("membrane", membrane, x, out, rows)
    steps, neurons = x.shape[0], x[0].numel()
    block = block or forward_block(x.dtype)
    with _device_guard(x):
        _forward_kernel[(triton.cdiv(neurons, block),)](
            x, _decay_pointer(decay), out, membrane if keep else out, out, out, neurons, 1, 1, threshold, *layout,
            T=steps, RESET=reset, DECAYED=reset_decayed, DECAY_INPUT=decay_input, FIRE_GE=fire_ge, SPIKES=True,
            KEEP=keep, ROWS=rows is not None, RESUME=False, THRESHOLD_CHANNELS=False, BLOCK=block,
            num_warps=num_warps, enable_fp_fusion=False)  # thr_ptr, fired_ptr unused: out
    return out


def _row_layout(x: Tensor, rows: tuple[int, int, int, int] | None) -> tuple[int, int, int, int]:
    """The kernels' (units, inner, every, length) of ``rows``, checked against a step of ``x``; without rows, the
    whole step (one row of every element)."""
    neurons = x[0].numel()
    if rows is None:
        return 1, neurons, 1, neurons
    units, inner, every, length = rows
    row = neurons // units if units > 0 and inner > 0 and neurons % (units * inner) == 0 else -1
    if neurons >= 2 ** 31:  # the kernels map a step's elements to rows in int32
        raise ValueError(f"rows of a step of {neurons} elements (2^31 or more) are not supported: take whole steps")
    if row < 0 or every < 1 or length != -(-row // every):
        raise ValueError(f"rows {tuple(rows)} (units, inner, every, length) do not describe a sample of a step of "
                         f"shape {tuple(x.shape[1:])}: take RowSample.layout(step shape)")
    return units, inner, every, length


def lif_forward_by_step(x: Tensor, decay: Tensor, threshold: float, reset: str, reset_decayed: bool,
                        decay_input: bool, fire_ge: bool, threshold_at: Callable[[Tensor, int], float | Tensor], *,
                        block: int | None = None) -> Tensor:
    """Spikes [T, ...] in x's dtype of a neuron whose firing threshold theta_t is computed from the membrane
    u[t] of the whole layer (DS-ATGO): one launch per step.  Launch t reads u[t-1] from one fp32 membrane
    buffer [B, C, ...], fires s[t-1] against theta_{t-1}, charges u[t] (bitwise ``integrate``'s) and writes it
    back in place; then ``threshold_at(u[t], t)`` (the caller's statistics, in torch) gives theta_t: a number
    or a tensor broadcasting to a step, read in fp32 by the next launch on the device (no host
    synchronisation; a float64 theta_t is rounded to fp32 here, where the torch loop would compare in float64).
    s[T-1] is one comparison.  ``threshold``: theta of the reset terms; ``decay``: lambda, one element."""
    _check(x, reset)
    x = x.contiguous()
    spikes = torch.empty_like(x)
    membrane = torch.empty(x.shape[1:], dtype=torch.float32, device=x.device)
    block = block or forward_block(x.dtype)
    lam, step_threshold = _decay_pointer(decay), None
    with _device_guard(x):
        for step in range(x.shape[0]):
            table, inner, channels = (membrane, 1, 1) if step == 0 else _threshold_table(step_threshold, membrane)
            _forward_kernel[(triton.cdiv(membrane.numel(), block),)](
                x[step], lam, membrane, membrane, table, spikes[step - 1], membrane.numel(), inner, channels,
                threshold, *_row_layout(x, None), T=1, RESET=reset, DECAYED=reset_decayed, DECAY_INPUT=decay_input,
                FIRE_GE=fire_ge, SPIKES=False, KEEP=True, ROWS=False, RESUME=step > 0, THRESHOLD_CHANNELS=channels > 1,
                BLOCK=block, enable_fp_fusion=False)  # out_ptr unused: membrane
            step_threshold = threshold_at(membrane, step)
    last = step_threshold.float() if isinstance(step_threshold, Tensor) else step_threshold  # as the kernel's table
    (torch.ge if fire_ge else torch.gt)(membrane, last, out=spikes[-1])
    return spikes


def _threshold_table(value: float | Tensor, membrane: Tensor) -> tuple[Tensor, int, int]:
    """(theta_t as fp32 [1], [C] or [N], inner, channels) for a step [B, C, ...] like ``membrane``: the forward
    kernel reads entry (n // inner) % channels for neuron n; one value, one per channel, or one per neuron (any
    other tensor that broadcasts to the step)."""
    table = per_channel(value, membrane.shape, membrane.device)
    if table is None:
        table = torch.broadcast_to(value.detach().float(), membrane.shape).reshape(-1)
        return table, 1, table.numel()
    if table.numel() == 1:
        return table, 1, 1
    return table, math.prod(membrane.shape[2:]), table.numel()


def lif_backward(x: Tensor, grad_spikes: Tensor, decay: Tensor, threshold: float, step_thresholds: Tensor | None,
                 shape, params: Tensor, reset: str, reset_decayed: bool, reset_detach: bool, decay_input: bool,
                 fire_ge: bool, want_decay: bool, *, switches: tuple = (), learned_k: bool = False,
                 spike_grads: Tensor | None = None, membrane_grads: Tensor | None = None,
                 rows: tuple[int, int, int, int] | None = None, block: int | None = None, chunk: int = CHUNK,
                 num_warps: int = 4) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(dL/dI [T, ...] in x's dtype, dL/dlambda as a float64 scalar or None unless ``want_decay``, dL/dk[T] in
    float64 or None unless ``learned_k``).

    ``x``: the saved input I; ``threshold``: theta (reset terms); ``step_thresholds``: theta_t as fp32
    [T, 1] or [T, C] (None: theta); ``shape``: a ``triton.jit`` surrogate derivative
    (``triton_surrogates.kernel_shape``); ``params``: its parameters, fp32 [T, 1 or C, P]
    (``triton_surrogates.parameter_table``).  C is the channel dimension 1 of a step [B, C, ...].
    ``switches``: the shape's trailing None / bool parameters (``triton_surrogates.kernel_parameters``).
    ``learned_k``: ``shape`` returns (h, dh/dk) of the TLSG's learned sharpness k (``params`` = k[t]), and
    the kernel sums dL/ds[t] dh/dk over each program's neurons (per-program partials, summed here in float64).
    ``spike_grads`` / ``membrane_grads``: fp32 [T, ...] tensors that, if given, receive dL/ds[t] (reset path
    included) and e[t] = dL/du[t] (what A2SG's statistics read; the kernel writes them only then); with ``rows``
    (as ``lif_forward``'s) [T, units, length], the sampled rows alone.
    ``block``, ``chunk``, ``num_warps``: the launch configuration and the steps replayed into registers at once
    (default ``backward_block``, ``CHUNK``, 4 warps; the outputs do not depend on them but for the partial sums'
    order).
    """
    _check(x, reset)
    x, grad_spikes = x.contiguous(), grad_spikes.contiguous()
    steps, neurons = x.shape[0], x[0].numel()
    channels = x.shape[2] if x.dim() > 2 else 1
    inner = x[0, 0, 0].numel() if x.dim() > 2 else 1
    for name, table in (("step_thresholds", step_thresholds), ("params", params)):
        if table is not None and (table.shape[0] != steps or table.shape[1] not in (1, channels)):
            raise ValueError(f"{name} must have T = {steps} rows of 1 or C = {channels} entries, "
                             f"got shape {tuple(table.shape)}")
    block = block or backward_block(steps)
    programs = triton.cdiv(neurons, block)
    grad_x = torch.empty_like(x)
    partials = torch.empty(programs if want_decay else 1, dtype=torch.float32, device=x.device)
    k_partials = torch.empty((programs, steps) if learned_k else (1,), dtype=torch.float32, device=x.device)
    thresholds = params if step_thresholds is None else step_thresholds.contiguous()  # unused pointer if None
    layout = _row_layout(x, rows)
    spike_grads_out, membrane_grads_out = (_output_or(name, output, x, partials, rows) for name, output in
                                           (("spike_grads", spike_grads), ("membrane_grads", membrane_grads)))
    with _device_guard(x):
        _backward_kernel[(programs,)](
            x, grad_spikes, _decay_pointer(decay), thresholds, params.contiguous(), grad_x, partials, k_partials,
            spike_grads_out, membrane_grads_out, neurons, inner, channels, threshold, *layout, T=steps, CHUNK=chunk,
            RESET=reset, DECAYED=reset_decayed, DETACH=reset_detach,
            DECAY_INPUT=decay_input, FIRE_GE=fire_ge, STEP_THRESHOLDS=step_thresholds is not None,
            THRESHOLD_CHANNELS=step_thresholds is not None and step_thresholds.shape[1] > 1, SHAPE=shape,
            N_PARAMS=params.shape[2], PARAM_CHANNELS=params.shape[1] > 1, SWITCHES=tuple(switches),
            LEARNED_K=learned_k, WANT_DECAY=want_decay,
            STORE_SPIKE_GRADS=spike_grads is not None, STORE_MEMBRANE_GRADS=membrane_grads is not None,
            ROWS=rows is not None, BLOCK=block, num_warps=num_warps, enable_fp_fusion=False)
    return (grad_x, partials.sum(dtype=torch.float64) if want_decay else None,
            k_partials.sum(0, dtype=torch.float64) if learned_k else None)


def kept_shape(x: Tensor, rows: tuple[int, int, int, int] | None = None) -> torch.Size:
    """The shape of the kernels' optional fp32 outputs (the membrane, dL/ds, dL/du) for input ``x``: x's, or with
    ``rows`` (units, inner, every, length) the sampled rows' [T, units, length]."""
    return x.shape if rows is None else torch.Size((x.shape[0], rows[0], rows[3]))


def _output_or(name: str, output: Tensor | None, x: Tensor, unused: Tensor,
               rows: tuple[int, int, int, int] | None = None) -> Tensor:
    """The optional fp32 output ``name`` of a kernel, shaped ``kept_shape(x, rows)`` (``unused``, never written,
    stands in for None)."""
    shape = kept_shape(x, rows)
    if output is not None and (output.dtype != torch.float32 or not output.is_contiguous() or output.shape != shape
                               or output.device != x.device):
        whose = "the input's shape" if rows is None else "the rows' shape"
        raise ValueError(f"{name} must be a contiguous fp32 tensor of {whose} {tuple(shape)} on {x.device}, got a "
                         f"{'' if output.is_contiguous() else 'non-contiguous '}{output.dtype} tensor of shape "
                         f"{tuple(output.shape)} on {output.device}")
    return unused if output is None else output


def shape_name(shape) -> str:
    """``module:qualname`` of a surrogate's ``shape`` function (how the custom ops name it)."""
    return f"{shape.__module__}:{shape.__qualname__}"


def shape_of(name: str):
    """The function ``shape_name`` names."""
    module, qualname = name.split(":")
    target = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


@torch.library.custom_op("repro::lif_spikes", mutates_args=())
def lif_spikes(x: Tensor, decay: Tensor, threshold: float, params: list[float], shape: str, reset: str,
               reset_decayed: bool, reset_detach: bool, decay_input: bool, fire_ge: bool) -> Tensor:
    """Spikes of a fixed-threshold LIF with a fixed surrogate (``shape`` named by ``shape_name``, ``params``
    its parameters) as one operator with its autograd formula: what ``torch.compile`` traces in place of
    ``models/fused.py``'s autograd Function (opaque to inductor, no graph break)."""
    return lif_forward(x, decay, threshold, reset, reset_decayed, decay_input, fire_ge)


@lif_spikes.register_fake
def _(x, decay, threshold, params, shape, reset, reset_decayed, reset_detach, decay_input, fire_ge):
    return torch.empty_like(x)


@torch.library.custom_op("repro::lif_grads", mutates_args=())
def lif_grads(x: Tensor, grad_spikes: Tensor, decay: Tensor, threshold: float, params: list[float], shape: str,
              reset: str, reset_decayed: bool, reset_detach: bool, decay_input: bool,
              fire_ge: bool) -> tuple[Tensor, Tensor]:
    """(dL/dI, dL/dlambda as a float64 scalar) of ``lif_spikes`` through ``lif_backward``."""
    function = shape_of(shape)
    compiled, table, switches = kernel_inputs(function, [dict(zip(shape_parameters(function), params))] * x.shape[0],
                                              x[0].shape, x.device)  # checked when the operator was chosen
    return lif_backward(x, grad_spikes, decay, threshold, None, compiled, table, reset, reset_decayed,
                        reset_detach, decay_input, fire_ge, True, switches=switches)[:2]


@lif_grads.register_fake
def _(x, grad_spikes, decay, threshold, params, shape, reset, reset_decayed, reset_detach, decay_input, fire_ge):
    return torch.empty_like(x), x.new_empty((), dtype=torch.float64)


def _save_for_lif_grads(ctx, inputs, output) -> None:
    x, decay, *switches = inputs
    ctx.save_for_backward(x, decay)
    ctx.switches = switches


def _lif_spikes_backward(ctx, grad_spikes):
    x, decay = ctx.saved_tensors
    grad_x, grad_decay = torch.ops.repro.lif_grads(x, grad_spikes, decay, *ctx.switches)
    return (grad_x, grad_decay.to(decay.dtype)) + (None,) * len(ctx.switches)


lif_spikes.register_autograd(_lif_spikes_backward, setup_context=_save_for_lif_grads)
