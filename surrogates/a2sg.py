"""A2SG: adaptive and asymmetric surrogate gradients (Kang et al., arXiv 2606.11236; docs/methods.md, "A2SG").

Spike function, x = u - theta: forward ``s = 1[x > 0]`` (``>=`` under the ``reference`` preset), backward
``ds/dx := h(x; w, ...)`` with a window w > 0 per layer and timestep (shapes: ``a2sg_shapes.py``).

**Paper mode (the default)** [paper, via summary; the authors' code is not released]: the ``ramp`` shape
(rising across the window [theta - w, theta + w]; the paper's ASY) and the ST-ASG window search
(``adapt="search"``, in ``a2sg_search.py``):

    SGV    = Var(delta[T]) / Mean(|delta[T]|),   TGC[t] = cos(delta[t], delta[t+1]),   delta = dL/du
    w[T]   = argmin over the candidates of SGV,  w[t] = argmax of TGC[t]   (t < T)

The paper searches by Bayesian optimisation; here ``search="grid"`` [reconstructed] evaluates ``grid_size``
candidates on a log grid in [w_min, w_max] exactly from the backward that already ran (no second backward;
on an evenly strided sample of ``search_sample`` elements per layer), on every ``update_every``-th optimiser
step (default every step, as the paper reportedly does), sums the statistics over processes, and applies the
chosen windows from the next optimiser step [reconstructed].
The paper's ablation arms: fixed ``triangle`` / ``box`` (``adapt="none"``), ST-ASG (``search`` +
``triangle``), A2SG (``search`` + ``ramp``).  SGV/TGC in force are logged in ``sgv_ema``, ``tgc_ema``
(mean over t) and ``tgc_t[t]`` in every mode with ``statistics="paper"``, so fixed arms report them too.

**Our earlier reconstruction** [reconstructed], kept as options (``a2sg_reconstructed`` builds it with
its defaults): shapes ``asym_triangle`` (asymmetry ``asym``), ``asym_rect``, ``asym_sigmoid``,
``shifted``, and the ``sgv_tgc`` feedback controller on its own statistics (``statistics="reconstructed"``),
taken on the forward before every ``update_every``-th optimiser step:

- SGV = mean_t [ std(h(x_t)) / (mean(h(x_t)) + 1e-8) ] over batch x neurons (``sgv_source="grad"``:
  |dL/du_t| instead of h; circulate firing: h summed over the step's calls and levels);
  TGC = mean_{t<t'} cos(dL/du_t, dL/du_t'), c[t] = mean_{t' != t} cos(...) (T = 1: TGC := tgc_target, c := 1);
- mode ``sgv_tgc``: during the first ``calib_epochs`` epochs ``sgv_ref`` is the EMA of SGV (no window
  change); then it is frozen and, every controller step::

      e          = rho1 (SGV / sgv_ref - 1) + rho2 (tgc_target - TGC)
      log_w_base = clamp(log_w_base + eta_w tanh(e), log w_min, log w_max)
      w_t[t]     = clamp(exp(log_w_base) (1 + gamma_t (1 - c[t])), w_min, w_max)

  (``temporal_mod=False``: gamma_t = 0);
- mode ``memstat``: on every training forward ``std_ema[t] <- (1 - m) std_ema[t] + m std(u_t)/theta``
  and ``w_t[t] = clamp(kappa std_ema[t], w_min, w_max)``; mode ``none``: w = w0.

``tgc_source="weight_grad"`` (reconstructed statistics only, diagnostic): TGC and c from the cosines
between the per-timestep gradients of the conv / linear feeding the layer.

Common to both: windows are stored **in units of the threshold theta** (the window used at a call is
``w_t[step] * theta``); one state per surrogate instance, i.e. per spiking layer, in persistent buffers
(``w_t``, ``log_w_base``, ``sgv_ref``, ``calibrated``, ``sgv_ema``, ``tgc_ema``, ``tgc_t``, ``std_ema``,
``a2sg_step``, ``num_controller_steps``), sized from the calls and resized by ``load_state_dict`` to the
checkpoint's.  Granularity: ``layer_time`` (default) one window per timestep; ``layer`` one for all
timesteps (the mean over t of the per-step windows); ``layer_channel`` / ``layer_channel_time`` the same
per channel along ``channel_dim``.  Our neurons call ``surrogate(x, mem=u, step=t, neuron=self)``
(circulate firing, with several calls per step, adds ``mem_slope`` = dx/du and ``last_call``, whether the step
makes no further call); without ``step`` (stock ``snntorch.Leaky``, single-step mode) the fixed window w0 is
used and no statistics are taken.  Training loops other than ``repro.engine.train`` must call
``on_epoch_start(epoch)`` and ``after_optimizer_step(step)``, and ``repro.models.call_model_built_hooks(model)``
once after building the model, so that its layers' window searches are evaluated together (else each alone:
more launches, the same windows).  With gradient accumulation the last forward before the optimiser step
supplies the statistics.  Nothing is learned by gradient descent; h uses differentiable ops, so
Hessian-vector products work.
"""
from __future__ import annotations

