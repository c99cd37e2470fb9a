"""DS-ATGO: the adaptive-threshold neuron and the TGO surrogate against closed forms, an independent
plain-PyTorch loop of the paper's Eqs. 5-7 (docs/methods.md section "DS-ATGO"), the normal CDF (Fig. 5 /
Theorem 1) and stock snnTorch."""
import dataclasses
import math

import pytest
import snntorch as snn
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from repro.checkpoint import load_checkpoint
from repro.config import Config
from repro.engine import train
from repro.models import AdaptiveThresholdLIF, create_model, create_neuron, freeze_running_thresholds
from repro.surrogates import create_surrogate
from reference import normal_cdf, RectSpike



def tgo_width_piecewise(s: float, k0: float = 1.0, V0: float = 1.0) -> float:
    """Eq. 7 as written, branch by branch."""
    return k0 * (1 - math.tanh(V0 - s)) if s < V0 else k0 * (1 + math.tanh(s - V0))



def ds_atgo_loop(inputs, w, at, tgo, tgo_stat="std", V0=1.0, k0=1.0, f_c=1.0, k_min=0.05):
    """DS-ATGO's neuron in training mode (Eqs. 5-6), one scalar statistic per layer and step."""
    tau = torch.sigmoid(w)
    u_post = torch.zeros_like(inputs[0])
    spikes, thresholds, widths = [], [], []
    for t in range(inputs.shape[0]):
        u = tau * u_post + inputs[t]
        mu, sd = u.detach().mean().item(), u.detach().std().item()
        thr = f_c * (mu + sd) if at else V0
        s = sd if tgo_stat == "std" else thr
        k = tgo_width_piecewise(s, k0, V0) if tgo else k0
        if tgo and tgo_stat == "thr":
            k = max(k, k_min * k0)
        spike = RectSpike.apply(u - thr, k)
        u_post = u * (1 - spike)
        spikes.append(spike)
        thresholds.append(thr)
        widths.append(k)
    return torch.stack(spikes), thresholds, widths


def test_tgo_width_closed_form_and_fallbacks():
    sg = create_surrogate("tgo")
    x = torch.zeros(3)
    for s in (0.0, 0.3, 0.999, 1.0, 1.7, 5.0):
        width = sg.call_params(x, std=torch.tensor(s))["width"]
        assert width.item() == pytest.approx(tgo_width_piecewise(s), rel=1e-6)
    assert sg.call_params(x, std=torch.tensor(1.0))["width"].item() == 1.0  # continuous at V0, k = k0
    assert sg.call_params(x, std=torch.tensor(0.0))["width"].item() == pytest.approx(1 - math.tanh(1.0))
    assert sg.call_params(x)["width"] == 1.0  # no context (stock snnTorch): k0
    assert create_surrogate("tgo", tgo=False).call_params(x, std=torch.tensor(3.0))["width"] == 1.0
    scaled = create_surrogate("tgo", k0=0.5, V0=2.0)
    assert scaled.call_params(x, std=torch.tensor(1.2))["width"].item() == pytest.approx(tgo_width_piecewise(1.2, 0.5, 2.0))
    paper = create_surrogate("tgo", tgo_stat="thr")
    assert paper.call_params(x, std=torch.tensor(9.0), threshold=torch.tensor(1.4))["width"].item() == \
        pytest.approx(tgo_width_piecewise(1.4))
    assert paper.call_params(x, threshold=torch.tensor(-6.0))["width"].item() == pytest.approx(0.05)  # k_min * k0
    for bad in ({"tgo_stat": "mean"}, {"k_min": 0.0}, {"k0": -1.0}):
        with pytest.raises(ValueError):
            create_surrogate("tgo", **bad)


