"""The Triton LIF kernels (models/triton_lif.py) and the surrogate derivatives compiled for them
(models/triton_surrogates.py), against the reference loop of ``LIF.forward`` (the oracle) and the torch
fused path (models/fused.py).

What is asserted bitwise and what at float tolerance (docs/performance.md, "What is bitwise equal"):
- bitwise, same device: the forward membrane and spikes of the kernel, of ``integrate`` and of the
  reference loop; the kernels' surrogate values for the rational shapes with fp32-tensor parameters;
  bf16 results on CUDA against the fp32 kernel's rounded to bf16;
- float tolerance: input and decay gradients (another association; torch's addcmul / add-with-alpha are
  fused multiply-adds), sigmoid shapes (each backend's exp), bf16 in the interpreter (its bf16 rounding
  is not round-to-nearest-even);
- counted: spike flips between paths that round differently (a contracted multiply-add), near threshold.

Without a GPU the kernels run in the Triton interpreter on CPU tensors.  ``TRITON_INTERPRET=1`` is read
when the kernels are decorated, so ``test_kernels_in_triton_interpreter`` reruns this file in a
subprocess with it set (this process, and any other test module importing triton, never sees it).
Inside that subprocess, or in-process on a CUDA machine, the kernel tests run directly.
"""
import argparse
import itertools
import math
import os
import random
import re
import runpy
from pathlib import Path

import pytest
import torch
from kernel_launches import LaunchCounter, OperationCounter, grads_of, run_in_triton_interpreter
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton", reason="triton is not installed: the Triton LIF kernels cannot be tested")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import repro.models.triton_lif as triton_lif  # noqa: E402
from repro.models import LIF, AdaptiveThresholdLIF, TDBatchNorm  # noqa: E402
from repro.models.fused import FusedLIFFunction, StepConfig, integrate  # noqa: E402
from repro.models.triton_lif import lif_backward, lif_forward, triton_available  # noqa: E402
from repro.models.triton_surrogates import kernel_parameters, kernel_shape, parameter_table, shape_parameters  # noqa: E402,E501
from repro.surrogates import SURROGATES, create_surrogate  # noqa: E402
from repro.surrogates import a2sg  # noqa: E402
from repro.surrogates.base import RowSample  # noqa: E402
from repro.surrogates.closed_form import absolute, clamp_min, div, indicator, logistic, where  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = torch.device("cpu" if INTERPRETED else "cuda")
BLOCK = 128  # two programs, the second one masked, on N = B C W in (128, 256)
RESETS = [("zero", True), ("subtract", True), ("subtract", False), ("none", True)]
A2SG_RATIONAL = {"ramp", "triangle", "box", "asym_triangle", "asym_rect", "shifted"}
RATIONAL = ({"rectangular", "triangle", "atan", "fast_sigmoid", "tgo", "mpd_agl", "a2sg", "a2sg_reconstructed"}
            | {f"a2sg:{shape}" for shape in A2SG_RATIONAL})  # no exp: bitwise with fp32 params
KERNEL_SURROGATES = RATIONAL | {"sigmoid", "a2sg:asym_sigmoid"}
kernels_run_here = pytest.mark.skipif(
    not (INTERPRETED or torch.cuda.is_available()),
    reason="no CUDA device: these run on CPU in test_kernels_in_triton_interpreter's subprocess")


@pytest.mark.skipif(INTERPRETED, reason="already inside the interpreter subprocess")
def test_kernels_in_triton_interpreter():
    run_in_triton_interpreter(__file__, "not in_triton_interpreter and not cpu_reference_loop and not flips and not "
                                        "outside_the_vocabulary and not compile and not autograd_of_the_primitive")


def test_triton_available():
    assert triton_available(torch.device("cuda"))
    assert triton_available(torch.device("cpu")) == INTERPRETED


def test_blocks_are_powers_of_two():
    """``tl.arange`` takes only power-of-two ranges: every T and dtype gets such a block (T = 9, 10 once got 384)."""
    blocks = {triton_lif.backward_block(steps) for steps in range(1, 70)}
    blocks |= {triton_lif.forward_block(dtype) for dtype in (torch.float32, torch.bfloat16, torch.float16)}
    assert all(block & (block - 1) == 0 for block in blocks), blocks
    assert [triton_lif.backward_block(steps) for steps in (4, 10, 16, 32, 64)] == [512, 256, 256, 128, 128]


def bitwise_equal(a, b) -> bool:
    """Equal bit patterns (signed zeros included)."""
    return a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


def make_input(rng: random.Random, steps: int, decay_input: bool, lam: float, theta: float):
    """Input [T, B, C, W] (N = B C W never a multiple of BLOCK) with some step-0 currents exactly on the
    threshold, where fire_ge decides."""
    torch.manual_seed(rng.randrange(1 << 30))
    x = (torch.randn(steps, 2, 3, 2 * rng.randint(11, 20) + 1) * 0.9 + 0.6) / (1 - lam if decay_input else 1)
    x[0, 0, 0, :8] = theta / (1 - torch.tensor(lam)) if decay_input else theta
    return x.to(DEVICE)


def kernel_tables(surrogate, steps: int, x):
    shape = type(surrogate).shape
    return kernel_shape(shape), parameter_table([surrogate.params] * steps, shape_parameters(shape), x[0].shape,
                                                x.device)


def torch_fused_grads(neuron, x, decay, upstream):
    """Spikes and (dL/dI, dL/dlambda) of the torch fused path (``triton=False``)."""
    x, decay = x.clone().requires_grad_(), decay.clone().requires_grad_()
    out = FusedLIFFunction.apply(x, decay, None, neuron)
    return out, torch.autograd.grad(out, (x, decay), upstream)


