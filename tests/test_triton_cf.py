"""The circulate-firing Triton kernels (models/triton_cf.py) against the reference loop of ``CFNeuron.forward`` (the
oracle) and the torch fused path (models/fused_cf.py, kernels off with ``neuron.triton = False``).

Bitwise: the outputs (crossing counts by comparison, the charge and reset in the reference loop's order, no
contracted multiply-add), including inputs exactly on a level, where the mode's >= / <= / < decides.  Float
tolerance: input gradients and dL/dk (another association).  Without a GPU the kernels run in the Triton
interpreter on CPU tensors, in a subprocess with ``TRITON_INTERPRET=1`` (read when the kernels are decorated).
"""
import itertools
import os

import pytest
import torch
from kernel_launches import LaunchCounter, grads_of, run_in_triton_interpreter

pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot be tested")

import repro.models.triton_cf as triton_cf  # noqa: E402
import repro.models.triton_lif as triton_lif  # noqa: E402
from repro.models import LIF  # noqa: E402
from repro.models.circulate_firing import CFNeuron  # noqa: E402
from repro.models.triton_surrogates import kernel_inputs  # noqa: E402
from repro.surrogates import create_surrogate  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = torch.device("cpu" if INTERPRETED else "cuda")
kernels_run_here = pytest.mark.skipif(
    not (INTERPRETED or torch.cuda.is_available()),
    reason="no CUDA device: these run on CPU in test_cf_kernels_in_triton_interpreter's subprocess")


@pytest.mark.skipif(INTERPRETED, reason="already inside the interpreter subprocess")
def test_cf_kernels_in_triton_interpreter():
    run_in_triton_interpreter(__file__, "not in_triton_interpreter")


def make_surrogate(name: str, steps: int):
    if name != "learnable":
        return create_surrogate(name)
    surrogate = create_surrogate("learnable", num_steps=steps)
    with torch.no_grad():  # a different k at every step
        surrogate.rho.copy_(torch.randn(steps, generator=torch.Generator().manual_seed(7)))
    return surrogate


def make_input(steps: int, levels: torch.Tensor):
    """[T, 2, 3, 23] (N = 138: a masked second program at BLOCK 128), with step-0 currents exactly on +-l_j."""
    x = torch.randn(steps, 2, 3, 23, generator=torch.Generator().manual_seed(steps)) * 2.0
    x[0, 0, 0, :len(levels)] = levels
    x[0, 0, 1, :len(levels)] = -levels
    return x.to(DEVICE)


@kernels_run_here
@pytest.mark.parametrize("mode", ["signed", "unsigned", "wrap_signed", "wrap_binary"])
def test_cf_kernels_match_reference_loop_and_torch_fused_path(monkeypatch, mode):
    """Every mode (the ring with D wraps), attached and detached reset, the output scale theta, a fixed
    surrogate (sigmoid: every level's term; triangle) and the learned TLSG (k[t]): one forward and one backward
    kernel; outputs bitwise the reference loop's and the torch path's, input and rho gradients to float
    tolerance."""
    counter = LaunchCounter(monkeypatch, triton_cf, ("_cf_forward_kernel", "_cf_backward_kernel"))
    for detach, surrogate in itertools.product([False, True], ["sigmoid", "triangle", "learnable"]):
        runs = []
        for path in ("kernels", "torch", "loop"):
            neuron = CFNeuron(mode=mode, D=3, theta=0.75, reset_detach=detach, output_scale="theta_S",
                              wrap_mode="modulo", surrogate=make_surrogate(surrogate, 4), fused=path != "loop",
                              num_steps=4).to(DEVICE)
            neuron.triton = path == "kernels"
            x = make_input(4, neuron.levels)
            upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
            counter.launches.clear()
            runs.append(grads_of(neuron, x, upstream))
            assert counter.launches == (["_cf_forward_kernel", "_cf_backward_kernel"] if path == "kernels" else [])
        (out, grads), *others = runs
        case = f"{mode} detach={detach} {surrogate}"
        assert out.abs().sum() > 0 and len(grads) == (2 if surrogate == "learnable" else 1), case
        for ref_out, ref_grads in others:
            assert torch.equal(out, ref_out), case
            for grad, ref_grad in zip(grads, ref_grads):
                torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5, msg=case)


@kernels_run_here
@pytest.mark.parametrize("options", [dict(name="mpd_agl"), dict(name="mpd_agl", width="lsg"), dict(name="tgo"),
                                     dict(name="mpd_agl", granularity="channel"),
                                     dict(name="a2sg", granularity="layer_time"),
                                     dict(name="a2sg", granularity="layer_channel_time")],
                         ids=lambda o: "-".join(o.values()))
