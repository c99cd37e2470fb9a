"""A2SG's paper mode: the ramp / TRI / BOX shapes in closed form, the paper's SGV and TGC on hand-made
gradients, and the grid window search against a brute-force search that reruns the backward for every
candidate window (same objective values, same picks), on both neuron paths and across two processes."""
import copy

import pytest
import torch
import torch.nn.functional as F

from kernel_launches import OperationCounter
from reference import paper_sgv, paper_tgc, run_in_gloo_processes
from repro.models import call_model_built_hooks, create_neuron
from repro.surrogates import A2SG, create_surrogate
from repro.surrogates.a2sg_shapes import box, ramp, triangle
from repro.surrogates.a2sg_search import WindowChoice, _sgv_sums, _tgc_sums, sgv_from_sums, tgc_from_sums


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("w", [0.3, 1.0, 1.7])
def test_ramp_edges_threshold_area_and_clipping(w):
    edges = torch.tensor([-w, 0.0, w], dtype=torch.float64)
    h = 0.8  # a fixed height: h - 1/2 at the lower edge, h at theta, h + 1/2 at the upper edge
    torch.testing.assert_close(ramp(edges, w, height=h, clip=False), torch.tensor([h - 0.5, h, h + 0.5],
                                                                                  dtype=torch.float64))
    outside = torch.tensor([-w - 1e-9, w + 1e-9, -5.0, 5.0], dtype=torch.float64)
    assert (ramp(outside, w) == 0).all() and (ramp(outside, w, height=h) == 0).all()
    x = torch.linspace(-3, 3, 600_001, dtype=torch.float64)
    assert torch.trapezoid(ramp(x, w, height=h, clip=False), x).item() == pytest.approx(2 * w * h, abs=1e-4)
    # default h = 1/(2w): area 1; clipping adds (w - 1)^2/(4w) back for w > 1 (negative on [-w, -1])
    assert torch.trapezoid(ramp(x, w, clip=False), x).item() == pytest.approx(1.0, abs=1e-4)
    clipped = max(w - 1, 0) ** 2 / (4 * w)
    assert torch.trapezoid(ramp(x, w), x).item() == pytest.approx(1.0 + clipped, abs=1e-4)
    default = 1 / (2 * w)
    torch.testing.assert_close(ramp(edges, w), torch.tensor([max(default - 0.5, 0), default, default + 0.5],
                                                            dtype=torch.float64))
    low = 0.2  # h < 1/2: negative on [-w, -2 w h): clipped to 0 by default, kept with clip=False
    below = torch.tensor([-w, -0.7 * w], dtype=torch.float64)
    assert (ramp(below, w, height=low) == 0).all()
    torch.testing.assert_close(ramp(below, w, height=low, clip=False), below / (2 * w) + low)
    assert (ramp(x, w, height=low) >= 0).all()
    d = torch.linspace(1e-3, w, 100, dtype=torch.float64)
    assert (ramp(d, w) > ramp(-d, w)).all()  # more gradient above threshold


def test_triangle_and_box_are_area_one_with_half_width_w():
    x = torch.linspace(-3, 3, 600_001, dtype=torch.float64)
    for w in (0.4, 1.3):
        assert torch.trapezoid(triangle(x, w), x).item() == pytest.approx(1.0, abs=1e-4)
        assert torch.trapezoid(box(x, w), x).item() == pytest.approx(1.0, abs=1e-4)
        points = torch.tensor([0.0, w / 2, w, w + 1e-9, -w, -w - 1e-9], dtype=torch.float64)
        torch.testing.assert_close(triangle(points, w), torch.tensor([1 / w, 0.5 / w, 0, 0, 0, 0], dtype=torch.float64))
        torch.testing.assert_close(box(points, w), torch.tensor([1, 1, 1, 0, 1, 0], dtype=torch.float64) / (2 * w))


