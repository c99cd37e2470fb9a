"""Surrogates: Heaviside forward, closed-form backward, areas, stock snnTorch compatibility."""
import math

import pytest
import snntorch as snn
import torch
from snntorch import surrogate as snn_surrogate

from repro.surrogates import SURROGATES, create_surrogate

CLOSED_FORMS = {
    "rectangular": ({"width": 0.8}, lambda x: (x.abs() < 0.4).float() / 0.8, 1.0),
    "triangle": ({"width": 0.5}, lambda x: torch.clamp(1 - x.abs() / 0.5, min=0) / 0.5, 1.0),
    "sigmoid": ({"alpha": 4.0}, lambda x: 4 * torch.exp(-4 * x) / (1 + torch.exp(-4 * x)) ** 2, 1.0),
    "atan": ({"alpha": 2.0}, lambda x: 1.0 / (1 + (math.pi * x) ** 2), 1.0),
    "fast_sigmoid": ({"slope": 25.0}, lambda x: 1 / (1 + 25 * x.abs()) ** 2, 2 / 25),
}


def test_registry_lists_all_classic_surrogates():
    assert set(CLOSED_FORMS) <= set(SURROGATES.names())
    with pytest.raises(ValueError, match="choose one of: .*atan"):
        create_surrogate("no_such_surrogate")
    with pytest.raises(ValueError, match="valid options: \\['width'\\]"):
        create_surrogate("triangle", alpha=1.0)
    with pytest.raises(ValueError, match="width must be > 0"):
        create_surrogate("triangle", width=-1.0)


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_forward_is_step_and_backward_is_closed_form(name):
    kwargs, closed_form, _ = CLOSED_FORMS[name]
    sg = create_surrogate(name, **kwargs)
    x = torch.linspace(-2, 2, 401, dtype=torch.float64).float().requires_grad_()
    spikes = sg(x)
    assert torch.equal(spikes, (x > 0).float())  # strict by default, as snnTorch
    assert sg(torch.zeros(1)).item() == 0.0 and sg(torch.zeros(1), fire_ge=True).item() == 1.0
    upstream = torch.rand_like(x)
    spikes.backward(upstream)
    expected = upstream * closed_form(x.detach())
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sg.derivative(x.detach()), closed_form(x.detach()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_area_under_derivative(name):
    kwargs, _, area = CLOSED_FORMS[name]
    sg = create_surrogate(name, **kwargs)
    x = torch.linspace(-400, 400, 4_000_001, dtype=torch.float64)
    integral = torch.trapezoid(sg.derivative(x).double(), x).item()
    assert integral == pytest.approx(area, rel=2e-3)


def test_no_snntorch_sigmoid_nan():
    """snnTorch 1.0's sigmoid backward is NaN for x <~ -3.55 in fp32; ours is finite and ~0."""
    x = torch.tensor([-10.0, -100.0, -1e4, 0.0, 1e4], requires_grad=True)
    create_surrogate("sigmoid", alpha=25.0)(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert 0 <= x.grad[0] < 1e-30 and x.grad[3] == pytest.approx(25 / 4)
    stock = x.detach().clone().requires_grad_()
    snn_surrogate.sigmoid(slope=25)(stock).sum().backward()
    assert torch.isnan(stock.grad).any()  # documents the bug we avoid (docs/methods.md section "Classic surrogates")


def test_triangle_is_a_triangle_unlike_snntorch():
    x = torch.tensor([-0.5, -0.25, 0.25, 0.5], requires_grad=True)
    create_surrogate("triangle", width=1.0)(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.5, 0.75, 0.75, 0.5]))  # positive, symmetric
    stock = x.detach().clone().requires_grad_()
    snn_surrogate.triangular()(stock).sum().backward()
    assert (stock.grad[2:] < 0).all()  # snnTorch 1.0: wrong sign above threshold


@pytest.mark.parametrize("ours,theirs", [
    (lambda: create_surrogate("atan", alpha=2.0), lambda: snn_surrogate.atan(alpha=2.0)),
    (lambda: create_surrogate("fast_sigmoid", slope=25.0), lambda: snn_surrogate.fast_sigmoid(slope=25)),
    (lambda: create_surrogate("sigmoid", alpha=5.0), lambda: snn_surrogate.sigmoid(slope=5)),
])
def test_matches_snntorch_where_snntorch_is_right(ours, theirs):
    x = torch.linspace(-0.6, 0.6, 121, requires_grad=True)  # sigmoid range where snnTorch is finite
    y = x.detach().clone().requires_grad_()
    ours()(x).sum().backward()
    theirs()(y).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_works_as_spike_grad_of_stock_leaky(name):
    """Inside snn.Leaky the gradient w.r.t. the input at a single step is h(mem - thr)."""
    kwargs, closed_form, _ = CLOSED_FORMS[name]
    lif = snn.Leaky(beta=0.5, threshold=1.0, spike_grad=create_surrogate(name, **kwargs))
    current = torch.linspace(0.0, 2.0, 51, requires_grad=True)
    spk, mem = lif(current, torch.zeros(51))
    assert torch.equal(spk, (current > 1.0).float())
    spk.sum().backward()
    torch.testing.assert_close(current.grad, closed_form(current.detach() - 1.0), rtol=1e-5, atol=1e-6)