@pytest.mark.parametrize("std", [0.3, 2.0])
def test_tgo_derivative_values_and_area_one(std):
    sg = create_surrogate("tgo")
    k = tgo_width_piecewise(std)
    x = torch.linspace(-3, 3, 3_000_001, dtype=torch.float64)
    h = sg.derivative(x, std=torch.tensor(std)).double()
    torch.testing.assert_close(h, (x.abs() < k / 2).double() / k, rtol=1e-6, atol=1e-6)
    assert torch.trapezoid(h, x).item() == pytest.approx(1.0, abs=1e-4)
    probe = torch.tensor([-0.01, 0.0, 0.01], requires_grad=True)
    spikes = sg(probe, fire_ge=True, std=torch.tensor(std))
    assert spikes.tolist() == [0.0, 1.0, 1.0]
    spikes.backward(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(probe.grad, torch.tensor([1.0, 2.0, 3.0]) / k)


ARMS = {  # the four ablation arms of docs/methods.md section "DS-ATGO": neuron and surrogate options
    "vanilla": ({"at": False}, {"tgo": False}),
    "at": ({"at": True}, {"tgo": False}),
    "tgo": ({"at": False}, {"tgo": True}),
    "at_tgo": ({"at": True}, {"tgo": True}),
    "at_tgo_thr": ({"at": True}, {"tgo": True, "tgo_stat": "thr"}),
}


@pytest.mark.parametrize("arm", ARMS)
def test_neuron_equals_reference_loop_including_gradients(arm):
    neuron_options, surrogate_options = ARMS[arm]
    torch.manual_seed(3)
    inputs = (torch.randn(4, 8, 3, 5, 5) * 0.9 + 0.3).requires_grad_()
    neuron = create_neuron("adaptive_threshold", surrogate="tgo", surrogate_kwargs=surrogate_options, num_steps=4,
                           **neuron_options)
    assert neuron.fire_ge and not neuron.reset_detach and neuron.decay.item() == pytest.approx(0.2)
    out = neuron(inputs)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    grad_in, grad_w = inputs.grad.clone(), neuron.decay_raw.grad.clone()

    inputs.grad = None
    w = torch.tensor(-math.log(4.0), requires_grad=True)
    ref_spikes, ref_thresholds, ref_widths = ds_atgo_loop(inputs, w, neuron_options["at"], surrogate_options["tgo"],
                                                          surrogate_options.get("tgo_stat", "std"))
    (ref_spikes * upstream).sum().backward()
    assert torch.equal(out, ref_spikes) and 0 < out.mean() < 1
    torch.testing.assert_close(torch.stack(neuron.thresholds), torch.tensor(ref_thresholds))
    torch.testing.assert_close(grad_in, inputs.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_w, w.grad, rtol=1e-5, atol=1e-6)
    assert grad_w.abs() > 0  # the decay learns through the forward path (and the attached reset)
    # thresholds and widths are detached constants
    assert not any(t.requires_grad for t in neuron.thresholds)
    u = inputs[0].detach().requires_grad_()
    mean, std = neuron.membrane_statistics(u)
    assert not mean.requires_grad and not std.requires_grad
    width = neuron.surrogate.call_params(u - mean, std=std, threshold=mean + std)["width"]
    if surrogate_options["tgo"]:
        assert not width.requires_grad
    expected_running = [0.9 * 1.0 + 0.1 * t for t in ref_thresholds] if neuron_options["at"] else [1.0] * 4
    torch.testing.assert_close(neuron.running_thr, torch.tensor(expected_running))


def test_running_threshold_update_eval_and_freeze():
    torch.manual_seed(4)
    first, second = torch.randn(2, 16, 6, 4, 4) * 1.5 + 0.2, torch.randn(2, 16, 6, 4, 4) * 0.7
    neuron = AdaptiveThresholdLIF(num_steps=2, surrogate="tgo")
    assert torch.equal(neuron.running_thr, torch.ones(2))
    neuron(first)
    theta1 = torch.stack(neuron.thresholds)
    neuron(second)
    theta2 = torch.stack(neuron.thresholds)
    running = 0.9 * (0.9 * 1.0 + 0.1 * theta1) + 0.1 * theta2
    torch.testing.assert_close(neuron.running_thr, running)

    with neuron.freeze_running():  # train-mode diagnostics leave it alone
        neuron(first)
    with freeze_running_thresholds(torch.nn.Sequential(neuron)):
        neuron(second)
    torch.testing.assert_close(neuron.running_thr, running)

    probe = torch.randn(2, 5, 6, 4, 4)
    neuron.eval()
    out = neuron(probe)
    u0 = probe[0]
    u1 = neuron.decay.detach() * u0 * (u0 < running[0]) + probe[1]
    assert torch.equal(out, torch.stack([(u0 >= running[0]).float(), (u1 >= running[1]).float()]))
    torch.testing.assert_close(neuron.running_thr, running)  # eval never updates

    neuron.eval_threshold = "batch"
    neuron(probe)
    assert neuron.thresholds[0].item() == pytest.approx((u0.mean() + u0.std()).item(), rel=1e-5)
    torch.testing.assert_close(neuron.running_thr, running)

    with pytest.raises(ValueError, match="T=2 timesteps but got input with T=3"):
        neuron(torch.randn(3, 2, 6, 4, 4))  # eval T must equal train T
    vanilla = AdaptiveThresholdLIF(num_steps=2, at=False).eval()
    vanilla(probe)
    assert [t.item() for t in vanilla.thresholds] == [1.0, 1.0]


@pytest.mark.parametrize("stat_scope", ["layer", "channel"])
def test_running_thr_state_dict_round_trip(stat_scope):
    torch.manual_seed(5)
    trained = AdaptiveThresholdLIF(num_steps=3, stat_scope=stat_scope)
    trained(torch.randn(3, 8, 4, 5, 5) * 2)
    state = trained.state_dict()
    assert state["running_thr"].shape == ((3,) if stat_scope == "layer" else (3, 4))
    fresh = AdaptiveThresholdLIF(num_steps=3, stat_scope=stat_scope)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.running_thr, trained.running_thr) and not torch.equal(fresh.running_thr, torch.ones_like(fresh.running_thr))
    probe = torch.randn(3, 2, 4, 5, 5)
    assert torch.equal(fresh.eval()(probe), trained.eval()(probe))
    assert fresh.to(torch.float64).running_thr.dtype == torch.float64  # a buffer: follows .to()
    model = create_model("resnet19", width=0.125, num_steps=2, neuron="adaptive_threshold", surrogate="tgo")
    assert sum(k.endswith("running_thr") for k in model.state_dict()) == 20