def test_paper_defaults_and_bad_options():
    sg = create_surrogate("a2sg")
    assert (sg.shape_name, sg.adapt, sg.statistics, sg.search, sg.update_every) == ("ramp", "search", "paper", "grid", 1)
    assert len(sg.candidates) == 12 and sg.candidates[0] == pytest.approx(0.2) and sg.candidates[-1] == pytest.approx(2.0)
    assert sg.shape_params(0.5) == {"w": 0.5, "height": None, "clip": True}
    for kwargs, message in [({"asym": 0.5}, "asym applies to the shapes"), ({"shape": "box", "height": 0.5}, "ramp"),
                            ({"search": "bayes"}, "not provided"), ({"adapt": "sgv_tgc", "statistics": "paper"}, "statistics='reconstructed'"),
                            ({"statistics": "reconstructed"}, "statistics='paper'"), ({"grid_size": 1}, "grid_size")]:
        with pytest.raises(ValueError, match=message):
            create_surrogate("a2sg", **kwargs)


# ----------------------------------------------------------------------------- statistics
def test_sgv_and_tgc_definitions_on_hand_made_gradients():
    delta = torch.tensor([[1.0, -1.0, 3.0, 1.0]])  # mean 1, Var = (0 + 4 + 4 + 0)/4 = 2, Mean|d| = 6/4
    assert paper_sgv(delta).item() == pytest.approx(2 / 1.5)
    assert paper_tgc(torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([[1.0, 1.0, 0.0]])).item() == pytest.approx(0.5)
    assert paper_tgc(torch.tensor([[1.0, 2.0]]), torch.tensor([[-2.0, -4.0]])).item() == pytest.approx(-1.0)
    g = torch.Generator().manual_seed(0)
    d, e = torch.randn(3, 1000, generator=g), torch.randn(3, 1000, generator=g)
    torch.testing.assert_close(sgv_from_sums(_sgv_sums(d)).float(), paper_sgv(d))  # the sums the search reduces
    assert paper_sgv(delta, form="std").item() == pytest.approx(2 ** 0.5 / 1.5)
    torch.testing.assert_close(sgv_from_sums(_sgv_sums(d), form="std").float(), paper_sgv(d, form="std"))
    torch.testing.assert_close(paper_sgv(7 * d, form="std"), paper_sgv(d, form="std"))  # scale-free
    torch.testing.assert_close(paper_sgv(7 * d), 7 * paper_sgv(d))  # the paper's: not scale-free
    torch.testing.assert_close(tgc_from_sums(_tgc_sums(d, e)).float(), paper_tgc(d, e))
    zero = torch.zeros(1, 5)  # a vanishing gradient is never picked
    assert sgv_from_sums(_sgv_sums(zero)).item() == float("inf")
    assert tgc_from_sums(_tgc_sums(zero, e[:1, :5])).item() == float("-inf")


# ----------------------------------------------------------------------------- search vs brute force
T, B, N = 4, 24, 40


def tiny_layer(shape: str, preset: str, reset: str, fused: bool, adapt: str = "search", seed: int = 0):
    torch.manual_seed(seed)
    first, last = torch.nn.Linear(N, N), torch.nn.Linear(N, 5)
    torch.nn.init.normal_(first.weight, std=0.6)
    neuron = create_neuron("lif", preset=preset, reset=reset, fused=fused, surrogate="a2sg",
                           surrogate_kwargs=dict(shape=shape, adapt=adapt, w_min=0.05, w_max=3.0, grid_size=7))
    return first, neuron, last


def batch(seed: int, size: int = B):
    g = torch.Generator().manual_seed(100 + seed)
    return torch.randn(T, size, N, generator=g) * 1.5, torch.randint(0, 5, (size,), generator=g)


def loss_of(layers, x, y, reduction="mean"):
    first, neuron, last = layers
    return F.cross_entropy(last(neuron(first(x))).mean(0), y, reduction=reduction)


def brute_force(shape, preset, reset, x, y, windows, candidates):
    """SGV of step T and TGC[t] of each t < T for every candidate window of that step (LIF)."""
    sgv, tgc = brute_force_search(lambda: tiny_layer(shape, preset, reset, fused=False, adapt="none"), x, y,
                                  torch.tensor(windows), candidates)
    return sgv.squeeze(-1), tgc.squeeze(-1)


