"""A2SG: adaptive and asymmetric surrogate gradients (a2sg.md; fidelity: RECONSTRUCTION).

Known [published]: the surrogate gradient (SG) window adapts across space and time, driven by a
spatial gradient variation (SGV) and a temporal gradient consistency (TGC) statistic, and the SG
is asymmetric, giving larger gradients to neurons with a higher membrane potential.  Everything
else here (shapes, statistics, update rule, defaults) is [reconstructed] and switchable; none of
it is the paper's algorithm and no result produced with it is a paper number.

Spike function, x = u - theta: forward ``s = 1[x > 0]`` (``>=`` under the ``reference`` preset),
backward ``ds/dx := h(x; w, a)`` with window ``w > 0`` and asymmetry ``a`` in [0, 0.9]
(``wR = w (1 + a)`` above threshold, ``wL = w (1 - a)`` below).  Every shape has area 1 for every
``a`` and satisfies ``h(d) >= h(-d)`` for ``d > 0``; ``a = 0`` is the symmetric version:

=================  ==============================================================================
``asym_triangle``  (1/w) max(0, 1 - x/wR) for x >= 0, (1/w) max(0, 1 + x/wL) for x < 0; peak 1/w
``asym_rect``      1/w on [-wL/2, wR/2], else 0                       (w is a full width here)
``asym_sigmoid``   (1/w) 4 s(x/c) (1 - s(x/c)), c = wR/4 (x >= 0), wL/4 (x < 0), s the logistic
``shifted``        (1/w) max(0, 1 - |x - d|/w), d = a w/2   (symmetric triangle moved up by d)
=================  ==============================================================================

Windows are stored **in units of the threshold theta** (spec: w0 = 0.5 theta, w_min = 0.2 theta,
w_max = 2 theta); the window used at a call is ``w_t[step] * theta`` with theta read from the
``neuron`` in the call context (1 when there is none).

Adaptive window (a2sg.md section 3), one controller per surrogate instance, i.e. per spiking layer
(``neuron_factory`` builds a fresh surrogate per neuron), state in persistent buffers:
``log_w_base``, ``w_t[T]``, ``sgv_ref``, ``calibrated``, ``sgv_ema``, ``tgc_ema``, ``std_ema[T]``,
``a2sg_step`` (optimiser steps seen) and ``num_controller_steps``.  Statistics, fp32, no_grad,
on detached tensors, taken on the forward before every ``update_every``-th optimiser step:

- SGV = mean_t [ std(h(x_t)) / (mean(h(x_t)) + 1e-8) ], population std and mean over batch x
  neurons, h with the window used at that call (``sgv_source="grad"``: |dL/du_t| instead of h);
- dL/du_t from tensor hooks on the membrane ``mem`` of the context, registered only on those
  forwards, kept normalised in bf16 until all T have fired, then reduced to the T x T cosine
  matrix and freed;  TGC = mean_{t<t'} cos(dL/du_t, dL/du_t'),
  c[t] = mean_{t' != t} cos(dL/du_t, dL/du_t')  (T = 1: TGC := tgc_target, c := 1);
- mode ``sgv_tgc``: during the first ``calib_epochs`` epochs ``sgv_ref`` is the EMA of SGV
  (no window change); then it is frozen and, every controller step::

      e          = rho1 (SGV / sgv_ref - 1) + rho2 (tgc_target - TGC)
      log_w_base = clamp(log_w_base + eta_w tanh(e), log w_min, log w_max)
      w_t[t]     = clamp(exp(log_w_base) (1 + gamma_t (1 - c[t])), w_min, w_max)

  (``temporal_mod=False``: gamma_t = 0);
- mode ``memstat``: on every training forward ``std_ema[t] <- (1 - m) std_ema[t] + m std(u_t)/theta``
  and ``w_t[t] = clamp(kappa std_ema[t], w_min, w_max)``;
- mode ``none``: w = w0 (baselines).

SGV/TGC are measured (and logged in ``sgv_ema``/``tgc_ema``) in every mode, so the fixed arms
report them too (a2sg.md section 8.1); only ``sgv_tgc`` acts on them.  The window used at a call
is the one in force before that call's statistics.  Granularity: ``layer_time`` (default) keeps
one window per timestep; ``layer`` uses one window for all timesteps (the mean over t of the
per-step windows); ``layer_channel`` / ``layer_channel_time`` do the same per channel (statistics,
``log_w_base``, ``sgv_ref`` per channel along ``channel_dim`` of the per-step input).

Sizes: the [T] (and channel) dimensions of the buffers are sized from the calls (a step index
beyond the current size appends rows at the base window; the channel count is taken from the first
call), and ``load_state_dict`` resizes them to the checkpoint's, so a fresh model loads any
checkpoint.  No ``num_steps`` option is needed.

Context: our neurons call ``surrogate(x, mem=u, step=t, neuron=self)``.  Without ``step`` (stock
``snntorch.Leaky`` passes only ``mem - threshold``; our LIF in single-step mode) the fixed window
w0 (times theta, 1 without a neuron) is used and no statistics are taken; without ``mem`` the
gradient statistics are missing and controller steps are skipped.  Training loops other than
``repro.engine.train`` must call ``on_epoch_start(epoch)`` and ``after_optimizer_step(step)``.
Under torch.distributed, SGV, TGC and c (and memstat's std) are all-reduced (mean), so every
replica keeps the same windows.  With gradient accumulation the last forward before the optimiser
step supplies the statistics.  ``tgc_source="weight_grad"`` [reconstructed, the spec's diagnostic-only
variant]: TGC and c from the cosines between the per-timestep gradients dL/dW_t of the conv / linear
feeding the layer (its weight rows per output channel for the per-channel granularities), taken from
a hook on that layer's output on controller steps.  Nothing is learned by gradient descent: w and
a get no gradient; h is written with differentiable ops, so Hessian-vector products work.
"""
from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .base import Surrogate