def test_cf_kernels_take_per_step_widths_that_read_no_membrane(monkeypatch, options):
    """MPD-AGL's per-step widths (and TGO's, which stay k0 on a neuron without statistics), and A2SG's windows on
    a forward that takes no statistics, come from the step and the neuron alone (``reads_membrane`` False): the
    kernels run with one width per step in the backward's table, outputs bitwise and gradients equal to the
    reference loop's; widths per channel keep the torch code."""
    counter = LaunchCounter(monkeypatch, triton_cf, ("_cf_forward_kernel", "_cf_backward_kernel"))
    norm = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([-0.5, 0.9, 1.3]))  # guarded (made positive) and counted, once per call
    runs, guards = [], []
    for fused in (True, False):
        kwargs = dict(options)
        name = kwargs.pop("name")
        if name == "a2sg":
            kwargs["update_every"] = 2  # the first training forward takes no statistics
        neuron = CFNeuron(D=3, theta=0.75, surrogate=create_surrogate(name, **kwargs), fused=fused).to(DEVICE)
        neuron.set_input_norm(norm)
        x = make_input(4, neuron.levels)
        upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
        if name == "a2sg":
            with torch.no_grad():
                neuron(x)  # sizes the windows, then distinct ones per step (and channel)
            windows = neuron.surrogate.w_t
            windows.copy_(torch.linspace(0.3, 1.5, windows.numel()).view_as(windows))
            assert not neuron.surrogate.observes
        counter.launches.clear()
        runs.append(grads_of(neuron, x, upstream))
        guards.append(getattr(neuron.surrogate, "guard_count", None))
        kernels = fused and options.get("granularity") not in ("channel", "layer_channel_time")
        assert counter.launches == (["_cf_forward_kernel", "_cf_backward_kernel"] if kernels else [])
    (out, (grad,)), (ref_out, (ref_grad,)) = runs
    assert guards[0] == guards[1]  # MPD-AGL's count of guarded gammas: once per call, as the reference loop counts
    assert options.get("granularity") != "channel" or guards[0] > 0
    assert torch.equal(out, ref_out) and out.abs().sum() > 0
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


@kernels_run_here
def test_float64_input_keeps_the_torch_code(monkeypatch):
    """The kernels read fp32, bf16 and fp16: a float64 input takes the fused torch code where they would run (which
    computes in fp32, as before), LIF and circulate firing, eagerly and as the compiled operators' condition says;
    outputs and gradients those of the neuron with the kernels off."""
    from repro.models.fused import compiled_kernels_apply
    from repro.models.fused_cf import compiled_kernel_shape

    counter = LaunchCounter(monkeypatch, triton_lif, ("_forward_kernel", "_backward_kernel"))
    cf_counter = LaunchCounter(monkeypatch, triton_cf, ("_cf_forward_kernel", "_cf_backward_kernel"))
    x = make_input(3, torch.tensor([1.0, 2.0])).double()
    upstream = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    makers = (lambda: LIF(surrogate="atan", preset="reference", decay_learnable=True),
              lambda: CFNeuron(D=2, surrogate="sigmoid"))
    for make in makers:
        kernel, torch_code = make().to(DEVICE), make().to(DEVICE)
        torch_code.triton = False
        (out, grads), (ref_out, ref_grads) = grads_of(kernel, x, upstream), grads_of(torch_code, x, upstream)
        assert counter.launches == cf_counter.launches == [] and out.dtype == torch.float64
        assert torch.equal(out, ref_out) and all(map(torch.equal, grads, ref_grads)) and out.abs().sum() > 0
    assert not compiled_kernels_apply(makers[0](), x) and compiled_kernel_shape(makers[1](), x) is None
    assert compiled_kernels_apply(makers[0](), x.float()) and compiled_kernel_shape(makers[1](), x.float())


@kernels_run_here
def test_cf_backward_replays_in_chunks_and_reads_half_input():
    """T = 4 replayed in chunks of 3 (a full and a partial one) gives the one-chunk gradients (bitwise: the same
    operations); bf16 input
    gives the outputs of its fp32 upcast (small integers times theta, exact in bf16)."""
    levels = torch.tensor([1.0, 2.0, 3.0], device=DEVICE)
    x = make_input(4, levels)
    decay, upstream = torch.tensor(0.5, device=DEVICE), torch.randn(x.shape, device=DEVICE)
    surrogate = create_surrogate("atan")
    from repro.models.fused_cf import kernel_tables

    shape, params, switches = kernel_tables(surrogate, None, x)
    args = (x, upstream, decay, levels, "signed", 1.0, 1.0, False, shape, params)
    whole, _ = triton_cf.cf_backward(*args, switches=switches)
    chunked, _ = triton_cf.cf_backward(*args, switches=switches, chunk=3)
    assert torch.equal(whole, chunked) and whole.abs().sum() > 0
    half, _ = triton_cf.cf_forward(x.bfloat16(), decay, levels, "signed", 1.0, 0.75)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half.float(), triton_cf.cf_forward(x.bfloat16().float(), decay, levels, "signed", 1.0, 0.75)[0])