@kernels_run_here
@pytest.mark.parametrize("reset,reset_decayed", RESETS)
def test_kernels_match_reference_loop_and_torch_fused_path(reset, reset_decayed):
    """Every reset_detach x fire_ge x decay_input, T = 7 replayed in chunks of 3 (two full chunks and a
    partial one) and T = 1: forward bitwise, gradients to float tolerance."""
    rng = random.Random(f"{reset}{reset_decayed}")
    for (detach, fire_ge, decay_input), steps in itertools.product(itertools.product([False, True], repeat=3), (7, 1)):
        lam, theta = rng.choice([0.2, 0.5, 0.9]), rng.choice([0.5, 1.0])
        x, decay = make_input(rng, steps, decay_input, lam, theta), torch.tensor(lam, device=DEVICE)
        case = f"T={steps} detach={detach} fire_ge={fire_ge} decay_input={decay_input} lambda={lam} theta={theta}"
        config = StepConfig(theta, reset, reset_decayed, detach, decay_input, fire_ge)
        ref_spikes, ref_membrane = integrate(x, decay, config, lambda u, t: theta, keep=True)
        args = (x, decay, theta, reset, reset_decayed, decay_input, fire_ge)
        membrane = torch.empty(x.shape, device=DEVICE)
        spikes, kept_spikes = lif_forward(*args, block=BLOCK), lif_forward(*args, membrane=membrane, block=BLOCK)
        assert torch.equal(spikes, ref_spikes) and torch.equal(kept_spikes, spikes), case
        assert bitwise_equal(membrane, ref_membrane), case
        assert steps == 1 or 0 < spikes.mean() < 1, case
        kwargs = dict(decay=lam, decay_param="clamp", threshold=theta, reset=reset, reset_decayed=reset_decayed,
                      reset_detach=detach, fire_ge=fire_ge, decay_input=decay_input)
        loop = LIF(fused=False, **kwargs).to(DEVICE)
        loop.record_potentials = True
        assert torch.equal(loop(x), spikes) and bitwise_equal(torch.stack(loop.potentials), membrane), case

        neuron = LIF(surrogate=create_surrogate("atan"), triton=False, **kwargs).to(DEVICE)
        upstream = torch.randn(x.shape, device=DEVICE)
        _, (ref_grad_x, ref_grad_decay) = torch_fused_grads(neuron, x, decay, upstream)
        shape, params = kernel_tables(neuron.surrogate, steps, x)
        grad_x, grad_decay, _ = lif_backward(x, upstream, decay, theta, None, shape, params, reset, reset_decayed,
                                             detach, decay_input, fire_ge, True, block=BLOCK, chunk=3)
        assert grad_decay.dtype == torch.float64 and grad_decay.dim() == 0, case
        torch.testing.assert_close(grad_x, ref_grad_x, rtol=1e-5, atol=1e-6, msg=case)
        torch.testing.assert_close(grad_decay.float(), ref_grad_decay, rtol=1e-5, atol=1e-5, msg=case)


@triton.jit
def _shape_kernel(x_ptr, param_ptr, out_ptr, N, SHAPE: tl.constexpr, N_PARAMS: tl.constexpr, SWITCHES: tl.constexpr,
                  BLOCK: tl.constexpr):
    """out = h(x) through the LIF backward's own surrogate call (one parameter row)."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < N
    x = tl.load(x_ptr + offsets, mask=valid, other=0.0)
    h = triton_lif._surrogate(SHAPE, x, param_ptr, 0, 0, 1, N_PARAMS, False, SWITCHES)
    tl.store(out_ptr + offsets, h, mask=valid)


def kernel_values(shape, x, params: dict):
    names, switches = kernel_parameters(shape, [params])
    table = parameter_table([params], names, x.shape, x.device)
    out = torch.empty_like(x)
    _shape_kernel[(triton.cdiv(x.numel(), 256),)](x, table, out, x.numel(), SHAPE=kernel_shape(shape),
                                                  N_PARAMS=table.shape[2], SWITCHES=switches, BLOCK=256,
                                                  enable_fp_fusion=False)
    return out


def is_switch(value) -> bool:
    return value is None or isinstance(value, bool)


def probe_points(params: dict):
    """Window edges (and their float neighbours), signed zeros, tails, and bf16-rounded values."""
    edges = [v * f for v in params.values() if not is_switch(v) for f in (0.5, 1.0, 2.0, 1 / 3, 0.25, 1.5, 0.75)]
    edges = torch.tensor(edges + [0.0, 1e-30, 1e30, 80.0, 200.0])
    neighbours = torch.cat([edges, torch.nextafter(edges, torch.tensor(math.inf)),
                            torch.nextafter(edges, torch.tensor(-math.inf))])
    grid = torch.linspace(-3, 3, 1201)
    points = torch.cat([neighbours, -neighbours, grid, (grid * 0.37).bfloat16().float(), torch.tensor([-0.0])])
    return points.to(DEVICE)


def registered_surrogates():
    """(name, surrogate) for every registered surrogate, the A2SG shapes at their default window (asymmetry
    0.5 where they have one), and the ramp with a fixed height and unclipped."""
    for name in SURROGATES.names():
        yield name, create_surrogate(name, **({"num_steps": 2} if name == "learnable" else {}))
    for shape in a2sg.SHAPES:
        yield f"a2sg:{shape}", a2sg.A2SG(shape=shape, asym=0.5 if shape in a2sg.ASYMMETRY_SHAPES else 0.0)
    yield "a2sg:ramp", a2sg.A2SG(height=0.3, clip=False)


@kernels_run_here
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # the tails (x = +-1e30) overflow to inf, as intended
def test_every_kernel_surrogate_is_its_torch_closed_form():
    """One closed form: wherever a surrogate's ``shape`` compiles for the kernels, the kernel's h equals
    torch's on window edges, zeros, tails and bf16-rounded points: bitwise for the rational shapes with fp32
    tensor parameters; otherwise (sigmoid: each backend's exp; Python-float parameters: constants folded
    in float64 by torch) within 1e-6 relative, or 1e-6 absolute for sigmoid, whose 1 - s cancels.  Switches
    (A2SG's ramp ``height=None``, ``clip``) are compiled in."""
    compiled = set()
    for name, surrogate in registered_surrogates():
        shape = surrogate.shape
        if kernel_shape(shape) is None:
            continue
        compiled.add(name)
        params = surrogate.call_params(torch.zeros(()))
        params = {k: v if is_switch(v) else float(v) for k, v in params.items()}
        x = probe_points(params)
        tensor_params = {k: v if is_switch(v) else torch.tensor(v, device=DEVICE) for k, v in params.items()}
        expected = shape(x, **tensor_params)
        got = kernel_values(shape, x, params)
        if name in RATIONAL:
            assert bitwise_equal(got, expected), name
        atol = 1e-6 if name in ("sigmoid", "a2sg:asym_sigmoid") else 1e-30
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=atol, msg=name)
        torch.testing.assert_close(got, shape(x, **params), rtol=1e-6, atol=atol, msg=name)
    assert compiled >= KERNEL_SURROGATES, f"not compiled for the kernels: {KERNEL_SURROGATES - compiled}"


def every_word(x, w):
    """A made-up shape that uses every word of the closed-form vocabulary."""
    return where(x > 0, div(indicator(absolute(x) < w), w), clamp_min(logistic(x * w), 0.25))


@kernels_run_here
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # the tails (x = +-1e30) overflow to inf, as intended
def test_every_vocabulary_word_compiles_to_the_same_values():
    x = probe_points({"w": 0.7})
    expected = every_word(x, torch.tensor(0.7, device=DEVICE))
    torch.testing.assert_close(kernel_values(every_word, x, {"w": 0.7}), expected, rtol=1e-6, atol=1e-7)


def test_shapes_outside_the_vocabulary_are_not_compiled():
    """The TLSG's shape (it calls another class; the learned TLSG's kernels evaluate its proxy_derivatives),
    torch functions and closures keep the torch backward."""
    assert kernel_shape(type(create_surrogate("learnable", num_steps=2)).shape) is None
    assert kernel_shape(type(create_surrogate("learnable", num_steps=2)).proxy_derivatives) is not None
    assert kernel_shape(lambda x, w: torch.tanh(x) / w) is None
    width = 0.5
    assert kernel_shape(lambda x: x * width) is None  # a closure