def test_backward_in_fp32_under_low_precision():
    x = torch.tensor([-20.0, 0.01, 20.0], dtype=torch.bfloat16, requires_grad=True)
    create_surrogate("sigmoid", alpha=4.0)(x).sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_double_backward_for_hessian_vector_products():
    sg = create_surrogate("triangle", width=1.0)
    w = torch.tensor([0.3, -0.2], requires_grad=True)
    loss = (sg(w * 2.0) * w).sum()
    (grad,) = torch.autograd.grad(loss, w, create_graph=True)
    (hvp,) = torch.autograd.grad(grad @ torch.ones(2), w)
    assert torch.isfinite(hvp).all()


@pytest.mark.parametrize("name,options", [("tgo", {}), ("tgo", {"tgo_stat": "thr"}), ("mpd_agl", {}),
                                          ("mpd_agl", {"granularity": "channel"}), ("mpd_agl", {"width": "lsg"}),
                                          ("a2sg", {}), ("a2sg", {"granularity": "layer_channel_time"})])
def test_surrogates_that_read_no_membrane_give_the_same_parameters_whatever_it_holds(name, options):
    """``reads_membrane`` False (what lets the fused paths skip forming u - theta_t) is true of TGO, MPD-AGL and
    A2SG: their parameters for a call are the same whatever values x and the context's ``mem`` hold (A2SG: the
    window of the step, times theta)."""
    from repro.models import TDBatchNorm, plif

    surrogate = create_surrogate(name, **options)
    assert not surrogate.reads_membrane and create_surrogate("atan").reads_membrane
    neuron = plif(decay=0.3, threshold=0.8, surrogate=surrogate)
    norm = TDBatchNorm(3, dims=1)
    with torch.no_grad():
        norm.weight.uniform_(0.3, 1.5)
    neuron.set_input_norm(norm)
    torch.manual_seed(0)
    context = dict(step=2, neuron=neuron, std=torch.tensor(0.7), threshold=torch.tensor(1.1))
    if name == "a2sg":  # sized by a first call, then distinct windows per step (and channel)
        surrogate.call_params(torch.zeros(2, 3, 4), **context)
        surrogate.w_t.copy_(torch.linspace(0.3, 1.5, surrogate.w_t.numel()).view_as(surrogate.w_t))
    params = [surrogate.call_params(x, mem=x + 1, **context) for x in (torch.randn(2, 3, 4), torch.zeros(2, 3, 4))]
    assert params[0].keys() == params[1].keys() == ({"w", "height", "clip"} if name == "a2sg" else {"width"})
    for key, value in params[0].items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(params[1][key])) if value is not None \
            else params[1][key] is None
    if name == "a2sg":
        assert torch.equal(params[0]["w"].flatten(), (surrogate.w_t[2] * 0.8).flatten())
    else:
        assert not torch.equal(torch.as_tensor(params[0]["width"]), torch.as_tensor(surrogate.params["width"]))


@pytest.mark.parametrize("name,options", [("tgo", {}), ("mpd_agl", {"granularity": "channel"}), ("a2sg", {}),
                                          ("a2sg", {"granularity": "layer_channel_time"})])
def test_step_params_equal_the_calls_step_by_step(name, options):
    """``Surrogate.step_params`` (every step's parameters from one call: the fused paths) is bitwise the per-step
    ``call_params`` (the reference loop) for the surrogates that read no membrane; A2SG's also sizes its windows."""
    from repro.models import TDBatchNorm, plif

    surrogate = create_surrogate(name, **options)
    neuron = plif(decay=0.3, threshold=0.8, surrogate=surrogate)
    norm = TDBatchNorm(3, dims=1)
    with torch.no_grad():
        norm.weight.uniform_(0.3, 1.5)
    neuron.set_input_norm(norm)
    x = torch.randn(4, 2, 3, 5)
    contexts = [dict(mem=x[t], step=t, neuron=neuron, std=torch.tensor(0.4 + 0.3 * t)) for t in range(4)]
    batched = surrogate.step_params(x, contexts)
    if name == "a2sg":  # sized for the 4 steps; then distinct windows per step (and channel)
        assert surrogate.w_t.shape[0] == 4
        surrogate.w_t.copy_(torch.linspace(0.3, 1.5, surrogate.w_t.numel()).view_as(surrogate.w_t))
        batched = surrogate.step_params(x, contexts)
    for t, params in enumerate(batched):
        expected = surrogate.call_params(x[t], **contexts[t])
        assert params.keys() == expected.keys()
        for key, value in params.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(expected[key])) if value is not None \
                else expected[key] is None
    assert len({float(torch.as_tensor(next(iter(params.values()))).flatten()[0]) for params in batched}) > 1


@pytest.mark.parametrize("shape,unit_dim,size", [((2, 3, 7), None, 5), ((2, 3, 7), 1, 4), ((4, 5, 3), -1, 6),
                                                 ((2, 3, 7), 1, None), ((3, 2), 0, 1)])
def test_row_sample_layout_names_the_elements_its_rows_take(shape, unit_dim, size):
    """``RowSample.layout`` (what the LIF kernels use to write A2SG's sampled rows) names exactly the elements that
    ``RowSample.rows`` (the torch paths' strided view) takes: element n of a step [outer, units, inner] goes to row
    (n // inner) % units, entry j // every, where j = n // (inner units) inner + n % inner and j % every == 0."""
    from repro.surrogates.base import RowSample

    sample = RowSample(unit_dim, size)
    values = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    units, inner, every, length = sample.layout(torch.Size(shape))
    written = torch.full((units, length), -1.0)
    for n in range(values.numel()):
        position = n // (inner * units) * inner + n % inner
        if position % every == 0:
            written[(n // inner) % units, position // every] = n
    assert torch.equal(sample.rows(values), written) and (size is None or length <= size)