def test_estimated_variant_thr_min_and_channel_scope():
    torch.manual_seed(6)
    x = torch.randn(2, 8, 3, 4, 4) - 3.0
    estimated = AdaptiveThresholdLIF(num_steps=2, at_variant="estimated", f_c=1.2, decay=0.4)
    estimated(x)
    assert [t.item() for t in estimated.thresholds] == pytest.approx([1.2 * math.sqrt(1 + 0.16)] * 2, rel=1e-5)
    clipped = AdaptiveThresholdLIF(num_steps=2, thr_min=0.25)
    clipped(x)  # mu + sigma is about -2: clipped to the floor
    assert [t.item() for t in clipped.thresholds] == [0.25, 0.25]
    channel = AdaptiveThresholdLIF(num_steps=2, stat_scope="channel", decay=0.5)
    channel(x)
    u0 = x[0]
    expected = u0.mean((0, 2, 3)) + u0.std((0, 2, 3))
    assert channel.thresholds[0].shape == (1, 3, 1, 1)
    torch.testing.assert_close(channel.thresholds[0].flatten(), expected)
    torch.testing.assert_close(channel.running_thr[0], 0.9 + 0.1 * expected)
    for bad in ({"at_variant": "x"}, {"stat_scope": "pixel"}, {"eval_threshold": "x"}, {"momentum": 0.0},
                {"f_c": 0.0}, {"num_steps": None}):
        with pytest.raises(ValueError):
            AdaptiveThresholdLIF(**{"num_steps": 2, **bad})
    with pytest.raises(ValueError, match="valid options: .*stat_scope"):
        create_neuron("adaptive_threshold", num_steps=2, scope="layer")