def test_kernels_refuse_outputs_they_cannot_write():
    """The optional fp32 outputs (A2SG's statistics: the membrane, dL/ds, dL/du) must be contiguous fp32 tensors
    shaped as the input or, with sampled rows, as the rows [T, units, length], on the input's device; and the rows
    must describe a sample of a step: one line, before any launch."""
    x, table = torch.zeros(2, 3, 4), torch.zeros(2, 1, 1)
    shape = kernel_shape(create_surrogate("atan").shape)
    rows = RowSample(None, 5).layout(x.shape[1:])
    assert rows == (1, 12, 3, 4)  # 12 elements in one row, every 3rd: 4 of them
    backward_args = (x, x, torch.tensor(0.5), 1.0, None, shape, table, "zero", True, False, False, False, False)
    for name, wrong, said, sample in (
            ("spike_grads", torch.zeros(2, 3, 4, dtype=torch.bfloat16), "bfloat16", None),
            ("membrane_grads", torch.zeros(2, 3), "shape (2, 3)", None),
            ("spike_grads", torch.zeros(4, 3, 2).transpose(0, 2), "non-contiguous", None),
            ("spike_grads", torch.zeros(2, 3, 4, device="meta"), "on meta", None),
            ("membrane_grads", torch.zeros(2, 3, 4), "shape (2, 3, 4)", rows)):
        whose = r"the input's shape \(2, 3, 4\)" if sample is None else r"the rows' shape \(2, 1, 4\)"
        with pytest.raises(ValueError, match=rf"{name} must be a contiguous fp32 tensor of {whose} on cpu, got "
                                             rf".*{re.escape(said)}"):
            lif_backward(*backward_args, **{name: wrong}, rows=sample)
    with pytest.raises(ValueError, match=r"membrane must be .* of the rows' shape \(2, 1, 4\)"):
        lif_forward(x, torch.tensor(0.5), 1.0, "zero", True, False, False, membrane=torch.zeros(x.shape), rows=rows)
    for wrong in ((1, 12, 3, 5), (5, 2, 1, 2), (1, -12, 1, 12), (0, 12, 1, 12), (1, 12, 0, 12)):
        with pytest.raises(ValueError, match=rf"rows {re.escape(str(wrong))} .* do not describe a sample of a step "
                                             r"of shape \(3, 4\): take RowSample.layout"):
            lif_forward(x, torch.tensor(0.5), 1.0, "zero", True, False, False, membrane=torch.zeros(2, 1, 5),
                        rows=wrong)


def neuron_pair(make):
    """The same neuron twice (separate surrogate state): with the kernels and with ``triton=False``."""
    kernel, reference = make(), make()
    reference.triton = False
    reference.load_state_dict(kernel.state_dict())
    return kernel.to(DEVICE), reference.to(DEVICE)


def adaptive_width_neurons(scope: str, steps: int) -> dict:
    """Makers of DS-ATGO's neuron (adaptive theta_t, TGO widths) and of a PLIF with MPD-AGL's widths (a feeding BN
    with random gammas), statistics and widths per layer or per channel (``scope``)."""
    norm = TDBatchNorm(3, dims=1)
    with torch.no_grad():
        norm.weight.uniform_(0.3, 1.5)

    def mpd_agl():
        neuron = LIF(decay=0.2, threshold=0.5, preset="reference", decay_learnable=True, decay_param="sigmoid",
                     surrogate=create_surrogate("mpd_agl", granularity=scope))
        neuron.set_input_norm(norm)
        return neuron
    return {"ds_atgo": lambda: AdaptiveThresholdLIF(num_steps=steps, stat_scope=scope), "mpd_agl": mpd_agl}


@kernels_run_here
@pytest.mark.parametrize("scope", ["layer", "channel"])
def test_backward_kernel_with_per_step_thresholds_and_widths(monkeypatch, scope):
    """DS-ATGO (adaptive theta_t per step, or per step and channel, TGO widths from the same statistics) and
    MPD-AGL (per-step widths, per layer or per channel): DS-ATGO's forward kernel launched per step (theta_t from
    the step's statistics between launches), MPD-AGL's forward kernel (fixed threshold; its widths from the
    step, the decay and the feeding BN), then the backward kernel with theta_t and the widths as tables; spikes
    equal, gradients equal the torch backward's."""
    counter = LaunchCounter(monkeypatch, triton_lif, ("_forward_kernel", "_backward_kernel"))
    launches = {"ds_atgo": ["_forward_kernel"] * 5 + ["_backward_kernel"],  # a forward launch per step
                "mpd_agl": ["_forward_kernel", "_backward_kernel"]}
    for method, make in adaptive_width_neurons(scope, steps=5).items():
        kernel, reference = neuron_pair(make)
        x = make_input(random.Random(scope), 5, False, 0.2, 1.0)
        upstream = torch.randn(x.shape, device=DEVICE)
        counter.launches.clear()
        out, grads = grads_of(kernel, x, upstream)
        assert counter.launches == launches[method]
        ref_out, ref_grads = grads_of(reference, x, upstream)
        assert torch.equal(out, ref_out) and 0 < out.mean() < 1
        for grad, ref_grad in zip(grads, ref_grads):
            torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


@kernels_run_here
@pytest.mark.parametrize("scope", ["layer", "channel"])
def test_surrogates_that_read_no_membrane_get_no_membrane_pass(scope):
    """TGO and MPD-AGL take their widths from the neuron's statistics, the step and the feeding BN
    (``reads_membrane`` False): the forward allocates the spikes [T, ...] (DS-ATGO also its one-step membrane
    buffer), neither an fp32 membrane [T, ...] written by the kernel nor u - theta_t at each step."""
    steps = 4
    for method, make in adaptive_width_neurons(scope, steps).items():
        neuron = make().to(DEVICE)
        assert not neuron.surrogate.reads_membrane
        x = make_input(random.Random(scope), steps, False, 0.2, 1.0).requires_grad_()
        recorder = AllocationRecorder()
        with recorder:
            out = neuron(x)
        step_bytes = x[0].numel() * 4
        large = [size for _, size in recorder.created if size >= step_bytes]
        assert large == [steps * step_bytes] + ([step_bytes] if method == "ds_atgo" else []), (method, recorder.created)
        assert 0 < out.mean() < 1