def brute_force_search(build, x, y, windows, candidates, rows=lambda delta: delta.reshape(1, -1)):
    """SGV[K, U] of step T and TGC[T - 1, K, U] of each t < T for every candidate window of that step, each from
    its own forward and backward of the layers ``build()`` gives with the windows ``windows`` [T, ...] but that
    step's (reference loop, controller frozen, membrane gradients read with retain_grad, as [U, N] ``rows``)."""
    sgv, tgc = [], [[] for _ in range(T - 1)]
    for step in range(T):
        for w in candidates:
            layers = build()
            sg = layers[1].surrogate
            with torch.no_grad():
                loss_of(layers, x, y)  # sizes the lazily sized buffers (the channels)
            sg.w_t = windows.clone()
            sg.w_t[step] = w
            layers[1].record_potentials = True
            with sg.freeze_controller():
                loss = loss_of(layers, x, y)
                for u in layers[1].potentials:
                    u.retain_grad()
                loss.backward()
            deltas = [rows(u.grad) for u in layers[1].potentials]
            if step == T - 1:
                sgv.append(paper_sgv(deltas[-1]))
            else:
                tgc[step].append(paper_tgc(deltas[step], deltas[step + 1]))
    return torch.stack(sgv).double(), torch.stack([torch.stack(row) for row in tgc]).double()


@pytest.mark.parametrize("shape,preset,reset,fused", [
    ("ramp", "snntorch", "zero", True), ("ramp", "reference", "zero", False),
    ("triangle", "reference", "subtract", True), ("box", "snntorch", "zero", True)])
def test_grid_search_matches_brute_force_backward_per_candidate(shape, preset, reset, fused):
    layers = tiny_layer(shape, preset, reset, fused)
    sg = layers[1].surrogate
    x, y = batch(0)
    loss_of(layers, x, y).backward()
    statistics = sg._observation.reduced_statistics()
    sg.after_optimizer_step(0)
    sgv, tgc = (s.squeeze(-1) for s in statistics)  # [K + 1], [T - 1, K + 1]; the last column: in force
    expected_sgv, expected_tgc = brute_force(shape, preset, reset, x, y, [0.5] * T, sg.candidates)
    torch.testing.assert_close(sgv[:-1], expected_sgv, rtol=1e-4, atol=0)
    torch.testing.assert_close(tgc[:, :-1], expected_tgc, rtol=0, atol=1e-5)
    grid = torch.tensor(sg.candidates)
    picks = torch.cat([grid[expected_tgc.argmax(1)], grid[expected_sgv.argmin()][None]]).float()
    torch.testing.assert_close(sg.w_t, picks)  # the same window for every step as the brute-force search
    inside = (picks > grid.min()) & (picks < grid.max())
    print(f"\n{shape}/{preset}/{reset}: windows {[round(v, 3) for v in sg.w_t.tolist()]} (interior: {inside.tolist()})")
    assert sg.sgv_ema.item() == pytest.approx(sgv[-1].item()) and sg.tgc_t.shape == (T - 1,)


CHANNELS, FEATURES = 3, 8  # circulate firing: membrane [B, CHANNELS, FEATURES]


def cf_layers(mode, fused, granularity="layer_time", adapt="search", sample=None, seed=0):
    torch.manual_seed(seed)
    first = torch.nn.Linear(FEATURES, FEATURES)
    last = torch.nn.Sequential(torch.nn.Flatten(2), torch.nn.Linear(CHANNELS * FEATURES, 5))
    torch.nn.init.normal_(first.weight, std=0.8)
    neuron = create_neuron("circulate_firing", mode=mode, D=2, num_steps=T, fused=fused, surrogate="a2sg",
                           surrogate_kwargs=dict(adapt=adapt, granularity=granularity, search_sample=sample,
                                                 w_min=0.05, w_max=3.0, grid_size=7))
    return first, neuron, last