@pytest.mark.parametrize("sigma", [0.3, 1.0, 3.0])
def test_fig5_in_window_fraction_matches_normal_cdf(sigma):
    """U ~ N(0, sigma^2) (T = 1: U = I), AT on so theta = sigma: the fraction of neurons with gradient is
    Phi((theta + k/2)/sigma) - Phi((theta - k/2)/sigma), for fixed k = 1 and for TGO's k(sigma); the
    firing fraction is 1 - Phi(1) = 15.87% whatever sigma (Theorem 1)."""
    torch.manual_seed(7)
    inputs = torch.randn(1, 200_000) * sigma
    fractions = {}
    for tgo in (False, True):
        neuron = AdaptiveThresholdLIF(num_steps=1, surrogate=create_surrogate("tgo", tgo=tgo))
        x = inputs.clone().requires_grad_()
        spikes = neuron(x)
        spikes.sum().backward()
        k = tgo_width_piecewise(sigma) if tgo else 1.0
        analytic = normal_cdf(1 + k / (2 * sigma)) - normal_cdf(1 - k / (2 * sigma))
        fractions[tgo] = (x.grad > 0).float().mean().item()
        assert fractions[tgo] == pytest.approx(analytic, abs=0.006)
        assert spikes.mean().item() == pytest.approx(1 - normal_cdf(1.0), abs=0.004)
    # TGO narrows the window for a concentrated MPD (sigma < V0) and widens it for a dispersed one
    if sigma < 1.0:
        assert fractions[True] < fractions[False] - 0.1
    elif sigma > 1.0:
        assert fractions[True] > fractions[False] + 0.05
    else:
        assert fractions[True] == pytest.approx(fractions[False], abs=0.005)


def test_tgo_inside_stock_snntorch_leaky_uses_k0():
    torch.manual_seed(8)
    inputs = (torch.randn(5, 3, 20) * 0.8 + 0.5).requires_grad_()
    results = []
    for spike_grad in (create_surrogate("tgo", k0=0.8), create_surrogate("tgo", k0=0.8, tgo_stat="thr")):
        inputs.grad = None
        leaky = snn.Leaky(beta=0.5, spike_grad=spike_grad)
        mem, spikes, mems = torch.zeros_like(inputs[0]), [], []
        for t in range(5):
            spk, mem = leaky(inputs[t], mem)
            spikes.append(spk)
            mems.append(mem)
        torch.stack(spikes).sum().backward()
        results.append(inputs.grad.clone())
        assert torch.equal(torch.stack(spikes), (torch.stack(mems) > 1.0).float())
    # closed form: one step, dS/dI = (1/k0) 1[|mem - 1| < k0/2]
    x = torch.tensor([0.5, 0.65, 1.0, 1.39, 1.41], requires_grad=True)
    snn.Leaky(beta=0.5, spike_grad=create_surrogate("tgo", k0=0.8))(x, torch.zeros(5))[0].sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 1.25, 1.25, 1.25, 0.0]))
    torch.testing.assert_close(results[0], results[1])
    assert results[0].abs().sum() > 0


def _sync_worker(rank: int, world_size: int, store: str, out_dir: str, inputs) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    shard = inputs.shape[1] // world_size
    results = {}
    for stat_scope in ("layer", "channel"):
        neuron = AdaptiveThresholdLIF(num_steps=inputs.shape[0], stat_scope=stat_scope, sync_stats=True)
        spikes = neuron(inputs[:, rank * shard:(rank + 1) * shard])
        results[stat_scope] = {"thresholds": torch.stack(neuron.thresholds), "running_thr": neuron.running_thr,
                               "spikes": spikes}
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.barrier()  # no rank tears gloo down while the other is still in a collective (SIGABRT)
    dist.destroy_process_group()