@kernels_run_here
@pytest.mark.parametrize("granularity", ["layer_time", "layer_channel_time"])
def test_a2sg_kernels_write_only_the_rows_the_search_samples(granularity):
    """A2SG's window search reads a fixed sample of each step (``observation_sample``): on a statistics step the
    forward kernel writes only those rows of u (no fp32 membrane [T, ...], no u - theta_t over a step) and the
    backward kernel only those rows of dL/ds and dL/du; the forwards that take no statistics (between them, and
    evaluation) run the plain forward kernel (``reads_membrane`` False).  So the only tensors of a step's size or
    more that forward and backward create are the spikes and the input gradient."""
    steps = 4
    neuron = LIF(surrogate=a2sg.A2SG(granularity=granularity, search_sample=7, update_every=2), preset="reference",
                 decay_learnable=True).to(DEVICE)
    x = make_input(random.Random(granularity), steps, False, 0.5, 1.0)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(8)).to(DEVICE)
    step_bytes = x[0].numel() * 4
    grads_of(neuron, x, upstream)  # the first forward sizes the windows; no statistics (update_every = 2)
    for optimizer_step, statistics in ((1, True), (2, False)):
        neuron.surrogate.after_optimizer_step(optimizer_step)
        assert neuron.surrogate.observes == statistics
        inputs, recorder = x.clone().requires_grad_(), AllocationRecorder()
        with recorder:
            torch.autograd.backward(neuron(inputs), upstream)
        large = [size for _, size in recorder.created if size >= step_bytes]
        assert large == [steps * step_bytes] * 2, (statistics, recorder.created)  # spikes, dL/dI
    assert int(neuron.surrogate.num_controller_steps) == 1  # the search ran on the statistics step's rows
    neuron.eval()
    recorder = AllocationRecorder()
    with recorder, torch.no_grad():
        neuron(x)
    assert [size for _, size in recorder.created if size >= step_bytes] == [steps * step_bytes]


@kernels_run_here
def test_a2sg_rows_along_the_last_dim_reach_the_search_through_the_torch_backward(monkeypatch):
    """Per-channel windows along the last dim (``channel_dim=-1``, tokens [B, N, C]): the forward kernel writes the
    search's rows of u (units along the last dim), the windows are no per-channel table of dim 1, so the torch
    backward runs and hands the callbacks the same rows of its gradients: the same rows of x, g and delta, spikes,
    gradients, windows and statistics as the torch path over two search steps."""
    counter = LaunchCounter(monkeypatch, triton_lif, ("_forward_kernel", "_backward_kernel"))
    x = make_input(random.Random("tokens"), 3, False, 0.5, 1.0)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    runs = []
    for triton_on in (True, False):
        neuron = LIF(surrogate=RecordingA2SG(granularity="layer_channel_time", channel_dim=-1, search_sample=5),
                     preset="reference", decay_learnable=True, triton=triton_on).to(DEVICE)
        with torch.no_grad():
            neuron(x)
        windows = neuron.surrogate.w_t
        windows.copy_(torch.linspace(0.3, 1.5, windows.numel()).view_as(windows))
        counter.launches.clear()
        for iteration in (1, 2):
            out, grads = grads_of(neuron, x, upstream)
            neuron.surrogate.after_optimizer_step(iteration)
        assert counter.launches == (["_forward_kernel"] * 2 if triton_on else [])
        runs.append((out, grads, neuron.surrogate))
    (out, grads, kernel), (ref_out, ref_grads, reference) = runs
    assert kernel.got_rows and not reference.got_rows
    assert torch.equal(out, ref_out) and 0 < out.mean() < 1
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    for (kind, step, value), (_, _, ref_value) in zip(kernel.seen, reference.seen, strict=True):
        torch.testing.assert_close(value, ref_value, rtol=0 if kind == "x" else 1e-5, atol=0 if kind == "x" else 1e-6)
    assert torch.equal(kernel.w_t, reference.w_t) and int(kernel.num_controller_steps) == 2
    torch.testing.assert_close(kernel.sgv_ema, reference.sgv_ema, rtol=1e-5, atol=1e-7)


@kernels_run_here
def test_a2sg_rows_under_accumulation_double_backward_and_bf16():
    """The sampled rows with gradient accumulation (two forwards per optimiser step: the last one supplies the
    statistics), a double backward (``create_graph=True``: the step graph is rebuilt and its hooks hand over the
    rows) and bf16 input: the same rows, windows and statistics as the torch path."""
    x = make_input(random.Random("accumulate"), 3, False, 0.5, 1.0)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(10)).to(DEVICE)
    runs = []
    for triton_on in (True, False):
        neuron = LIF(surrogate=RecordingA2SG(granularity="layer_channel_time", search_sample=7), preset="reference",
                     decay_learnable=True, triton=triton_on).to(DEVICE)
        with torch.no_grad():
            neuron(x)
        windows = neuron.surrogate.w_t
        windows.copy_(torch.linspace(0.3, 1.5, windows.numel()).view_as(windows))
        for iteration, (dtype, create_graph) in enumerate(((torch.float32, False), (torch.bfloat16, True)), 1):
            for half in (slice(0, 1), slice(1, 2)):
                inputs = x[:, half].to(dtype).requires_grad_()
                out = neuron(inputs)
                torch.autograd.grad(out, inputs, upstream[:, half].to(dtype), create_graph=create_graph)
            neuron.surrogate.after_optimizer_step(iteration)
        runs.append(neuron.surrogate)
    kernel, reference = runs
    assert kernel.got_rows and not reference.got_rows and int(kernel.num_controller_steps) == 2
    for (kind, step, value), (_, _, ref_value) in zip(kernel.seen, reference.seen, strict=True):
        torch.testing.assert_close(value, ref_value, rtol=0 if kind == "x" else 1e-5, atol=0 if kind == "x" else 1e-6)
    assert torch.equal(kernel.w_t, reference.w_t)
    torch.testing.assert_close(kernel.sgv_ema, reference.sgv_ema, rtol=1e-5, atol=1e-7)


@kernels_run_here
def test_a_row_sample_needs_parameters_that_read_no_membrane():
    """``observation_sample`` hands ``call_params`` the sampled rows as x: a surrogate that declares a sample but
    reads the membrane is refused in one line, before its parameters are computed from the wrong x."""
    class MembraneReadingA2SG(a2sg.A2SG):
        reads_membrane = True

    neuron = LIF(surrogate=MembraneReadingA2SG(search_sample=7)).to(DEVICE)
    with pytest.raises(TypeError, match=r"MembraneReadingA2SG.observation_sample\(\) needs call_params to read no "
                                        r"membrane \(reads_membrane = False\)"):
        neuron(make_input(random.Random("contract"), 2, False, 0.5, 1.0).requires_grad_())


DS_ATGO_CASES = [dict(stat_scope="layer"), dict(stat_scope="channel", fire_ge=False),
                 dict(stat_scope="layer", at=False), dict(stat_scope="channel", at=False),
                 dict(stat_scope="layer", sync_stats=True, fire_ge=False),
                 dict(stat_scope="channel", at_variant="estimated"), dict(stat_scope="layer", num_steps=1),
                 dict(stat_scope="channel", dtype=torch.bfloat16)]