EPS = 1e-8


def asym_triangle(x: Tensor, w, a: float) -> Tensor:
    """(1/w) max(0, 1 - x/wR) above threshold, (1/w) max(0, 1 + x/wL) below [reconstructed]."""
    right = torch.clamp(1 - x / (w * (1 + a)), min=0)
    left = torch.clamp(1 + x / (w * (1 - a)), min=0)
    return torch.where(x >= 0, right, left) / w


def asym_rect(x: Tensor, w, a: float) -> Tensor:
    """1/w on [-wL/2, wR/2] [reconstructed]."""
    inside = (x >= -w * (1 - a) / 2) & (x <= w * (1 + a) / 2)
    return inside.to(x.dtype) / w


def asym_sigmoid(x: Tensor, w, a: float) -> Tensor:
    """(1/w) 4 s(x/c)(1 - s(x/c)), c = wR/4 above and wL/4 below threshold [reconstructed].
    1 - s(z) is computed as s(-z), which keeps the positive tail accurate in fp32."""
    z = x / torch.where(x >= 0, w * (1 + a) / 4, w * (1 - a) / 4)
    return 4 * torch.sigmoid(z) * torch.sigmoid(-z) / w


def shifted(x: Tensor, w, a: float) -> Tensor:
    """Symmetric triangle moved up by a w/2: (1/w) max(0, 1 - |x - a w/2|/w) [reconstructed]."""
    return torch.clamp(1 - (x - a * w / 2).abs() / w, min=0) / w


SHAPES: dict[str, Callable[..., Tensor]] = {
    f.__name__: f for f in (asym_triangle, asym_rect, asym_sigmoid, shifted)
}
ADAPT_MODES = ("none", "sgv_tgc", "memstat")
GRANULARITIES = ("layer", "layer_time", "layer_channel", "layer_channel_time")
SGV_SOURCES = ("surrogate", "grad")
TGC_SOURCES = ("membrane_grad", "weight_grad")
WINDOW_BUFFERS = ("log_w_base", "sgv_ref", "sgv_ema", "tgc_ema", "w_t", "std_ema")