@kernels_run_here
@pytest.mark.parametrize("recorded", ["pre_fire", "post_reset"])
def test_cf_kernels_record_the_potentials_and_take_their_gradient(monkeypatch, recorded):
    """record_potentials (the balanced loss): the forward kernel records H[t] or U[t] bitwise as the reference
    loop does, and the backward kernel adds the gradient arriving there; a loss on outputs and potentials gives
    the reference loop's input and rho gradients."""
    counter = LaunchCounter(monkeypatch, triton_cf, ("_cf_forward_kernel", "_cf_backward_kernel"))
    for mode, surrogate in (("signed", "learnable"), ("wrap_signed", "sigmoid")):
        runs = []
        for fused in (True, False):
            neuron = CFNeuron(mode=mode, D=3, surrogate=make_surrogate(surrogate, 4), fused=fused,
                              num_steps=4).to(DEVICE)
            neuron.record_potentials, neuron.recorded_potential = True, recorded
            x = make_input(4, neuron.levels).requires_grad_()
            counter.launches.clear()
            out = neuron(x)
            potentials = torch.stack(neuron.potentials)
            weights = torch.linspace(-1, 1, out.numel(), device=DEVICE).view_as(out)
            loss = (out * weights).sum() + potentials.sin().sum()
            params = [x] + [p for p in neuron.parameters() if p.requires_grad]
            runs.append((out, potentials, torch.autograd.grad(loss, params)))
            assert counter.launches == (["_cf_forward_kernel", "_cf_backward_kernel"] if fused else [])
        (out, potentials, grads), (ref_out, ref_potentials, ref_grads) = runs
        case = f"{mode} {surrogate} {recorded}"
        assert torch.equal(out, ref_out) and torch.equal(potentials, ref_potentials), case
        for grad, ref_grad in zip(grads, ref_grads):
            torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5, msg=case)


@kernels_run_here
@pytest.mark.parametrize("surrogate", ["sigmoid", "learnable"])
def test_bf16_input_reaches_the_cf_kernels_in_its_own_dtype(surrogate):
    """``CFNeuron`` on bf16 input (autocast after a bf16 layer) runs the kernels on it as it is: the layer saves the
    bf16 input itself, its outputs are the fp32 kernels' on the upcast input, its input gradient theirs rounded
    once to bf16 (within one bf16 ulp in the interpreter), k's gradient theirs."""
    levels = torch.tensor([0.75, 1.5, 2.25])
    x = make_input(4, levels.to(DEVICE)).bfloat16()
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE).bfloat16()
    results = []
    for inputs in (x.clone().requires_grad_(), x.float().requires_grad_()):
        neuron = CFNeuron(D=3, theta=0.75, surrogate=make_surrogate(surrogate, 4), num_steps=4).to(DEVICE)
        out = neuron(inputs)
        saved = [t for t in out.grad_fn.saved_tensors if t is not None and t.numel() > 4]
        assert [t.data_ptr() for t in saved] == [inputs.data_ptr()] and out.dtype == inputs.dtype
        results.append((out, *torch.autograd.grad(out, [inputs, *neuron.surrogate.parameters()],
                                                  upstream.to(out.dtype))))
    (out, grad_x, *grad_k), (ref_out, ref_grad_x, *ref_grad_k) = results
    assert torch.equal(out.float(), ref_out) and out.abs().sum() > 0
    ulp = ref_grad_x.abs().clamp_min(2 ** -126) * 2 ** -7
    assert grad_x.dtype == torch.bfloat16 and ((grad_x.float() - ref_grad_x).abs() <= ulp).all()
    for grad, ref_grad in zip(grad_k, ref_grad_k):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