@kernels_run_here
@pytest.mark.parametrize("options", DS_ATGO_CASES, ids=lambda options: "-".join(f"{k}={v}" for k, v in options.items()))
def test_ds_atgo_forward_kernel_per_step_equals_the_torch_path(monkeypatch, options):
    """DS-ATGO's adaptive threshold (layer or channel statistics, at on or off, fire_ge either way, float64 moments
    with sync_stats, TGO widths, learnable decay): one forward launch per step, theta_t from torch between them,
    then the backward kernel.  Two training forwards and an eval forward (running thresholds): spikes, the
    thresholds of every step and the running thresholds bitwise the torch path's, gradients to float tolerance."""
    counter = LaunchCounter(monkeypatch, triton_lif, ("_forward_kernel", "_backward_kernel"))
    options = dict(options)
    steps, dtype = options.pop("num_steps", 4), options.pop("dtype", torch.float32)
    x = make_input(random.Random(str(options)), steps, False, 0.2, 1.0).to(dtype)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(6)).to(DEVICE, dtype)
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-3)
    kernel, reference = neuron_pair(lambda: AdaptiveThresholdLIF(num_steps=steps, **options))
    for training in (True, True, False):
        kernel.train(training)
        reference.train(training)
        counter.launches.clear()
        out, grads = grads_of(kernel, x, upstream)
        assert counter.launches == ["_forward_kernel"] * steps + ["_backward_kernel"]
        ref_out, ref_grads = grads_of(reference, x, upstream)
        case = f"{options} T={steps} {dtype} training={training}"
        assert torch.equal(out, ref_out) and 0 < out.mean() < 1, case
        assert bitwise_equal(torch.stack(kernel.thresholds), torch.stack(reference.thresholds)), case
        assert bitwise_equal(kernel.running_thr, reference.running_thr), case
        assert len(grads) == 2, case  # input and decay
        for grad, ref_grad in zip(grads, ref_grads):
            torch.testing.assert_close(grad, ref_grad, **tolerance, msg=case)
    moved = kernel.running_thr != kernel.threshold  # two training forwards updated them (at=True only)
    assert moved.all() if kernel.at else not moved.any()


@kernels_run_here
def test_forward_kernel_hands_observers_the_membrane_of_each_step(monkeypatch):
    """A fixed-threshold LIF whose surrogate has an observer: the forward kernel writes the spikes and u, the
    observer gets x[t] = u[t] - theta for t = 0..T-1, bitwise the torch path's, and the spikes equal it (no
    comparison pass over u after the kernel)."""
    counter = LaunchCounter(monkeypatch, triton_lif, ("_forward_kernel", "_backward_kernel"))
    x = make_input(random.Random("observer"), 4, False, 0.5, 1.0)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(8)).to(DEVICE)
    runs, comparisons = [], []
    for neuron in neuron_pair(lambda: LIF(surrogate="atan", preset="reference", decay_learnable=True)):
        seen = []
        neuron.surrogate.observers.append(lambda sg, u, params, context: seen.append((context["step"], u.clone())))
        counter.launches.clear()
        with OperationCounter() as operations:
            runs.append((*grads_of(neuron, x, upstream), seen, list(counter.launches)))
        comparisons.append(operations.names["aten.gt"] + operations.names["aten.ge"])
    (out, grads, seen, launches), (ref_out, ref_grads, ref_seen, ref_launches) = runs
    assert comparisons[0] == 0 < comparisons[1]  # the torch path fires by comparison, the kernel path not
    assert launches == ["_forward_kernel", "_backward_kernel"] and ref_launches == []
    assert torch.equal(out, ref_out) and 0 < out.mean() < 1
    assert [step for step, _ in seen] == [step for step, _ in ref_seen] == [0, 1, 2, 3]
    assert all(bitwise_equal(u, ref_u) for (_, u), (_, ref_u) in zip(seen, ref_seen))
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


class ShapedThresholdLIF(LIF):
    """theta_t = theta (1 + 0.1 t) times a fixed pattern of shape ``shape`` against a step [B, C, W]."""

    def __init__(self, shape, **options):
        super().__init__(**options)
        self.pattern = shape

    def fire_context(self, u, step):
        threshold = self.threshold * (1 + 0.1 * step) * torch.linspace(0.8, 1.2, math.prod(self.pattern),
                                                                          device=u.device).view(self.pattern)
        return threshold, dict(mem=u, step=step, neuron=self, threshold=threshold)


@kernels_run_here
@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_per_step_forward_kernel_takes_channel_and_neuron_thresholds(monkeypatch, reset):
    """A ``fire_context`` threshold per channel ([1, C, 1]: a [T, C] table for the backward kernel) or per neuron
    ([W], broadcast: the forward kernel reads it per neuron, the backward runs in torch); the subtract reset
    removes the fixed theta, the spike compares with theta_t: spikes equal the torch path's, gradients too."""
    counter = LaunchCounter(monkeypatch, triton_lif, ("_forward_kernel", "_backward_kernel"))
    x = make_input(random.Random(reset), 3, False, 0.5, 1.0)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    for shape, backward in (((1, 3, 1), ["_backward_kernel"]), ((x.shape[-1],), [])):
        kernel, reference = neuron_pair(lambda: ShapedThresholdLIF(shape, surrogate="tgo", preset="reference",
                                                                    reset=reset, decay_learnable=True))
        counter.launches.clear()
        out, grads = grads_of(kernel, x, upstream)
        assert counter.launches == ["_forward_kernel"] * 3 + backward, shape
        ref_out, ref_grads = grads_of(reference, x, upstream)
        assert torch.equal(out, ref_out) and 0 < out.mean() < 1, shape
        for grad, ref_grad in zip(grads, ref_grads):
            torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6, msg=str(shape))


class RecordingA2SG(a2sg.A2SG):
    """A2SG that also records, in call order, the window search's rows (``row_sample``) of what its statistics
    callbacks are given: the surrogate input x[t] (forward), g[t] = dL/ds[t] and delta[t] = dL/du[t] (backward);
    where the fused path hands over the sampled rows themselves (``context["sampled"]``), those."""

    def __init__(self, **options):
        super().__init__(**options)
        self.seen = []

    def observe(self, x, params, context):
        super().observe(x, params, context)
        step = context.get("step")
        if "register_spike_grad" in context and self.training:
            self.got_rows = context.get("sampled", False)

            def rows(values):
                return (values if context.get("sampled") else self.row_sample.rows(values)).clone()
            self.seen.append(("x", step, rows(x)))
            context["register_spike_grad"](lambda g, step=step: self.seen.append(("g", step, rows(g))))
            context["register_membrane_grad"](lambda d, step=step: self.seen.append(("delta", step, rows(d))))


A2SG_CASES = [dict(shape=shape, asym=0.5 if shape in a2sg.ASYMMETRY_SHAPES else 0.0) for shape in a2sg.SHAPES] + [
    dict(shape="ramp", height=0.3, clip=False), dict(shape="ramp", search_sample=None),
    dict(shape="asym_triangle", asym=0.5, adapt="sgv_tgc", update_every=1)]