import inspect
import math
import weakref
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .a2sg_shapes import ASYMMETRY_SHAPES, SHAPE_PARAMETERS, SHAPES
from .a2sg_search import PendingSearches, WindowChoice, WindowSearch
from .a2sg_statistics import EPS, GradientObservation, coefficient_of_variation, per_step_weight_grads, world_mean
from .base import RowSample, Surrogate

ADAPT_MODES = ("search", "none", "sgv_tgc", "memstat")
STATISTICS = ("paper", "reconstructed")
SEARCHES = ("grid",)
GRANULARITIES = ("layer", "layer_time", "layer_channel", "layer_channel_time")
SGV_SOURCES = ("surrogate", "grad")
TGC_SOURCES = ("membrane_grad", "weight_grad")
WINDOW_BUFFERS = ("log_w_base", "sgv_ref", "sgv_ema", "tgc_ema", "tgc_t", "w_t", "std_ema")


def _choice(name: str, value: str, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"a2sg: {name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _threshold(neuron: Any) -> float:
    theta = getattr(neuron, "threshold", 1.0) if neuron is not None else 1.0
    if isinstance(theta, Tensor) and theta.numel() != 1:
        raise ValueError(f"a2sg needs a scalar neuron threshold, got shape {tuple(theta.shape)}")
    return float(theta)


class A2SG(Surrogate):
    """Adaptive and asymmetric SG; see the module docstring for the equations.  The defaults are the
    paper's method (ramp + window search) [paper, via summary]; the search's grid, lag and defaults of
    w0 / w_min / w_max are [reconstructed].

    The paper's ablation arms: fixed TRI ``shape="triangle", adapt="none"``; fixed BOX ``shape="box",
    adapt="none"``; ST-ASG ``shape="triangle"``; A2SG (default).  Our earlier 2 x 2 grid: ``asym_triangle``
    with ``asym`` 0 / 0.5 and ``adapt`` none / sgv_tgc (``a2sg_reconstructed``).

    Args:
        shape: ``ramp`` | ``triangle`` | ``box`` (the paper's) | ``asym_triangle`` | ``asym_rect`` |
            ``asym_sigmoid`` | ``shifted`` (ours).
        asym: a in [0, 0.9] for the ``asym_*`` and ``shifted`` shapes; 0 = symmetric.
        height: the ramp's value at threshold; None: 1/(2w) (area 1) [reconstructed default].
        clip: clip the ramp's negative values to 0 [reconstructed default]; False keeps them.
        adapt: ``search`` (the paper's window search) | ``sgv_tgc`` | ``memstat`` | ``none`` (None, as the
            CLI parses ``none``, means ``none``).
        statistics: SGV/TGC definitions measured and logged: ``paper`` | ``reconstructed``; None: ``paper``
            for ``search`` / ``none``, ``reconstructed`` for ``sgv_tgc`` / ``memstat``.
        search: ``grid`` (``bayes`` is not provided: docs/methods.md, "A2SG", gives the measured reason).
        grid_size: candidates on the log grid in [w_min, w_max] (``search``).
        search_sample: elements per unit (evenly strided) on which the paper's statistics are evaluated;
            None: all (exact) [reconstructed].
        sgv_form: the paper's SGV ``variance`` (Var/Mean|delta|) [paper, via summary], or ``std`` (Std/Mean|delta|,
            scale-free) [reconstructed alternative: with the variance, wider area-1 windows give smaller
            gradients and so a smaller SGV, and the search picks w_max (measured, docs/methods.md)].
        granularity: ``layer`` | ``layer_time`` | ``layer_channel`` | ``layer_channel_time``.
        temporal_mod: apply the per-timestep factor (1 + gamma_t (1 - c[t])) (``sgv_tgc``).
        sgv_source: ``surrogate`` (h(x)) | ``grad`` (|dL/du|).
        tgc_source: ``membrane_grad`` (dL/du[t]) | ``weight_grad`` (per-timestep gradients of the feeding
            conv / linear weight, ``neuron.input_layer``; diagnostic-only, T weight-gradient products).
        w0, w_min, w_max: initial, smallest and largest window, in units of the threshold.
        eta_w, rho1, rho2, tgc_target, gamma_t: ``sgv_tgc`` controller constants (see the update rule).
        update_every: K, optimiser steps between statistics / controller steps; None: 1 for ``search``,
            10 otherwise.
        calib_epochs: epochs that only calibrate ``sgv_ref``.
        ema_momentum: m of every EMA (``sgv_ref`` calibration, ``std_ema``, ``sgv_ema``, ``tgc_ema``);
            an EMA starts at its first observation, except ``std_ema``, which starts at w0/kappa.
        kappa: memstat's window per unit of membrane std.
        channel_dim: channel dimension of the per-step input (per-channel granularities).
    """

    reads_membrane = False  # the windows come from the step and the membrane's shape (``call_params``)

    def __init__(
        self,
        shape: str = "ramp",
        asym: float = 0.0,
        height: float | None = None,
        clip: bool = True,
        adapt: str | None = "search",
        statistics: str | None = None,
        search: str = "grid",
        grid_size: int = 12,
        search_sample: int | None = 8192,
        sgv_form: str = "variance",
        granularity: str = "layer_time",
        temporal_mod: bool = True,
        sgv_source: str = "surrogate",
        tgc_source: str = "membrane_grad",
        w0: float = 0.5,
        w_min: float = 0.2,
        w_max: float = 2.0,
        eta_w: float = 0.01,
        rho1: float = 1.0,
        rho2: float = 1.0,
        tgc_target: float = 0.5,
        gamma_t: float = 0.5,
        update_every: int | None = None,
        calib_epochs: int = 1,
        ema_momentum: float = 0.1,
        kappa: float = 1.0,
        channel_dim: int = 1,
    ):
        super().__init__()
        self.shape_name = _choice("shape", shape, tuple(SHAPES))
        self.shape = SHAPES[shape]  # a plain function: SpikeFunction's backward reads no module state
        self.adapt = _choice("adapt", "none" if adapt is None else adapt, ADAPT_MODES)
        self.granularity = _choice("granularity", granularity, GRANULARITIES)
        self.sgv_source = _choice("sgv_source", sgv_source, SGV_SOURCES)
        self.tgc_source = _choice("tgc_source", tgc_source, TGC_SOURCES)
        if search == "bayes":
            raise ValueError("a2sg: search='bayes' is not provided (a Gaussian-process search costs more than the "
                             "exact grid, measured in docs/methods.md, 'A2SG'); use search='grid'")
        self.search = _choice("search", search, SEARCHES)
        self.sgv_form = _choice("sgv_form", sgv_form, ("variance", "std"))
        default_statistics = "paper" if self.adapt in ("search", "none") else "reconstructed"
        self.statistics = _choice("statistics", statistics or default_statistics, STATISTICS)
        update_every = (1 if self.adapt == "search" else 10) if update_every is None else update_every
        checks = [
            (0.0 <= asym <= 0.9, f"asym must be in [0, 0.9] (wL = w (1 - asym) > 0), got {asym}"),
            (asym == 0 or shape in ASYMMETRY_SHAPES,
             f"asym applies to the shapes {', '.join(ASYMMETRY_SHAPES)}, not {shape!r}: set asym 0"),
            ((height is None and clip is True) or shape == "ramp",
             f"height and clip apply to the ramp shape only, not {shape!r}"),
            (height is None or height > 0, f"height must be > 0 (or None for 1/(2w)), got {height}"),
            (self.adapt != "search" or self.statistics == "paper",
             "adapt='search' uses the paper's statistics: set statistics='paper'"),
            (self.adapt != "sgv_tgc" or self.statistics == "reconstructed",
             "adapt='sgv_tgc' uses the reconstructed statistics: set statistics='reconstructed'"),
            (self.statistics == "reconstructed" or tgc_source == "membrane_grad",
             "tgc_source='weight_grad' applies to statistics='reconstructed' only"),
            (isinstance(grid_size, int) and grid_size >= 2, f"grid_size must be an int >= 2, got {grid_size!r}"),
            (search_sample is None or (isinstance(search_sample, int) and search_sample >= 2),
             f"search_sample must be an int >= 2 or None (all elements), got {search_sample!r}"),
            (0.0 < w_min <= w0 <= w_max, f"need 0 < w_min <= w0 <= w_max, got {w_min}, {w0}, {w_max}"),
            (eta_w >= 0 and rho1 >= 0 and rho2 >= 0 and gamma_t >= 0,
             f"eta_w, rho1, rho2, gamma_t must be >= 0, got {eta_w}, {rho1}, {rho2}, {gamma_t}"),
            (-1.0 <= tgc_target <= 1.0, f"tgc_target is a cosine, must be in [-1, 1], got {tgc_target}"),
            (isinstance(update_every, int) and update_every >= 1,
             f"update_every must be an int >= 1, got {update_every!r}"),
            (isinstance(calib_epochs, int) and calib_epochs >= 0,
             f"calib_epochs must be an int >= 0, got {calib_epochs!r}"),
            (0.0 < ema_momentum <= 1.0, f"ema_momentum must be in (0, 1], got {ema_momentum}"),
            (kappa > 0, f"kappa must be > 0, got {kappa}"),
            (isinstance(temporal_mod, bool), f"temporal_mod must be true or false, got {temporal_mod!r}"),
            (isinstance(channel_dim, int), f"channel_dim must be an int, got {channel_dim!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"a2sg: {message}")
        self.asym, self.w0, self.w_min, self.w_max = float(asym), float(w0), float(w_min), float(w_max)
        self.height, self.clip, self.grid_size = (None if height is None else float(height)), clip, grid_size
        self.search_sample = search_sample
        # the search's candidate windows (units of theta), a log grid in [w_min, w_max]; a buffer, so that a search
        # step makes no tensor on the host (on a GPU a copy that waits for the device)
        self.candidates = torch.logspace(math.log10(w_min), math.log10(w_max), grid_size, dtype=torch.float64).tolist()
        self.register_buffer("candidate_windows", torch.tensor(self.candidates), persistent=False)
        self.eta_w, self.rho1, self.rho2, self.tgc_target = float(eta_w), float(rho1), float(rho2), float(tgc_target)
        self.gamma_t = float(gamma_t) if temporal_mod else 0.0
        self.temporal_mod, self.update_every, self.calib_epochs = temporal_mod, update_every, calib_epochs
        self.ema_momentum, self.kappa, self.channel_dim = float(ema_momentum), float(kappa), channel_dim
        self.per_channel = granularity.startswith("layer_channel")
        self.per_step = granularity.endswith("_time")

        units = (0,) if self.per_channel else ()  # channel count set by the first call
        self.register_buffer("log_w_base", torch.full(units, math.log(w0)))
        for name in ("sgv_ref", "sgv_ema", "tgc_ema"):
            self.register_buffer(name, torch.zeros(units))
        self.register_buffer("tgc_t", torch.zeros(0, *units))  # paper statistics: TGC[t], t < T
        self.register_buffer("w_t", torch.zeros(0, *units))  # rows appended per timestep
        self.register_buffer("std_ema", torch.zeros(0, *units))
        self.register_buffer("calibrated", torch.tensor(False))
        self.register_buffer("a2sg_step", torch.tensor(0, dtype=torch.long))
        self.register_buffer("num_controller_steps", torch.tensor(0, dtype=torch.long))
        self._set_steps(0)  # _steps mirrors a2sg_step, so that forward never synchronises with the device
        self._controller_steps = 0  # mirror of num_controller_steps (no host sync per statistics step)
        self._calibrated = False  # mirror of calibrated
        self._weight_hook = None  # tgc_source="weight_grad": forward hook on the feeding conv / linear
        self._observation: GradientObservation | WindowSearch | None = None
        self._pending = PendingSearches()  # shared by the model's A2SG surrogates after on_model_built
        self._membrane_seen: tuple[int, weakref.ref] | None = None  # the latest observed call's step and membrane
        self._frozen = False

    # ----------------------------------------------------------------- per-call window
    def call_params(self, x: Tensor, step: int | None = None, neuron: Any = None, **context: Any) -> dict:
        theta = _threshold(neuron)
        if step is None:
            return self.shape_params(self.w0 * theta)
        # x: the membrane's shape, or [levels, ...] (circulate firing)
        return self.shape_params(self._absolute_windows(context.get("mem", x), step + 1, theta)[step])

    def step_params(self, x: Tensor, contexts: list[dict], calls: int = 1) -> list[dict]:
        """Every step's window at once, equal to ``call_params``'s (``Surrogate.step_params``)."""
        first = contexts[0]
        if first.get("step") is None:
            return super().step_params(x, contexts, calls)
        windows = self._absolute_windows(first.get("mem", x[0]), len(contexts), _threshold(first.get("neuron")))
        return [self.shape_params(window) for window in windows.unbind()]

    def _absolute_windows(self, membrane: Tensor, steps: int, theta: float) -> Tensor:
        """w_t * theta of steps 0..steps-1, [steps] or [steps, C, 1, ...] against a step ``membrane`` (its
        ``channel_dim``); a new tensor: later buffer updates do not reach it."""
        self._ensure_size(membrane, steps - 1)
        w = self.w_t[:steps]
        if self.per_channel:
            w = w.reshape(steps, -1, *[1] * (membrane.dim() - self.channel_dim % membrane.dim() - 1))
        return w.detach() * theta

    def shape_params(self, w) -> dict:
        """The parameters of ``shape`` for the (absolute) window ``w``."""
        options = {"w": w, "a": self.asym, "height": self.height, "clip": self.clip}
        return {name: options[name] for name in SHAPE_PARAMETERS[self.shape_name]}

    def observe(self, x: Tensor, params: dict, context: dict) -> None:
        super().observe(x, params, context)
        step = context.get("step")
        backward_follows = torch.is_grad_enabled() or "register_membrane_grad" in context
        if step is not None and self.training and backward_follows and not self._frozen:
            with torch.no_grad():
                self._observe(x, context, step, params, _threshold(context.get("neuron")))

    @property
    def row_sample(self) -> RowSample:
        """The units (a channel along ``channel_dim`` with per-channel granularities, else the layer) and the window
        search's sample of each unit's row (``search_sample`` elements)."""
        return RowSample(self.channel_dim if self.per_channel else None, self.search_sample)

    def observation_sample(self) -> RowSample | None:
        """The window search's rows where they are all this forward's observation reads (the paper's statistics,
        no observers, no memstat, which reads whole membranes): the fused LIF path then writes only these
        (``Surrogate.observation_sample``)."""
        if self.statistics == "paper" and self.adapt != "memstat" and not self.observers:
            return self.row_sample
        return None

    def _per_unit(self, values: Tensor) -> Tensor:
        """[U, N]: one row per channel (per-channel granularities) or a single row."""
        return self.row_sample.per_unit(values)

    def _units(self, values: Tensor) -> Tensor:
        """[..., U] -> [..., C] or [...] (the buffers' unit shape)."""
        return values if self.per_channel else values.squeeze(-1)

    def __getstate__(self) -> dict:
        """Picklable between calls: without the weak reference to the latest membrane."""
        return {**self.__dict__, "_membrane_seen": None}

    def _repeat_call(self, step: int, mem: Tensor | None) -> bool:
        """Whether this call is a further one at step ``step`` on the membrane of the latest call (circulate
        firing's down-crossings); remembers this call's step and membrane."""
        seen = self._membrane_seen
        repeat = mem is not None and seen is not None and seen[0] == step and seen[1]() is mem
        self._membrane_seen = None if mem is None else (step, weakref.ref(mem))
        return repeat

    def _observe(self, x: Tensor, context: dict, step: int, params: dict, theta: float) -> None:
        mem = context.get("mem")
        repeat, last_call = self._repeat_call(step, mem), context.get("last_call", True)
        if self.adapt == "memstat" and mem is not None and last_call:  # the step's calls all used the same window
            std = world_mean(self._units(self._per_unit(mem.detach().float()).std(-1, correction=0)) / theta)
            self.std_ema[step] = (1 - self.ema_momentum) * self.std_ema[step] + self.ema_momentum * std
            self._set_windows((self.kappa * self.std_ema).clamp(self.w_min, self.w_max))
        if self.tgc_source == "weight_grad" and self._weight_hook is None:
            self._hook_weight_layer(context.get("neuron"))
        if self._controller_step_next() and self.statistics == "paper":
            self._observe_search(x, context, step, theta, repeat)
        elif self._controller_step_next():
            if (step == 0 and not repeat) or self._observation is None:
                self._observation = GradientObservation(self._per_unit, self.sgv_source == "grad",
                                                        from_weights=self.tgc_source == "weight_grad")
            h = None
            if self.sgv_source == "surrogate":  # the sum over levels, e.g. circulate firing's D crossings
                h = self.shape(x.detach().float(), **params)
                h = h.reshape(-1, *mem.shape).sum(0) if mem is not None else h
            self._observation.add_step(step, h, mem, context.get("register_membrane_grad"), repeat, last_call)

    def wants_spike_grad(self) -> bool:
        return self.statistics == "paper" and self.training and not self._frozen and self._controller_step_next()

    def _observe_search(self, x: Tensor, context: dict, step: int, theta: float, repeat: bool) -> None:
        """Cache x[t] and register the spike- and membrane-gradient callbacks of the window search (a new search
        at each forward's step 0; a second call at a step, as circulate firing's down-crossings, joins it)."""
        mem = context.get("mem")
        register_membrane = context.get("register_membrane_grad")
        if register_membrane is None and mem is not None and mem.requires_grad:
            register_membrane = mem.register_hook
        register_spike = context.get("register_spike_grad")
        if mem is None or register_membrane is None or register_spike is None:
            return
        search = self._observation
        if not isinstance(search, WindowSearch) or (step == 0 and not repeat):
            key = (self.shape_name, self.asym, self.height, self.clip, tuple(self.candidates), self.sgv_form)
            self._observation = WindowSearch(self.shape, self.shape_params, theta, self.candidate_windows,
                                             self.row_sample, self.sgv_form, key)
            self._pending.add(self, self._observation)
        window = self.w_t[step].reshape(-1, 1)  # [U, 1], units of theta
        self._observation.add_step(step, x, mem, context.get("mem_slope", 1.0), window, register_spike,
                                   register_membrane, repeat, sampled=context.get("sampled", False))

    def _controller_step_next(self) -> bool:
        return self._statistics_next

    def _set_steps(self, steps: int) -> None:
        """The optimiser steps so far, and whether the next forward takes statistics (a bool, so that torch.compile
        guards on it rather than on the count)."""
        self._steps, self._statistics_next = steps, (steps + 1) % self.update_every == 0

    @property
    def update_every(self) -> int:
        return self._update_every

    @update_every.setter
    def update_every(self, value: int) -> None:
        self._update_every = value
        self._set_steps(getattr(self, "_steps", 0))

    @property
    def observes(self) -> bool:
        """Whether a call has side effects: observers; the first forward (it sizes the buffers); a training
        forward that takes statistics (every ``update_every``-th, memstat's every one, tgc_source="weight_grad"'s
        first).  Elsewhere (evaluation, the forwards between statistics steps) torch.compile traces the neuron."""
        statistics = self._statistics_next or self.adapt == "memstat" or \
            (self.tgc_source == "weight_grad" and self._weight_hook is None)
        return bool(self.observers) or (self.training and not self._frozen and statistics) or self.w_t.shape[0] == 0

    def _hook_weight_layer(self, neuron: Any) -> None:
        """tgc_source="weight_grad": from now on, the forward of the feeding layer on a controller step
        hooks its output, whose gradient gives the per-timestep weight gradients (first used at the next
        controller step: with update_every=1 the first one is skipped)."""
        layer = getattr(neuron, "input_layer", None)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise ValueError("a2sg: tgc_source='weight_grad' needs the Conv2d / Linear feeding the neuron "
                             "(neuron.input_layer, set by the suite's models through fed_by / set_input_norm); "
                             f"this neuron has {type(layer).__name__}. Use tgc_source='membrane_grad'")

        def forward_hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if self.training and torch.is_grad_enabled() and not self._frozen and self._controller_step_next() \
                    and output.requires_grad:
                folded_input = inputs[0].detach()
                output.register_hook(lambda grad: self._on_weight_layer_grad(module, folded_input, grad))

        self._weight_hook = layer.register_forward_hook(forward_hook)

    @torch.no_grad()
    def _on_weight_layer_grad(self, layer: nn.Module, inputs: Tensor, grad: Tensor) -> None:
        steps = self._observation.observed_steps() if self._observation is not None else 0
        if steps:
            grads = per_step_weight_grads(layer, inputs, grad, steps)
            self._observation.add_weight_grads([g.flatten(1) if self.per_channel else g.reshape(1, -1) for g in grads])

    def _set_windows(self, windows: Tensor) -> None:
        """windows[T', U...] (already clamped) -> w_t[:T']; ``layer``/``layer_channel``: mean over t."""
        if not self.per_step:
            windows = windows.mean(0, keepdim=True).expand_as(windows)
        self.w_t[: windows.shape[0]] = windows

    # ----------------------------------------------------------------- controller
    def on_model_built(self, model: nn.Module) -> None:
        """Engine hook: the model's A2SG surrogates share their pending window searches, evaluated together and
        all-reduced at once after each optimiser step (``reduce_searches``)."""
        pending = self._pending
        for module in model.modules():
            if isinstance(module, A2SG):
                module._pending = pending

    def on_epoch_start(self, epoch: int) -> None:
        """Engine hook: after ``calib_epochs`` epochs ``sgv_ref`` is frozen and updates start."""
        if not self._frozen and epoch >= self.calib_epochs:
            self.calibrated.fill_(True)
            self._calibrated = True

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """Engine hook (``step`` is the engine's count; this module keeps its own ``a2sg_step``)."""
        self._membrane_seen = None
        if self._frozen:
            return
        self._set_steps(self._steps + 1)
        self.a2sg_step.fill_(self._steps)
        observation, self._observation = self._observation, None
        if self._steps % self.update_every or observation is None:
            return
        if isinstance(observation, WindowSearch):
            choice = self._pending.choice(observation)
            if choice is not None:  # None: no gradient reached u; replicas run the same graph, so all skip
                self.apply_choice(choice)
            return
        stats = observation.statistics(self.tgc_target)
        if stats is None:  # no gradient reached u; replicas run the same graph, so all of them skip
            return
        sgv, tgc, c = stats
        units = sgv.numel()
        packed = world_mean(torch.cat([sgv, tgc, c.flatten()]))
        self.control(self._units(packed[:units]), self._units(packed[units:2 * units]),
                     self._units(packed[2 * units:].reshape(-1, units)))

    @torch.no_grad()
    def apply_choice(self, choice: WindowChoice) -> None:
        """Log the paper's statistics in force and, with ``adapt="search"``, set every step's window to its best
        candidate, or keep it where no candidate has a gradient (``WindowChoice``: after a training step, the
        model's searches' choices are made together)."""
        first, steps = self._controller_steps == 0, len(choice.tgc)
        self._ema(self.sgv_ema, self._units(choice.sgv), first)
        self._ema(self.tgc_ema, self._units(choice.tgc_mean) if steps else self.tgc_ema, first)
        if self.tgc_t.shape[0] != steps:
            self.tgc_t = self.tgc_t.new_zeros(steps, *self.tgc_t.shape[1:])
        self._ema(self.tgc_t, self._units(choice.tgc), first)
        if self.adapt == "search":
            in_force = self.w_t[:len(choice.best)].reshape(choice.best.shape).to(choice.best)
            self._set_windows(self._units(torch.where(choice.found, choice.best, in_force)).to(self.w_t))
        self._controller_steps += 1
        self.num_controller_steps.fill_(self._controller_steps)

    @torch.no_grad()
    def control(self, sgv: Tensor, tgc: Tensor, c: Tensor) -> None:
        """One controller step from (reduced) statistics SGV[U], TGC[U], c[T, U] (U = () or (C,))."""
        first = self._controller_steps == 0
        self._ema(self.sgv_ema, sgv, first)
        self._ema(self.tgc_ema, tgc, first)
        if not self._calibrated:
            self._ema(self.sgv_ref, sgv, first)
        elif self.adapt == "sgv_tgc":
            if first:  # calibrated without any sample (calib_epochs=0 or a short epoch)
                self.sgv_ref.copy_(sgv)
            error = self.rho1 * (sgv / self.sgv_ref.clamp_min(EPS) - 1) + self.rho2 * (self.tgc_target - tgc)
            self.log_w_base.copy_((self.log_w_base + self.eta_w * torch.tanh(error))
                                  .clamp(math.log(self.w_min), math.log(self.w_max)))
            windows = self.log_w_base.exp() * (1 + self.gamma_t * (1 - c))
            self._set_windows(windows.clamp(self.w_min, self.w_max))
        self._controller_steps += 1
        self.num_controller_steps.fill_(self._controller_steps)

    def _ema(self, buffer: Tensor, value: Tensor, first: bool) -> None:
        """buffer <- value (first) or (1 - m) buffer + m value, in place (one operation)."""
        if first:
            buffer.copy_(value)
        else:
            buffer.lerp_(value.to(buffer), self.ema_momentum)

    @contextmanager
    def freeze_controller(self) -> Iterator["A2SG"]:
        """No statistics, hooks or updates inside (e.g. for Hessian diagnostics); windows stay as they are."""
        previous, self._frozen = self._frozen, True
        try:
            yield self
        finally:
            self._frozen = previous

    # ----------------------------------------------------------------- buffer sizes
    def _ensure_size(self, membrane: Tensor, step: int) -> None:
        """Size the channel dimension from the first call's membrane and append timestep rows as steps arrive."""
        if self.per_channel:
            channels = membrane.shape[self.channel_dim]
            if self.log_w_base.numel() == 0 and self.w_t.shape[0] == 0:
                for name in ("sgv_ref", "sgv_ema", "tgc_ema"):
                    setattr(self, name, getattr(self, name).new_zeros(channels))
                self.log_w_base = self.log_w_base.new_full((channels,), math.log(self.w0))
                self.w_t = self.w_t.new_zeros(0, channels)
                self.std_ema = self.std_ema.new_zeros(0, channels)
                self.tgc_t = self.tgc_t.new_zeros(0, channels)
            elif self.log_w_base.shape[0] != channels:
                raise ValueError(f"a2sg: this layer's per-channel windows have {self.log_w_base.shape[0]} channels "
                                 f"but the input has {channels} along channel_dim={self.channel_dim}")
        missing = step + 1 - self.w_t.shape[0]
        if missing > 0:
            row = self.log_w_base.exp().clamp(self.w_min, self.w_max)
            self.w_t = torch.cat([self.w_t, row.expand(missing, *row.shape)])
            self.std_ema = torch.cat([self.std_ema, (row / self.kappa).expand(missing, *row.shape)])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Resize the lazily sized buffers to the checkpoint's shapes (same number of dims only)."""
        for name in WINDOW_BUFFERS:
            saved = state_dict.get(prefix + name)
            current = getattr(self, name)
            if saved is not None and saved.dim() == current.dim() and saved.shape != current.shape:
                setattr(self, name, current.new_zeros(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._set_steps(int(self.a2sg_step))
        self._controller_steps, self._calibrated = int(self.num_controller_steps), bool(self.calibrated)

    def extra_repr(self) -> str:
        return (f"shape={self.shape_name}, asym={self.asym}, adapt={self.adapt}, statistics={self.statistics}, "
                f"granularity={self.granularity}, w0={self.w0}, w_min={self.w_min}, w_max={self.w_max}, "
                f"update_every={self.update_every}")


@contextmanager
def frozen_controllers(model: nn.Module) -> Iterator[nn.Module]:
    """``freeze_controller()`` on every A2SG surrogate of ``model``."""
    with ExitStack() as stack:
        for module in model.modules():
            if isinstance(module, A2SG):
                stack.enter_context(module.freeze_controller())
        yield model


RECONSTRUCTED_DEFAULTS = dict(shape="asym_triangle", asym=0.5, adapt="sgv_tgc", statistics="reconstructed")


def a2sg_reconstructed(**options: Any) -> A2SG:
    """Our earlier reconstruction of A2SG [reconstructed]: ``asym_triangle`` with a = 0.5 and the ``sgv_tgc``
    controller on its own statistics, every 10 optimiser steps (module docstring); options override."""
    return A2SG(**{**RECONSTRUCTED_DEFAULTS, **options})


# A2SG's options with these defaults, so that the registry checks option names and help lists them
a2sg_reconstructed.__signature__ = inspect.signature(A2SG).replace(parameters=[
    parameter.replace(default=RECONSTRUCTED_DEFAULTS.get(name, parameter.default))
    for name, parameter in inspect.signature(A2SG).parameters.items()])