def _choice(name: str, value: str, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"a2sg: {name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _coefficient_of_variation(values: Tensor) -> Tensor:
    """std / (mean + 1e-8) along the last dim (population std)."""
    return values.std(-1, correction=0) / (values.mean(-1) + EPS)


def _world_mean(values: Tensor) -> Tensor:
    """All-reduce (mean) across processes when torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def _threshold(neuron: Any) -> float:
    theta = getattr(neuron, "threshold", 1.0) if neuron is not None else 1.0
    if isinstance(theta, Tensor) and theta.numel() != 1:
        raise ValueError(f"a2sg needs a scalar neuron threshold, got shape {tuple(theta.shape)}")
    return float(theta)


class GradientObservation:
    """Statistics of one training forward on a controller step.

    ``add_step`` (forward, per timestep) stores the forward SGV term and registers a hook on the
    membrane; the hooks store the normalised dL/du_t in bf16 and, once every registered hook has
    fired, reduce them to the per-unit cosine matrix ``gram[U, T, T]`` and free them.  With
    ``from_weights`` (``tgc_source="weight_grad"``) the membrane hooks serve SGV only (``sgv_source="grad"``)
    and ``add_weight_grads`` gives the per-timestep weight gradients that make ``gram``.
    """

    def __init__(self, per_unit: Callable[[Tensor], Tensor], sgv_from_grad: bool, from_weights: bool = False):
        self.per_unit, self.sgv_from_grad, self.from_weights = per_unit, sgv_from_grad, from_weights
        self.sgv_terms: dict[int, Tensor] = {}
        self.deltas: dict[int, Tensor] = {}
        self.hooked: set[int] = set()
        self.gram: Tensor | None = None

    def add_step(self, step: int, h: Tensor | None, mem: Tensor | None,
                 register: Callable[[Callable[[Tensor], None]], None] | None = None) -> None:
        """``register``: the fused path's stand-in for ``mem.register_hook`` (``Surrogate.observe``)."""
        if h is not None:
            self.sgv_terms[step] = _coefficient_of_variation(self.per_unit(h))
        if self.from_weights and not self.sgv_from_grad:
            return
        callback = lambda grad, step=step: self._on_grad(step, grad)  # noqa: E731
        if register is not None:
            self.hooked.add(step)
            register(callback)
        elif mem is not None and mem.requires_grad:
            self.hooked.add(step)
            mem.register_hook(callback)

    @torch.no_grad()
    def _on_grad(self, step: int, grad: Tensor) -> None:
        delta = self.per_unit(grad.detach().float())
        if self.sgv_from_grad:
            self.sgv_terms[step] = _coefficient_of_variation(delta.abs())
        if not self.from_weights:
            self.deltas[step] = _unit_normalised(delta).to(torch.bfloat16)
            if set(self.deltas) == self.hooked:
                self.gram, self.deltas = _cosine_gram(self.deltas), {}

    @torch.no_grad()
    def add_weight_grads(self, rows: list[Tensor]) -> None:
        """Per-timestep gradients of the feeding weight as rows [U, N] (U = output channels or 1)."""
        self.gram = _cosine_gram({t: _unit_normalised(row) for t, row in enumerate(rows)})

    def statistics(self, tgc_target: float) -> tuple[Tensor, Tensor, Tensor] | None:
        """(SGV[U], TGC[U], c[T, U]), or None if a hook did not fire (no gradient reached u)."""
        if self.gram is None or not self.sgv_terms or (self.hooked and set(self.sgv_terms) != self.hooked):
            return None
        sgv = torch.stack([self.sgv_terms[t] for t in sorted(self.sgv_terms)]).mean(0)
        units, steps, _ = self.gram.shape
        if steps == 1:
            return sgv, torch.full_like(sgv, tgc_target), torch.ones(1, units, device=sgv.device)
        upper = torch.triu_indices(steps, steps, 1)
        tgc = self.gram[:, upper[0], upper[1]].mean(-1)
        c = (self.gram.sum(-1) - self.gram.diagonal(dim1=1, dim2=2)) / (steps - 1)
        return sgv, tgc, c.T


def _unit_normalised(delta: Tensor) -> Tensor:
    return delta / torch.linalg.vector_norm(delta, dim=-1, keepdim=True).clamp_min(1e-12)


def _cosine_gram(deltas: dict[int, Tensor]) -> Tensor:
    """gram[U, T, T] of unit-normalised rows deltas[t][U, N] (1 on the diagonal)."""
    steps = sorted(deltas)
    first = deltas[steps[0]]
    gram = torch.ones(first.shape[0], len(steps), len(steps), device=first.device)
    for i, t in enumerate(steps):
        for j in range(i + 1, len(steps)):
            gram[:, i, j] = gram[:, j, i] = (deltas[t].float() * deltas[steps[j]].float()).sum(-1)
    return gram


def per_step_weight_grads(layer: nn.Module, inputs: Tensor, grad_output: Tensor, steps: int) -> list[Tensor]:
    """dL/dW of each timestep's slice of the folded [T*B, ...] batch, for a Conv2d or Linear ``layer``."""
    grads = []
    for x, g in zip(inputs.float().chunk(steps), grad_output.float().chunk(steps)):
        if isinstance(layer, nn.Conv2d):
            grads.append(torch.nn.grad.conv2d_weight(x, layer.weight.shape, g, layer.stride, layer.padding,
                                                     layer.dilation, layer.groups))
        else:
            grads.append(g.flatten(0, -2).T @ x.flatten(0, -2))
    return grads


class A2SG(Surrogate):
    """Adaptive and asymmetric SG; see the module docstring for the equations.  [reconstructed]

    Ablation arms (a2sg.md section 9): fixed-symmetric ``adapt="none", asym=0``; fixed-asymmetric
    ``adapt="none", asym=0.5``; adaptive-symmetric ``adapt="sgv_tgc", asym=0``; A2SG (default).

    Args:
        shape: ``asym_triangle`` | ``asym_rect`` | ``asym_sigmoid`` | ``shifted``.
        asym: a in [0, 0.9]; 0 = symmetric.
        adapt: ``sgv_tgc`` | ``memstat`` | ``none`` (None, as the CLI parses ``none``, means ``none``).
        granularity: ``layer`` | ``layer_time`` | ``layer_channel`` | ``layer_channel_time``.
        temporal_mod: apply the per-timestep factor (1 + gamma_t (1 - c[t])) (``sgv_tgc``).
        sgv_source: ``surrogate`` (h(x)) | ``grad`` (|dL/du|).
        tgc_source: ``membrane_grad`` (dL/du[t]) | ``weight_grad`` (per-timestep gradients of the feeding
            conv / linear weight, ``neuron.input_layer``; diagnostic-only, T weight-gradient products).
        w0, w_min, w_max: initial, smallest and largest window, in units of the threshold.
        eta_w, rho1, rho2, tgc_target, gamma_t: controller constants (see the update rule).
        update_every: K, optimiser steps between controller steps.
        calib_epochs: epochs that only calibrate ``sgv_ref``.
        ema_momentum: m of every EMA (``sgv_ref`` calibration, ``std_ema``, ``sgv_ema``, ``tgc_ema``);
            an EMA starts at its first observation, except ``std_ema``, which starts at w0/kappa.
        kappa: memstat's window per unit of membrane std.
        channel_dim: channel dimension of the per-step input (per-channel granularities).
    """

    def __init__(
        self,
        shape: str = "asym_triangle",
        asym: float = 0.5,
        adapt: str | None = "sgv_tgc",
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
        update_every: int = 10,
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
        checks = [
            (0.0 <= asym <= 0.9, f"asym must be in [0, 0.9] (wL = w (1 - asym) > 0), got {asym}"),
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
        self.register_buffer("w_t", torch.zeros(0, *units))  # rows appended per timestep
        self.register_buffer("std_ema", torch.zeros(0, *units))
        self.register_buffer("calibrated", torch.tensor(False))
        self.register_buffer("a2sg_step", torch.tensor(0, dtype=torch.long))
        self.register_buffer("num_controller_steps", torch.tensor(0, dtype=torch.long))
        self._steps = 0  # mirror of a2sg_step, so that forward never synchronises with the device
        self._weight_hook = None  # tgc_source="weight_grad": forward hook on the feeding conv / linear
        self._observation: GradientObservation | None = None
        self._frozen = False

    # ----------------------------------------------------------------- per-call window
    def call_params(self, x: Tensor, step: int | None = None, neuron: Any = None, **context: Any) -> dict:
        theta = _threshold(neuron)
        if step is None:
            return {"w": self.w0 * theta, "a": self.asym}
        self._ensure_size(x, step)
        w = self.w_t[step]
        if self.per_channel:
            w = w.reshape(-1, *[1] * (x.dim() - self.channel_dim % x.dim() - 1))
        return {"w": w.detach() * theta, "a": self.asym}  # a new tensor: later buffer updates do not reach it

    def observe(self, x: Tensor, params: dict, context: dict) -> None:
        super().observe(x, params, context)
        step = context.get("step")
        backward_follows = torch.is_grad_enabled() or "register_membrane_grad" in context
        if step is not None and self.training and backward_follows and not self._frozen:
            with torch.no_grad():
                self._observe(x, context, step, params, _threshold(context.get("neuron")))

    def _per_unit(self, values: Tensor) -> Tensor:
        """[U, N]: one row per channel (per-channel granularities) or a single row."""
        if self.per_channel:
            return values.movedim(self.channel_dim, 0).flatten(1)
        return values.reshape(1, -1)

    def _units(self, values: Tensor) -> Tensor:
        """[..., U] -> [..., C] or [...] (the buffers' unit shape)."""
        return values if self.per_channel else values.squeeze(-1)

    def _observe(self, x: Tensor, context: dict, step: int, params: dict, theta: float) -> None:
        mem = context.get("mem")
        if self.adapt == "memstat" and mem is not None:
            std = _world_mean(self._units(self._per_unit(mem.detach().float()).std(-1, correction=0)) / theta)
            self.std_ema[step] = (1 - self.ema_momentum) * self.std_ema[step] + self.ema_momentum * std
            self._set_windows((self.kappa * self.std_ema).clamp(self.w_min, self.w_max))
        if self.tgc_source == "weight_grad" and self._weight_hook is None:
            self._hook_weight_layer(context.get("neuron"))
        if self._controller_step_next():
            if step == 0 or self._observation is None:
                self._observation = GradientObservation(self._per_unit, self.sgv_source == "grad",
                                                        from_weights=self.tgc_source == "weight_grad")
            h = self.shape(x.detach().float(), **params) if self.sgv_source == "surrogate" else None
            self._observation.add_step(step, h, mem, context.get("register_membrane_grad"))

    def _controller_step_next(self) -> bool:
        return (self._steps + 1) % self.update_every == 0

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
        if self._observation is not None and self._observation.sgv_terms:
            grads = per_step_weight_grads(layer, inputs, grad, len(self._observation.sgv_terms))
            self._observation.add_weight_grads([g.flatten(1) if self.per_channel else g.reshape(1, -1) for g in grads])

    def _set_windows(self, windows: Tensor) -> None:
        """windows[T', U...] (already clamped) -> w_t[:T']; ``layer``/``layer_channel``: mean over t."""
        if not self.per_step:
            windows = windows.mean(0, keepdim=True).expand_as(windows)
        self.w_t[: windows.shape[0]] = windows

    # ----------------------------------------------------------------- controller
    def on_epoch_start(self, epoch: int) -> None:
        """Engine hook: after ``calib_epochs`` epochs ``sgv_ref`` is frozen and updates start."""
        if not self._frozen and epoch >= self.calib_epochs:
            self.calibrated.fill_(True)

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """Engine hook (``step`` is the engine's count; this module keeps its own ``a2sg_step``)."""
        if self._frozen:
            return
        self._steps += 1
        self.a2sg_step.fill_(self._steps)
        observation, self._observation = self._observation, None
        if self._steps % self.update_every or observation is None:
            return
        stats = observation.statistics(self.tgc_target)
        if stats is None:  # no gradient reached u; replicas run the same graph, so all of them skip
            return
        sgv, tgc, c = stats
        units = sgv.numel()
        packed = _world_mean(torch.cat([sgv, tgc, c.flatten()]))
        self.control(self._units(packed[:units]), self._units(packed[units:2 * units]),
                     self._units(packed[2 * units:].reshape(-1, units)))

    @torch.no_grad()
    def control(self, sgv: Tensor, tgc: Tensor, c: Tensor) -> None:
        """One controller step from (reduced) statistics SGV[U], TGC[U], c[T, U] (U = () or (C,))."""
        first = int(self.num_controller_steps) == 0
        self._ema(self.sgv_ema, sgv, first)
        self._ema(self.tgc_ema, tgc, first)
        if not self.calibrated:
            self._ema(self.sgv_ref, sgv, first)
        elif self.adapt == "sgv_tgc":
            if first:  # calibrated without any sample (calib_epochs=0 or a short epoch)
                self.sgv_ref.copy_(sgv)
            error = self.rho1 * (sgv / self.sgv_ref.clamp_min(EPS) - 1) + self.rho2 * (self.tgc_target - tgc)
            self.log_w_base.copy_((self.log_w_base + self.eta_w * torch.tanh(error))
                                  .clamp(math.log(self.w_min), math.log(self.w_max)))
            windows = self.log_w_base.exp() * (1 + self.gamma_t * (1 - c))
            self._set_windows(windows.clamp(self.w_min, self.w_max))
        self.num_controller_steps += 1

    def _ema(self, buffer: Tensor, value: Tensor, first: bool) -> None:
        buffer.copy_(value if first else (1 - self.ema_momentum) * buffer + self.ema_momentum * value)

    @contextmanager
    def freeze_controller(self) -> Iterator["A2SG"]:
        """No statistics, hooks or updates inside (e.g. for Hessian diagnostics); windows stay as they are."""
        previous, self._frozen = self._frozen, True
        try:
            yield self
        finally:
            self._frozen = previous

    # ----------------------------------------------------------------- buffer sizes
    def _ensure_size(self, x: Tensor, step: int) -> None:
        """Size the channel dimension from the first call and append timestep rows as steps arrive."""
        if self.per_channel:
            channels = x.shape[self.channel_dim]
            if self.log_w_base.numel() == 0 and self.w_t.shape[0] == 0:
                for name in ("sgv_ref", "sgv_ema", "tgc_ema"):
                    setattr(self, name, getattr(self, name).new_zeros(channels))
                self.log_w_base = self.log_w_base.new_full((channels,), math.log(self.w0))
                self.w_t = self.w_t.new_zeros(0, channels)
                self.std_ema = self.std_ema.new_zeros(0, channels)
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
        self._steps = int(self.a2sg_step)

    def extra_repr(self) -> str:
        return (f"shape={self.shape_name}, asym={self.asym}, adapt={self.adapt}, granularity={self.granularity}, "
                f"w0={self.w0}, w_min={self.w_min}, w_max={self.w_max}, update_every={self.update_every}")


@contextmanager
def frozen_controllers(model: nn.Module) -> Iterator[nn.Module]:
    """``freeze_controller()`` on every A2SG surrogate of ``model``."""
    with ExitStack() as stack:
        for module in model.modules():
            if isinstance(module, A2SG):
                stack.enter_context(module.freeze_controller())
        yield model