@kernels_run_here
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # asym_sigmoid's exp in the interpreter (-> 0)
@pytest.mark.parametrize("granularity", ["layer_time", "layer_channel_time"])
def test_a2sg_backward_kernel_serves_the_window_search(monkeypatch, granularity):
    """A2SG, every shape (and the ramp with a fixed height, unclipped; the search on every element; the
    reconstructed controller), per-step windows per layer or per channel: the forward kernel's membrane gives the
    window search the same x[t] as the torch fused path (the paper's search: only the rows it samples, 7 elements
    per unit here, written by the kernel), and the backward kernel evaluates the shape with the windows as a table
    and hands its statistics callbacks the same g[t] and delta[t] (rows), in the same order; spikes equal, input
    and (learnable) decay gradients to float tolerance, and over two search steps the same windows chosen."""
    counter = LaunchCounter(monkeypatch, triton_lif, ("_forward_kernel", "_backward_kernel"))
    x = make_input(random.Random(granularity), 3, False, 0.5, 1.0)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    for case in A2SG_CASES:
        runs = []
        for triton_on in (True, False):
            neuron = LIF(surrogate=RecordingA2SG(granularity=granularity, **{"search_sample": 7, **case}),
                         preset="reference", decay_learnable=True, triton=triton_on).to(DEVICE)
            with torch.no_grad():
                neuron(x)  # sizes the windows, then distinct ones per step (and channel)
            neuron.surrogate.w_t.copy_(torch.linspace(0.3, 1.5, neuron.surrogate.w_t.numel()).view_as(
                neuron.surrogate.w_t))
            counter.launches.clear()
            grads = []
            for iteration in (1, 2):
                out, step_grads = grads_of(neuron, x, upstream)  # input and decay
                grads.extend(step_grads)
                neuron.surrogate.after_optimizer_step(iteration)
            assert counter.launches == (["_forward_kernel", "_backward_kernel"] * 2 if triton_on else []), case
            runs.append((out, grads, neuron.surrogate))
        (out, grads, kernel), (ref_out, ref_grads, reference) = runs
        assert torch.equal(out, ref_out) and 0 < out.mean() < 1, case
        for grad, ref_grad in zip(grads, ref_grads):
            torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6, msg=str(case))
        assert [entry[:2] for entry in kernel.seen] == [entry[:2] for entry in reference.seen], case
        assert len(kernel.seen) == 2 * 3 * 3, case
        for (kind, step, value), (_, _, ref_value) in zip(kernel.seen, reference.seen):
            if kind == "x":
                assert torch.equal(value, ref_value), (case, step)
            torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-6, msg=f"{case} {kind}[{step}]")
        assert torch.equal(kernel.w_t, reference.w_t), case
        torch.testing.assert_close(kernel.sgv_ema, reference.sgv_ema, rtol=1e-4, atol=1e-6, msg=str(case))
        assert kernel.got_rows == (kernel.statistics == "paper") and not reference.got_rows, case


def tlsg_probe_points(k: float):
    """Around the rect proxy's window edges x = +-2/k (and their float neighbours), zero and tails."""
    edges = torch.tensor([2 / k, 1 / k, 0.0, 1e-30, 30.0, 1e30])
    points = torch.cat([edges, torch.nextafter(edges, torch.tensor(math.inf)),
                        torch.nextafter(edges, torch.tensor(-math.inf)), torch.linspace(-3, 3, 601)])
    return torch.cat([points, -points])


@pytest.mark.parametrize("shape", ["sigmoid", "rect", "atan"])
def test_tlsg_proxy_derivatives_are_autograd_of_the_primitive(shape):
    """The TLSG's closed-form (dpsi/dx, dpsi/dk), which the fused paths and the kernels use, equal autograd's
    derivatives of its primitive psi_k (its straight-through forward), at the rect's window edges too."""
    cls = type(create_surrogate("learnable", shape=shape, num_steps=2))
    for k in (0.7, 4.0, 13.0):
        x = tlsg_probe_points(k).requires_grad_()
        sharpness = torch.tensor(k, requires_grad=True)
        psi = cls.primitive(x, sharpness)
        expected = [torch.autograd.grad(psi.sum(), x, retain_graph=True)[0],
                    torch.autograd.grad(psi, sharpness, torch.eye(len(x)), is_grads_batched=True)[0]]
        for got, want in zip(cls.proxy_derivatives(x.detach(), sharpness.detach()), expected):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=f"{shape} k={k}")


@kernels_run_here
@pytest.mark.parametrize("reset,reset_decayed", [("zero", True), ("subtract", False)])
def test_tlsg_kernels_learn_the_sharpness(monkeypatch, reset, reset_decayed):
    """The learned TLSG (k[t] per step, or one k), every shape, attached reset and a learnable decay: one
    forward and one backward kernel, which evaluates psi_k' and reduces dL/dk[t] itself; spikes equal the
    reference loop's, input, decay and rho gradients to float tolerance."""
    counter = LaunchCounter(monkeypatch, triton_lif, ("_forward_kernel", "_backward_kernel"))
    x = make_input(random.Random(reset), 4, False, 0.5, 1.0)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    rho = torch.randn(4, generator=torch.Generator().manual_seed(5))
    for shape, granularity in itertools.product(["sigmoid", "rect", "atan"], ["per_layer_t", "per_layer"]):
        runs = []
        for fused in (True, False):
            surrogate = create_surrogate("learnable", shape=shape, granularity=granularity, num_steps=4)
            with torch.no_grad():
                surrogate.rho.copy_(rho[:surrogate.rho.numel()])
            neuron = LIF(surrogate=surrogate, preset="reference", reset=reset, reset_decayed=reset_decayed,
                         decay_learnable=True, fused=fused).to(DEVICE)
            counter.launches.clear()
            runs.append(grads_of(neuron, x, upstream))
            assert counter.launches == (["_forward_kernel", "_backward_kernel"] if fused else []), shape
        (out, grads), (ref_out, ref_grads) = runs
        case = f"{shape} {granularity} {reset}"
        assert torch.equal(out, ref_out) and 0 < out.mean() < 1, case
        assert len(grads) == 3 and grads[2].abs().min() > 0, case
        for grad, ref_grad in zip(grads, ref_grads):
            torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6, msg=case)


class AllocationRecorder(TorchDispatchMode):
    """(op, bytes) of every tensor an aten op creates (in-place and out= results are not new)."""

    def __init__(self):
        super().__init__()
        self.created = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and id(t.untyped_storage()) not in inputs:
                self.created.append((str(func), t.numel() * t.element_size()))
        return out