def test_sync_stats_all_reduce_matches_global_batch(tmp_path):
    """Two gloo processes with half a batch each and sync_stats=True see the statistics of the whole batch."""
    torch.manual_seed(9)
    inputs = torch.randn(2, 12, 3, 4, 4) * 1.3 + 0.4
    mp.spawn(_sync_worker, args=(2, str(tmp_path / "store"), str(tmp_path), inputs), nprocs=2)
    shards = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for stat_scope in ("layer", "channel"):
        reference = AdaptiveThresholdLIF(num_steps=2, stat_scope=stat_scope)
        ref_spikes = reference(inputs)
        for shard in shards:
            torch.testing.assert_close(shard[stat_scope]["thresholds"], torch.stack(reference.thresholds),
                                       rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(shard[stat_scope]["running_thr"], reference.running_thr, rtol=1e-5, atol=1e-6)
        assert torch.equal(torch.cat([s[stat_scope]["spikes"] for s in shards], dim=1), ref_spikes)
    unsynced = AdaptiveThresholdLIF(num_steps=2)
    unsynced(inputs[:, :6])
    assert not torch.allclose(torch.stack(unsynced.thresholds), shards[0]["layer"]["thresholds"])


TINY = Config(model="resnet19", model_options={"width": 0.25}, num_steps=2, dataset="digits",
              dataset_options={"augment": False, "size": 16}, batch_size=16, eval_batch_size=120, epochs=3,
              limit_train_batches=40, lr=0.05, weight_decay=1e-4, seed=7, neuron="adaptive_threshold",
              surrogate="tgo", loss="ls_ce")


@pytest.mark.slow
def test_engine_trains_ds_atgo_on_digits(tmp_path):
    summary = train(dataclasses.replace(TINY, output_dir=str(tmp_path)))
    print(f"DS-ATGO (AT+TGO) on digits, 3 x 40 steps: best {summary['best_test_accuracy']:.2f}%, "
          f"final {summary['test_accuracy']:.2f}%, firing rate {summary['firing_rate']:.4f}")
    assert summary["best_test_accuracy"] > 50.0  # chance is 10%
    weights = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    running = [v for k, v in weights.items() if k.endswith("running_thr")]
    assert len(running) == 20 and all(v.shape == (2,) for v in running)
    assert not all(torch.equal(v, torch.ones(2)) for v in running)  # updated in training and checkpointed


@pytest.mark.parametrize("options", [{}, {"tgo_stat": "thr"}, {"tgo": False}], ids=["std", "thr", "no_tgo"])
@pytest.mark.parametrize("shape", [(), (1, 3, 1, 1)], ids=["layer", "channel"])
def test_tgo_step_params_equal_the_calls_step_by_step(options, shape):
    """TGO's widths of all steps at once (the fused path, after the forward) equal the per-step calls' (the reference
    loop), with the statistics per layer or per channel; without the neuron's statistics, the fixed width k0."""
    surrogate = create_surrogate("tgo", **options)
    x = torch.randn(4, 2, 3, 5, 5)
    contexts = [dict(mem=x[t], step=t, std=torch.rand(shape) * 2, threshold=torch.rand(shape) * 0.05 + 1.2 * t - 2)
                for t in range(4)]
    for step_contexts in (contexts, [dict(mem=x[t], step=t) for t in range(4)]):
        batched = surrogate.step_params(x, step_contexts)
        for t, params in enumerate(batched):
            expected = surrogate.call_params(x[t], **step_contexts[t])
            assert params.keys() == expected.keys() == {"width"}
            assert torch.equal(torch.as_tensor(params["width"]), torch.as_tensor(expected["width"])), t
    widths = torch.stack([torch.as_tensor(p["width"]) for p in surrogate.step_params(x, contexts)])
    assert widths.shape == ((4,) if options.get("tgo") is False else (4, *shape))
    if options.get("tgo_stat") == "thr":
        assert widths.min() == pytest.approx(0.05) and widths.max() > 1  # floored at k_min k0 for a low theta_t