@kernels_run_here
def test_launch_configuration_reaches_the_kernels(monkeypatch):
    """``block``, ``chunk`` and ``num_warps`` of the four layer kernels (what benchmarks/kernel_tuning.py sweeps; the
    interpreter ignores the warps) are what the kernels are launched with."""
    launched = []

    def recording(name, kernel):
        class Recording:
            def __getitem__(self, grid):
                launch = kernel[grid]

                def run(*args, **kwargs):
                    launched.append((name, kwargs["BLOCK"], kwargs.get("CHUNK"), kwargs["num_warps"]))
                    return launch(*args, **kwargs)
                return run
        return Recording()
    for module, name in ((triton_lif, "_forward_kernel"), (triton_lif, "_backward_kernel"),
                         (triton_cf, "_cf_forward_kernel"), (triton_cf, "_cf_backward_kernel")):
        monkeypatch.setattr(module, name, recording(name, getattr(module, name)))
    levels = torch.tensor([1.0, 2.0], device=DEVICE)
    x, decay = make_input(3, levels), torch.tensor(0.5, device=DEVICE)
    surrogate = create_surrogate("atan")
    shape, params, switches = kernel_inputs(surrogate.shape, [surrogate.params] * 3, x[0].shape, x.device)
    triton_lif.lif_forward(x, decay, 1.0, "zero", True, False, False, block=256, num_warps=8)
    triton_lif.lif_backward(x, torch.ones_like(x), decay, 1.0, None, shape, params, "zero", True, False, False,
                            False, True, switches=switches, block=128, chunk=2, num_warps=2)
    triton_cf.cf_forward(x, decay, levels, "signed", 1.0, 1.0, block=512, num_warps=2)
    triton_cf.cf_backward(x, torch.ones_like(x), decay, levels, "signed", 1.0, 1.0, False, shape, params,
                          switches=switches, block=256, chunk=2, num_warps=8)
    assert launched == [("_forward_kernel", 256, None, 8), ("_backward_kernel", 128, 2, 2),
                        ("_cf_forward_kernel", 512, None, 2), ("_cf_backward_kernel", 256, 2, 8)]


@kernels_run_here
def test_cf_kernel_operators_pass_opcheck():
    """``repro::cf_outputs`` / ``repro::cf_grads`` (what torch.compile traces): schema, fake outputs, autograd
    registration and dispatch consistent (``torch.library.opcheck``), with a fixed surrogate and with k[T], with
    and without recorded potentials."""
    from repro.models.triton_lif import shape_name
    from repro.surrogates.learnable import SigmoidTLSG

    levels = torch.tensor([1.0, 2.0], device=DEVICE)
    x, decay = make_input(3, levels), torch.tensor(0.5, device=DEVICE)
    k = torch.tensor([3.0, 4.0, 5.0], device=DEVICE)
    for sharpness, params, shape in ((None, [4.0], shape_name(create_surrogate("sigmoid").shape)),
                                     (k, [], shape_name(SigmoidTLSG.proxy_derivatives))):
        for record in ("", "pre_fire"):
            switches = (params, shape, "signed", 1.0, 1.0, False, record)
            grad_k = None if sharpness is None else sharpness.clone().requires_grad_()
            torch.library.opcheck(torch.ops.repro.cf_outputs.default,
                                  (x.clone().requires_grad_(), grad_k, decay, levels, *switches))
            grad_potentials = torch.randn_like(x) if record else None
            torch.library.opcheck(torch.ops.repro.cf_grads.default,
                                  (x, torch.randn_like(x), grad_potentials, sharpness, decay, levels, *switches))


@kernels_run_here
@pytest.mark.parametrize("surrogate,recorded", [("sigmoid", None), ("learnable", "pre_fire"),
                                                ("learnable", "post_reset")])
def test_torch_compile_keeps_the_cf_kernels_without_graph_breaks(surrogate, recorded):
    """Under torch.compile (fullgraph: no graph break) the CF layer is the ``repro::cf_outputs`` operator in the
    graph, also recording its potentials (the balanced loss); outputs and potentials equal the reference loop's,
    input and rho gradients (a loss on both) to float tolerance."""
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    runs = []
    for fused in (True, False):
        neuron = CFNeuron(mode="signed", D=3, surrogate=make_surrogate(surrogate, 4), fused=fused, num_steps=4)
        neuron.record_potentials, neuron.recorded_potential = recorded is not None, recorded or "pre_fire"
        layer = torch.compile(neuron.to(DEVICE), backend=recording_backend, fullgraph=True) if fused else neuron
        x = make_input(4, neuron.levels).requires_grad_()
        out = layer(x)
        potentials = torch.stack(neuron.potentials) if recorded else out.new_zeros(())
        loss = (out * torch.linspace(-1, 1, out.numel(), device=DEVICE).view_as(out)).sum() + potentials.sin().sum()
        runs.append((out, potentials, torch.autograd.grad(loss, [x] + [p for p in neuron.parameters()
                                                                       if p.requires_grad])))
    (out, potentials, grads), (ref_out, ref_potentials, ref_grads) = runs
    assert any("repro.cf_outputs" in str(node.target) for graph in graphs for node in graph.graph.nodes)
    assert torch.equal(out, ref_out) and torch.equal(potentials, ref_potentials)
    assert len(grads) == (2 if surrogate == "learnable" else 1)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)