@kernels_run_here
@pytest.mark.parametrize("preset", ["snntorch", "reference"])
def test_one_forward_and_one_backward_launch_and_no_temporaries(monkeypatch, preset):
    """A fixed-threshold LIF layer (lif / plif with a learnable decay) runs one forward and one backward
    kernel, saves only its input, and the backward allocates its input gradient plus the per-program decay
    partials (4 B per BLOCK neurons) and nothing else of size [T, ...]; its input gradient is the torch
    path's."""
    counter = LaunchCounter(monkeypatch, triton_lif, ("_forward_kernel", "_backward_kernel"))
    neuron = LIF(surrogate="atan", preset=preset, decay_learnable=preset == "reference").to(DEVICE)
    x = make_input(random.Random(preset), 8, False, 0.5, 1.0).requires_grad_()
    out = neuron(x)
    assert counter.launches == ["_forward_kernel"]
    assert [t.data_ptr() for t in out.grad_fn.saved_tensors if t is not None and t.numel() > 1] == [x.data_ptr()]
    recorder, upstream = AllocationRecorder(), torch.ones_like(out)
    with recorder:
        out.backward(upstream)
    assert counter.launches == ["_forward_kernel", "_backward_kernel"]
    large = [(op, size) for op, size in recorder.created if size >= x[0].numel() * 4]
    assert large == [("aten.empty_like.default", x.numel() * 4)], recorder.created
    programs = triton.cdiv(x[0].numel(), triton_lif.backward_block(8))
    extra = sum(size for _, size in recorder.created) - x.numel() * 4
    assert extra <= 4 * programs + 64, recorder.created
    torch_path = LIF(surrogate="atan", preset=preset, decay_learnable=preset == "reference", triton=False).to(DEVICE)
    _, ref_grads = grads_of(torch_path, x.detach(), upstream)
    torch.testing.assert_close(x.grad, ref_grads[0], rtol=1e-5, atol=1e-6)


@kernels_run_here
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_input_read_and_written_in_its_own_dtype(dtype):
    """bf16 / fp16 input: spikes in the input's dtype equal the fp32 kernel's on the same (upcast) values;
    the gradient is the fp32 kernel's rounded once to the input's dtype (bitwise on CUDA; in the interpreter,
    whose bf16 rounding is not to nearest even, within one unit in the last place)."""
    rng = random.Random(str(dtype))
    x = make_input(rng, 6, True, 0.5, 1.0).to(dtype)
    decay, upstream = torch.tensor(0.5, device=DEVICE), torch.randn(x.shape, device=DEVICE).to(dtype)
    args = (decay, 1.0, "zero", True, True, True)
    spikes = lif_forward(x, *args)
    assert spikes.dtype == dtype and torch.equal(spikes.float(), lif_forward(x.float(), *args))
    shape, params = kernel_tables(create_surrogate("atan"), 6, x)
    grad_args = (decay, 1.0, None, shape, params, "zero", True, False, True, True, True)
    grad_x, grad_decay, _ = lif_backward(x, upstream, *grad_args)
    grad_x32, grad_decay32, _ = lif_backward(x.float(), upstream.float(), *grad_args)
    assert grad_x.dtype == dtype and torch.equal(grad_decay, grad_decay32)
    if INTERPRETED and dtype == torch.bfloat16:
        ulp = grad_x32.abs().clamp_min(2 ** -126) * 2 ** -7
        assert ((grad_x.float() - grad_x32).abs() <= ulp).all()
    else:
        assert torch.equal(grad_x, grad_x32.to(dtype))


@kernels_run_here
@pytest.mark.parametrize("make", [lambda: LIF(surrogate="atan", preset="reference", decay_learnable=True),
                                  lambda: AdaptiveThresholdLIF(num_steps=6)], ids=["plif", "adaptive_threshold"])
def test_fused_path_keeps_bf16_input_in_its_own_dtype(make):
    """``fused_lif`` on bf16 input (what ``LIF.forward`` would pass without its fp32 upcast): the layer saves
    the bf16 input itself, and its spikes and gradients are those of the fp32 upcast input (input gradient
    rounded once to bf16; within one bf16 ulp in the interpreter)."""
    from repro.models.fused import fused_lif

    x = make_input(random.Random("bf16"), 6, False, 0.2, 1.0).bfloat16()
    upstream = torch.randn(x.shape, device=DEVICE).bfloat16().float()  # the same in both dtypes
    results = []
    for inputs in (x.clone().requires_grad_(), x.float().requires_grad_()):
        neuron = make().to(DEVICE)
        out = fused_lif(neuron, inputs, neuron.decay.float())
        saved = [t for t in out.grad_fn.saved_tensors if t is not None and t.numel() > 1]
        assert [t.data_ptr() for t in saved] == [inputs.data_ptr()]
        grads = torch.autograd.grad(out, (inputs, neuron.decay_raw), upstream.to(out.dtype))
        results.append((out, *grads))
    (out, grad_x, grad_decay), (ref_out, ref_grad_x, ref_grad_decay) = results
    assert torch.equal(out.float(), ref_out) and grad_x.dtype == torch.bfloat16
    ulp = ref_grad_x.abs().clamp_min(2 ** -126) * 2 ** -7
    assert ((grad_x.float() - ref_grad_x).abs() <= ulp).all()
    torch.testing.assert_close(grad_decay, ref_grad_decay, rtol=1e-5, atol=1e-6)


def fma_membrane(x, lam: float, theta: float):
    """Zero-reset LIF with u[t] = fma(lambda, u[t-1] (1 - s[t-1]), I[t]): one rounding, as a contracted
    multiply-add (CUDA's addcmul) gives, emulated in float64 then rounded to fp32."""
    u, s, out = torch.zeros_like(x[0]), torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        u = (lam * (u * (1 - s)).double() + x[t].double()).float()
        s = (u > theta).float()
        out.append(s)
    return torch.stack(out)