def cf_batch(seed: int = 0):
    g = torch.Generator().manual_seed(200 + seed)
    return torch.randn(T, B, CHANNELS, FEATURES, generator=g) * 1.5, torch.randint(0, 5, (B,), generator=g)


@pytest.mark.parametrize("mode,fused,granularity,sample", [
    ("signed", True, "layer_time", None), ("signed", False, "layer_channel_time", None),
    ("unsigned", False, "layer_time", None), ("wrap_binary", True, "layer_time", 100),
    ("wrap_signed", False, "layer_channel_time", 50)])
def test_grid_search_matches_brute_force_on_circulate_firing(mode, fused, granularity, sample):
    """Circulate firing calls the surrogate once per crossing direction (one call unsigned, two otherwise),
    each on one row per level: dL/du[t] sums them (down-crossings x = -u - l with the sign -1).  Sampled rows
    (``sample``) are the same membrane elements for every level; per channel along the membrane's channel dim."""
    layers = cf_layers(mode, fused, granularity, sample=sample)
    sg = layers[1].surrogate
    x, y = cf_batch()
    loss_of(layers, x, y).backward()
    sgv, tgc = sg._observation.reduced_statistics()  # [K + 1, U], [T - 1, K + 1, U]; the last column: in force
    windows = sg.w_t.clone()
    sg.after_optimizer_step(0)
    per_channel = granularity.startswith("layer_channel")
    rows = (lambda d: d.movedim(1, 0).flatten(1)) if per_channel else (lambda d: d.reshape(1, -1))
    stride = 1 if sample is None else -(-rows(x[0]).shape[-1] // sample)
    expected_sgv, expected_tgc = brute_force_search(
        lambda: cf_layers(mode, False, granularity, adapt="none"), x, y, windows, sg.candidates,
        rows=lambda d: rows(d)[:, ::stride])
    assert sgv.shape == (len(sg.candidates) + 1, CHANNELS if per_channel else 1)
    torch.testing.assert_close(sgv[:-1], expected_sgv, rtol=1e-4, atol=0)
    torch.testing.assert_close(tgc[:, :-1], expected_tgc, rtol=0, atol=1e-5)
    grid = torch.tensor(sg.candidates)
    picks = torch.cat([grid[expected_tgc.argmax(1)], grid[expected_sgv.argmin(0)][None]]).float()
    torch.testing.assert_close(sg.w_t, picks.reshape(sg.w_t.shape))  # the brute-force search's windows
    assert not torch.equal(sg.w_t, windows)


def test_search_in_passes_of_fewer_steps_equals_one_pass(monkeypatch):
    """Large layers are evaluated a few steps at a time (``EVALUATION_ELEMENTS``): one step per pass, and 3 + 1
    steps, give the statistics of one pass over all 4."""
    import repro.surrogates.a2sg_search as search_module

    layers = cf_layers("signed", fused=False, granularity="layer_channel_time")
    x, y = cf_batch()
    loss_of(layers, x, y).backward()
    search = layers[1].surrogate._observation
    one_pass = search.reduced_statistics()
    per_step = (len(search.candidates) + 1) * search.inputs[0][0][0].numel()
    for steps in (1, 3):
        monkeypatch.setitem(search_module.EVALUATION_ELEMENTS, "cpu", steps * per_step)
        for passes, whole in zip(search.reduced_statistics(), one_pass):
            torch.testing.assert_close(passes, whole, rtol=1e-12, atol=0)


def test_each_forward_starts_a_new_search_on_circulate_firing():
    """With gradient accumulation the last forward supplies the statistics, also at T = 1, where every call of
    both forwards is at step 0 (a call joins the step of the previous one only on the same membrane)."""
    x, y = cf_batch()
    statistics = []
    for halves in ([slice(0, B // 2), slice(B // 2, B)], [slice(B // 2, B)]):
        layers = cf_layers("signed", fused=False)
        layers[1].num_steps = 1
        for half in halves:
            loss_of(layers, x[:1, half], y[half]).backward()
        statistics.append(layers[1].surrogate._observation.reduced_statistics())
        layers[1].surrogate.after_optimizer_step(0)
    assert statistics[0][0].isfinite().all() and all(map(torch.equal, *statistics))


@pytest.mark.parametrize("neuron_name", ["lif", "circulate_firing"])
def test_search_evaluates_every_step_at_once(neuron_name):
    """The search's cost in launches: per step only the neuron handing over x, dL/ds and dL/du (x = u - theta_t,
    which a forward without statistics does not form: A2SG's windows read no membrane) and the copies of their
    sampled rows (at most 5 operations per surrogate call); the candidates are evaluated for all steps at once.
    Evaluated per step, as before, it took 47 operations per step on LIF and 80 on circulate firing.  And the
    search adds no host read (on a GPU, a wait for the device; there were 2 per layer: tensors made from the
    host's grid; the CPU neuron path's own reads of its decay are the same in both modes)."""
    def operations(adapt, steps):
        torch.manual_seed(0)
        # circulate firing's statistics forwards run the reference loop: its forwards without statistics too, so
        # that both counts see one path (the fused path takes its levels one at a time there)
        neuron = create_neuron(neuron_name, num_steps=steps, surrogate="a2sg", surrogate_kwargs={"adapt": adapt},
                               **({} if neuron_name == "lif" else {"fused": False}))
        x = torch.randn(steps, 4, 3, 8, requires_grad=True)

        def training_step():
            neuron(x * 2).sum().backward()
            neuron.surrogate.after_optimizer_step(0)
        training_step()  # sizes the windows
        with OperationCounter() as counter:
            training_step()
        assert int(neuron.surrogate.num_controller_steps) == (2 if adapt == "search" else 0)
        return counter.count, counter.host_reads()

    calls = 1 if neuron_name == "lif" else 2
    search = {}
    for steps in (2, 8):
        (with_search, reads), (without, reads_without) = operations("search", steps), operations("none", steps)
        assert reads == reads_without
        search[steps] = with_search - without
    assert 0 <= search[8] - search[2] <= 6 * 5 * calls, search


def stacked_layers(layers: int, adapt: str = "search", together: bool = True, sample: int | None = 50
                   ) -> torch.nn.Sequential:
    """Linear + LIF layers of different widths and thresholds (A2SG, a sample of 50 elements, so that some rows
    are shorter), ending in circulate firing (two calls per step); ``together``: the engine's on_model_built."""
    torch.manual_seed(0)
    modules, width = [], N
    for i in range(layers):
        modules += [torch.nn.Linear(width, 8 + 5 * i),
                    create_neuron("lif", num_steps=T, threshold=0.5 + 0.25 * i, surrogate="a2sg",
                                  surrogate_kwargs={"adapt": adapt, "search_sample": sample})]
        width = 8 + 5 * i
    modules += [torch.nn.Linear(width, 6), create_neuron("circulate_firing", mode="signed", D=2, num_steps=T,
                                                          surrogate="a2sg", surrogate_kwargs={"adapt": adapt}),
                torch.nn.Linear(6, 5)]
    model = torch.nn.Sequential(*modules)
    for module in model:
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.8)  # every layer's spikes get a gradient
    return call_model_built_hooks(model) if together else model


def test_a_models_searches_are_evaluated_together():
    """After on_model_built the model's searches are evaluated in one pass per kind of neuron (LIF rows of
    different lengths side by side, circulate firing apart) and all-reduced at once: the statistics of each
    search alone, the same choices and windows, and per further LIF layer 36 operations the search adds to a
    training step (123 evaluated layer by layer; each a kernel launch on a GPU).  A copy of the model starts with no
    pending search (they belong to the original's surrogates)."""
    from repro.surrogates.a2sg_search import choose_windows, reduce_searches

    x, y = batch(0)
    model = stacked_layers(3)
    F.cross_entropy(model(x).mean(0), y).backward()
    surrogates = [module for module in model.modules() if isinstance(module, A2SG)]
    searches = [surrogate._observation for surrogate in surrogates]
    copied = [module for module in copy.deepcopy(model).modules() if isinstance(module, A2SG)]
    assert len({id(surrogate._pending) for surrogate in copied}) == 1 and not copied[0]._pending.searches
    for together, alone in zip(reduce_searches(searches), [search.reduced_statistics() for search in searches]):
        for joint, single in zip(together, alone):
            assert single.isfinite().all()  # every candidate has a gradient
            torch.testing.assert_close(joint, single, rtol=1e-5, atol=1e-7)
    for together, alone in zip(choose_windows(searches), [search.reduced_statistics() for search in searches]):
        single = WindowChoice.of(*alone, searches[0].candidates)  # a model's choices made at once, each its own
        assert together.best.shape == single.best.shape == (T, 1)
        for joint, one in zip(together, single):
            torch.testing.assert_close(joint, one, rtol=1e-5, atol=1e-7)

    def search_operations(layers: int, together: bool) -> tuple[int, list]:
        counts = []
        for adapt in ("none", "search"):
            model = stacked_layers(layers, adapt, together)
            surrogates = [module for module in model.modules() if isinstance(module, A2SG)]

            def training_step():
                F.cross_entropy(model(x).mean(0), y).backward()
                for surrogate in surrogates:
                    surrogate.after_optimizer_step(0)
            training_step()
            with OperationCounter() as counter:
                training_step()
            counts.append(counter.count)
        return counts[1] - counts[0], [surrogate.w_t for surrogate in surrogates]

    (few, windows), (many, _) = search_operations(2, True), search_operations(6, True)
    (alone, windows_alone), (many_alone, _) = search_operations(2, False), search_operations(6, False)
    assert all(map(torch.equal, windows, windows_alone)) and len(torch.cat(windows).unique()) > 3
    assert (many - few) / 4 <= 40 < (many_alone - alone) / 4, (few, many, alone, many_alone)


def test_search_step_picks_the_best_candidate_and_keeps_windows_without_one():
    """A search step on given statistics (``WindowChoice.of``, ``A2SG.apply_choice``): step t < T takes the candidate of highest TGC[t], step T the one of lowest SGV;
    where every candidate's gradient vanished (TGC -inf, SGV +inf) or a statistic is NaN, the window in force stays."""
    sg = create_surrogate("a2sg", shape="ramp", adapt="search")
    grid, kept = sg.candidate_windows, torch.tensor([0.7, 0.8, 0.9, 1.1])
    sg.w_t = kept.clone()
    candidates = len(grid)
    tgc = torch.full((3, candidates + 1, 1), float("-inf"), dtype=torch.float64)
    tgc[0, 4], tgc[0, 6] = 0.9, 0.5  # step 0: candidate 4
    tgc[1, :candidates] = float("nan")  # step 1: NaN statistics keep the window
    tgc[:, -1] = 0.3  # the window in force (never a candidate)
    sgv = torch.full((candidates + 1, 1), float("inf"), dtype=torch.float64)
    sgv[7], sgv[2] = 0.25, 0.5  # step 3: candidate 7
    sg.apply_choice(WindowChoice.of(sgv, tgc, grid))
    assert torch.equal(sg.w_t, torch.stack([grid[4], kept[1], kept[2], grid[7]]).to(sg.w_t))
    sgv[:candidates] = float("inf")
    sg.apply_choice(WindowChoice.of(sgv, tgc, grid))  # no candidate of the last step has a gradient
    assert sg.w_t[3] == grid[7] and int(sg.num_controller_steps) == 2


def test_windows_apply_from_the_next_step_and_only_on_search_steps():
    layers = tiny_layer("ramp", "snntorch", "zero", fused=True)
    sg = layers[1].surrogate
    sg.update_every = 2
    for step in range(2):
        x, y = batch(step)
        loss_of(layers, x, y).backward()
        before = sg.w_t.clone()
        sg.after_optimizer_step(step)
        if step == 0:  # not a search step: nothing registered, windows unchanged
            assert torch.equal(sg.w_t, before) and int(sg.num_controller_steps) == 0
    assert int(sg.num_controller_steps) == 1 and not torch.equal(sg.w_t, torch.full((T,), 0.5))
    fixed = tiny_layer("triangle", "snntorch", "zero", fused=True, adapt="none")
    fixed[1].surrogate.update_every = 1  # (10 by default for the fixed arms)
    loss_of(fixed, *batch(0)).backward()
    fixed[1].surrogate.after_optimizer_step(0)
    assert torch.equal(fixed[1].surrogate.w_t, torch.full((T,), 0.5))  # fixed arm: statistics logged only
    assert fixed[1].surrogate.sgv_ema.item() > 0 and int(fixed[1].surrogate.num_controller_steps) == 1


def _search_step_on(rank):
    """The search on process ``rank``'s half of the batch."""
    layers = tiny_layer("ramp", "snntorch", "zero", fused=True)
    x, y = batch(0, size=2 * B)
    half = slice(rank * B, (rank + 1) * B)
    loss_of(layers, x[:, half], y[half], reduction="sum").backward()
    layers[1].surrogate.after_optimizer_step(0)
    return layers[1].surrogate.w_t


def test_two_processes_pick_the_same_windows_as_one_process_on_the_whole_batch(tmp_path):
    per_rank = run_in_gloo_processes(_search_step_on, tmp_path)
    layers = tiny_layer("ramp", "snntorch", "zero", fused=True)
    loss_of(layers, *batch(0, size=2 * B), reduction="sum").backward()  # sums: the same dL/du as the two halves
    layers[1].surrogate.after_optimizer_step(0)
    assert torch.equal(per_rank[0], per_rank[1])
    torch.testing.assert_close(per_rank[0], layers[1].surrogate.w_t)
    assert isinstance(layers[1].surrogate, A2SG)


def _model_search_step_on(rank):
    """A model's searches evaluated together on process ``rank``'s part of the batch: 8 and 16 of 24 samples, so
    that the processes' rows differ in length (every element: no sample), process 1 one layer and step per pass."""
    import repro.surrogates.a2sg_search as search_module

    if rank == 1:
        search_module.EVALUATION_ELEMENTS["cpu"] = 1
    model = stacked_layers(3, sample=None)
    x, y = batch(0)
    part = slice(0, 8) if rank == 0 else slice(8, B)
    F.cross_entropy(model(x[:, part]).mean(0), y[part], reduction="sum").backward()
    surrogates = [module for module in model.modules() if isinstance(module, A2SG)]
    for surrogate in surrogates:
        surrogate.after_optimizer_step(0)
    return [surrogate.w_t for surrogate in surrogates]


def test_two_processes_evaluate_a_models_searches_together_as_one_process(tmp_path):
    per_rank = run_in_gloo_processes(_model_search_step_on, tmp_path)
    model = stacked_layers(3, sample=None)
    x, y = batch(0)
    F.cross_entropy(model(x).mean(0), y, reduction="sum").backward()
    surrogates = [module for module in model.modules() if isinstance(module, A2SG)]
    for surrogate in surrogates:
        surrogate.after_optimizer_step(0)
    assert all(map(torch.equal, *per_rank)) and not any(torch.equal(w, torch.full_like(w, 0.5)) for w in per_rank[0])
    for windows, surrogate in zip(per_rank[0], surrogates):
        torch.testing.assert_close(windows, surrogate.w_t)


def test_report_section_states_the_definitions_and_the_layer_statistics():
    from types import SimpleNamespace

    from repro.report import a2sg_statistics_section

    layers = tiny_layer("ramp", "snntorch", "zero", fused=True)
    loss_of(layers, *batch(0)).backward()
    layers[1].surrogate.after_optimizer_step(0)
    text = "\n".join(a2sg_statistics_section([SimpleNamespace(label="run", model=torch.nn.Sequential(*layers))]))
    sg = layers[1].surrogate
    assert "Var(delta[T]) / Mean(|delta[T]|)" in text and "[paper, via summary]" in text
    assert f"| `1.surrogate` | search | paper | {sg.sgv_ema.item():.4g} | {sg.tgc_ema.item():.4g} |" in text