def test_contracted_multiply_add_flips_few_spikes_near_threshold():
    """Paths that may round the membrane differently (an FMA where the reference loop has a multiply and an
    add) are compared by counting spike flips.  With u[1] spread by 1e-4 (about 800 fp32 ulp) around the
    threshold, 2^20 neurons: a few flips (59 in our run), never more than 1 in 5000; with the usual spread
    of the input, none."""
    torch.manual_seed(0)
    lam, theta = 0.7, 1.0
    loop = LIF(decay=lam, threshold=theta, fused=False)
    first = 0.5 + 0.1 * torch.randn(1 << 20)  # below threshold: no spike at step 0
    x = torch.stack([first, theta - lam * first + 1e-4 * torch.randn(1 << 20)])  # u[1] = theta + N(0, 1e-8)
    flips = int((fma_membrane(x, lam, theta) != loop(x)).sum())
    assert 0 < flips <= x[1].numel() / 5000, flips
    x = torch.randn(4, 1 << 18) * 0.9 + 0.6
    assert torch.equal(fma_membrane(x, lam, theta), loop(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels_against_the_cpu_reference_loop():
    """Across devices (other exp, FMA inside torch ops) spikes may flip near threshold: at most 1 in 10^5;
    gradients to float tolerance."""
    torch.manual_seed(0)
    x = torch.randn(8, 64, 128, 16) * 0.9 + 0.6
    upstream = torch.randn(x.shape)
    cpu = LIF(surrogate="atan", preset="reference", decay_learnable=True, fused=False)
    cuda = LIF(surrogate="atan", preset="reference", decay_learnable=True).cuda()
    out, (grad_x, grad_decay) = grads_of(cuda, x.cuda(), upstream.cuda())
    ref_out, (ref_grad_x, ref_grad_decay) = grads_of(cpu, x, upstream)
    assert int((out.cpu() != ref_out).sum()) <= x.numel() // 100_000
    torch.testing.assert_close(grad_x.cpu(), ref_grad_x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_decay.cpu(), ref_grad_decay, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(INTERPRETED, reason="compiles the real kernels (the interpreter only runs them)")
def test_kernels_compile_for_sm90_without_fma_approximate_division_or_spills(tmp_path):
    """Compiled offline for an H100/H200 (Triton's ptxas, no GPU needed), forward, the per-step forward (layer and
    channel thresholds) and backward (T = 5 replayed in chunks of 2), fp32 and bf16: no FMA in the LIF arithmetic, IEEE division in the surrogate, no register
    spills (benchmarks/kernel_resources.py reports the same at T = 4 and 32)."""
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
        pytest.skip("this triton wheel ships no NVIDIA tools")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
        main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_resources.py"))["main"]
        rows = main(["--steps", "5", "--chunk", "2", "--surrogates", "atan", "--output", str(tmp_path / "k.json")])
    kernels = ["forward", "forward_step_layer", "forward_step_channel", "backward"]  # step: DS-ATGO's per-step forward
    assert [(row["kernel"], row["dtype"]) for row in rows] == [(k, dtype) for dtype in ("fp32", "bf16") for k in kernels]
    for row in rows:
        assert row["fma"] == 0 and row["approx_div"] == 0 and row["spill_bytes"] == 0, row


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED or torch.cuda.is_available(),
                    reason="compiles the real kernels (the interpreter only runs them; a GPU's tests launch them)")
def test_every_kernel_the_method_recipes_launch_compiles_for_sm90(tmp_path):
    """Each distinct kernel launch of a training step of the four method recipes (recorded in the interpreter, fp32
    and bf16 autocast) compiles for an H100/H200 through Triton's JIT (no GPU needed): no register spills, IEEE
    division, and no FMA but inside libdevice's expf (the sigmoid TLSG of circulate firing)."""
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
        pytest.skip("this triton wheel ships no NVIDIA tools")
    recipes = {"ds_atgo_cifar10": {"forward_step", "forward_step_resumed", "backward"},
               "mpd_agl_cifar10": {"forward", "backward"},
               "a2sg_cifar100": {"forward_rows", "backward_rows"}, "cf_cifar10": {"cf_forward", "cf_backward"}}
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
        main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_resources.py"))["main"]
        rows = main(["--recipes", *recipes, "--output", str(tmp_path / "k.json")])
    for recipe, kernels in recipes.items():
        for dtype in ("fp32", "bf16"):
            launched = {row["kernel"] for row in rows if f"{recipe} {dtype}" in row["used_by"]}
            assert launched == kernels, (recipe, dtype, launched)
            assert {row["dtype"] for row in rows if f"{recipe} {dtype}" in row["used_by"]} == {dtype}
    for row in rows:
        assert row["spill_bytes"] == 0 and row["approx_div"] == 0, row
        assert row["fma"] == 0 or "sigmoid" in row["surrogate"].lower(), row


@kernels_run_here
def test_kernel_operators_pass_opcheck():
    """``repro::lif_spikes`` / ``repro::lif_grads`` (what torch.compile traces): schema, fake (meta) outputs,
    autograd registration and dispatch consistent (``torch.library.opcheck``)."""
    x = make_input(random.Random("opcheck"), 4, False, 0.5, 1.0)
    decay = torch.tensor(0.5, device=DEVICE)
    switches = (1.0, [2.0], triton_lif.shape_name(create_surrogate("atan").shape), "zero", True, False, False, True)
    torch.library.opcheck(torch.ops.repro.lif_spikes.default,
                          (x.clone().requires_grad_(), decay.clone().requires_grad_(), *switches))
    torch.library.opcheck(torch.ops.repro.lif_grads.default, (x, torch.randn_like(x), decay, *switches))


@kernels_run_here
@pytest.mark.parametrize("recipe", ["ds_atgo_cifar10", "mpd_agl_cifar10", "a2sg_cifar100", "cf_cifar10"])
def test_recipe_training_step_waits_for_nothing_on_the_host(monkeypatch, recipe):
    """Each method recipe's model (width 0.0625, 8 x 8 images) on the kernels: a training step (forward, backward,
    SGD step, the surrogates' ``after_optimizer_step``) waits for the device nowhere, which on a GPU empties the
    launch queue.  On CUDA every synchronisation raises (``set_sync_debug_mode``); in the interpreter the host
    reads that go through an aten operation are counted (``.item()`` / ``bool(tensor)``, data-dependent shapes,
    ``torch.tensor`` of host data; ``.tolist()`` of a CPU tensor is not visible there)."""
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    device = torch.device("cpu" if INTERPRETED else "cuda")
    torch.manual_seed(0)
    model = runpy.run_path(str(benchmarks / "train_step.py"))["build"](f"recipe:{recipe}", None,
                                                                      argparse.Namespace(width=0.0625)).to(device)
    hooked = [module for module in model.modules() if hasattr(module, "after_optimizer_step")]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, targets = torch.randn(2, 3, 8, 8, device=device), torch.tensor([1, 7], device=device)

    def training_step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images).mean(0), targets).backward()
        optimizer.step()
        for module in hooked:
            module.after_optimizer_step(0)
    training_step()  # sizes lazily built state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        with OperationCounter() as counter:
            training_step()
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert not counter.host_reads()


@kernels_run_here
@pytest.mark.parametrize("preset", ["snntorch", "reference"])
def test_torch_compile_keeps_the_kernels_without_graph_breaks(preset):
    """Under torch.compile (fullgraph: no graph break) a fixed-threshold LIF is the ``repro::lif_spikes``
    operator in the graph; spikes equal the reference loop's, gradients to float tolerance."""
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    make = lambda fused: LIF(surrogate="atan", preset=preset, decay_learnable=preset == "reference",  # noqa: E731
                             fused=fused).to(DEVICE)
    compiled, loop = torch.compile(make(True), backend=recording_backend, fullgraph=True), make(False)
    x = make_input(random.Random(preset), 5, False, 0.5, 1.0)
    upstream = torch.randn(x.shape, device=DEVICE)
    out, grads = grads_of(compiled, x, upstream)
    ref_out, ref_grads = grads_of(loop, x, upstream)
    assert any("repro.lif_spikes" in str(node.target) for graph in graphs for node in graph.graph.nodes)
    assert torch.equal(out, ref_out)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
