"""Diagnostics collected while a model runs (docs/diagnostics.md sections "Firing rate",
"Gradient-window occupancy", "Membrane-potential histograms", "Method state" and "Energy").

- ``FiringRateMonitor``: per spiking layer, firing rate = sum |S| / (neurons x T x samples)
  (|S| so multi-level and signed spikes count their events); with ``per_step=True`` also per
  timestep, sum_{B, neurons} |S[t]| / (neurons x samples).
- ``WindowMonitor``: per spiking layer and timestep, the proportion of membrane potentials inside
  the surrogate's gradient window, the per-call surrogate parameters actually used (adaptive
  widths), and optionally membrane-potential histograms with the window overlaid.
- ``method_state``: the small buffers and parameters of a model outside Conv/Linear/norm layers
  (running thresholds, adaptive windows, SGV/TGC statistics, learnable sharpness, decays), found
  generically so any method's state shows up without this module knowing its names.
- ``saved_tensor_bytes``: the bytes a forward keeps for backward (the stored activations; the
  benchmarks' memory column and the fused paths' tests).
- ``collect_diagnostics``: all of the above plus energy (``repro.energy``) and optionally sharpness
  (``repro.sharpness``) on a few batches, as a JSON-serialisable dict.

Every monitor accumulates device tensors in hooks or surrogate observers (no host-device
synchronisation while the model runs) and converts them once when read.

Gradient window [reconstructed], on x = u - theta_t with each method's own per-call parameters
(``surrogate.shape(x, **params)`` is the derivative h(x) used for that layer and step):
    compact-support shapes (rectangular, triangle and their subclasses such as TGO and MPD-AGL, the
    learnable ``RectTLSG``, A2SG with a compact ``shape_name``, or any surrogate that sets
    ``compact_support = True``):  inside iff h(x) > 0
    smooth shapes:  inside iff h(x) >= ``window_fraction`` * h(0)   (default 0.5: full width at half
    maximum; the peak is taken at the threshold, x = 0, true for every smooth shape in the suite)
``window_rule="support"`` / ``"fraction"`` force one rule for every surrogate.  A surrogate that
does not call its observers (one that bypasses ``Surrogate.forward``) or a plain callable is
reported as ``None`` ("n/a").
"""
from __future__ import annotations

import itertools
import weakref
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .energy import EnergyMeter
from .models import SpikingNeuron, TDBatchNorm, spiking_layers
from .surrogates import Surrogate
from .surrogates.classic import Rectangular, Triangle

WINDOW_RULES = ("auto", "support", "fraction")
COMPACT_SUPPORT_SHAPES = (Rectangular, Triangle)
COMPACT_SUPPORT_CLASS_NAMES = ("RectTLSG",)  # surrogates/learnable.py
# A2SG's compact shapes, by ``shape_name`` (surrogates/a2sg_shapes.py)
COMPACT_SUPPORT_SHAPE_NAMES = ("ramp", "triangle", "box", "asym_triangle", "asym_rect", "shifted")
MEASURES = ("firing_rate", "window", "histogram", "method_state", "energy", "sharpness", "landscape")
DEFAULT_MEASURES = ("firing_rate", "window", "histogram", "method_state", "energy")
MODES = ("eval", "train")
DERIVED_STATE = ("decay", "threshold", "k")
STANDARD_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm,
                   nn.GroupNorm, TDBatchNorm)


class FiringRateMonitor:
    """Context manager: ``with FiringRateMonitor(model) as monitor: ...; monitor.rates()``.

    ``per_step=True`` also accumulates per-timestep sums (outputs are ``[T, B, ...]``); read them
    with ``rates_per_step()``.
    """

    def __init__(self, model: nn.Module, per_step: bool = False):
        self.layers = spiking_layers(model)
        self.per_step = per_step
        self.spikes: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.step_spikes: dict[str, Tensor] = {}
        self.step_counts: dict[str, int] = {}
        self._handles = []

    def __enter__(self) -> "FiringRateMonitor":
        for name, module in self.layers:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module, inputs, output):
            total = output.detach().abs().sum(dtype=torch.float64)
            self.spikes[name] = self.spikes[name] + total if name in self.spikes else total
            self.counts[name] = self.counts.get(name, 0) + output.numel()
            if self.per_step and output.dim() >= 2:
                per_step = output.detach().abs().flatten(1).sum(1, dtype=torch.float64)
                previous = self.step_spikes.get(name)
                self.step_spikes[name] = per_step if previous is None else previous + per_step
                self.step_counts[name] = self.step_counts.get(name, 0) + output[0].numel()
        return hook

    def totals(self) -> tuple[Tensor, Tensor]:
        """(spike sums, element counts) per layer as two tensors, for a cross-process reduce."""
        names = [n for n, _ in self.layers if n in self.spikes]
        if not names:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        spikes = torch.stack([self.spikes[n] for n in names])
        counts = torch.tensor([float(self.counts[n]) for n in names], dtype=torch.float64, device=spikes.device)
        return spikes, counts

    def rates(self, spikes: Tensor | None = None, counts: Tensor | None = None) -> dict[str, float]:
        """Per-layer firing rates; pass reduced ``totals()`` to combine processes."""
        if spikes is None:
            spikes, counts = self.totals()
        names = [n for n, _ in self.layers if n in self.spikes]
        return {n: float(r) for n, r in zip(names, (spikes / counts).tolist())}

    def rates_per_step(self) -> dict[str, list[float]]:
        """Per layer, the firing rate at each timestep t = 1..T (needs ``per_step=True``)."""
        return {n: (self.step_spikes[n] / self.step_counts[n]).tolist()
                for n, _ in self.layers if n in self.step_spikes}


def has_compact_support(surrogate: Surrogate) -> bool:
    """A surrogate's own ``compact_support`` flag if it sets one; else whether it is a rectangular or
    triangular shape (or a subclass: TGO, MPD-AGL), the learnable rectangle, or an A2SG surrogate
    with a compact shape (its ``shape_name``)."""
    flag = getattr(surrogate, "compact_support", None)
    if flag is not None:
        return bool(flag)
    return (isinstance(surrogate, COMPACT_SUPPORT_SHAPES) or type(surrogate).__name__ in COMPACT_SUPPORT_CLASS_NAMES
            or getattr(surrogate, "shape_name", None) in COMPACT_SUPPORT_SHAPE_NAMES)


def window_mask(surrogate: Surrogate, x: Tensor, params: dict, rule: str = "auto", fraction: float = 0.5) -> Tensor:
    """Boolean mask of the x = u - theta inside the gradient window (module docstring) [reconstructed]."""
    h = surrogate.shape(x.float(), **params)
    if rule == "support" or (rule == "auto" and has_compact_support(surrogate)):
        return h > 0
    peak = surrogate.shape(torch.zeros((), device=x.device), **params)
    return h >= fraction * peak


def _scalar_mean(value) -> Tensor | None:
    if isinstance(value, Tensor):
        return value.detach().double().mean()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    return None


class WindowMonitor:
    """Context manager that observes every spiking layer's surrogate (``surrogate.observers``).

    Per layer and step it counts the neurons whose x = u - theta is inside the gradient window (see
    the module docstring) and averages every numeric per-call surrogate parameter.  A neuron that
    calls its surrogate several times per step (circulate firing: one call per level and sign, x with
    a leading level dimension) counts as inside when it is inside any of the windows, so the
    proportion is "inside the support of some bump" [reconstructed].  With
    ``histograms=True`` it also histograms the pre-fire membrane u (``neuron.potentials``, recorded
    through ``record_potentials``) over ``value_range`` with ``bins`` bins: all u, the u inside the
    window, the counts below / above the range, and the mean threshold u - x.

    Args:
        model: the model (its ``SpikingNeuron`` layers are observed).
        rule: ``auto`` | ``support`` | ``fraction`` (module docstring).
        fraction: the fraction of the peak for smooth shapes [reconstructed, default 0.5].
        histograms, bins, value_range: membrane histograms (off by default).
    """

    def __init__(self, model: nn.Module, rule: str = "auto", fraction: float = 0.5, histograms: bool = False,
                 bins: int = 100, value_range: Sequence[float] = (-2.0, 3.0)):
        if rule not in WINDOW_RULES:
            raise ValueError(f"window_rule must be one of {WINDOW_RULES}, got {rule!r}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"window_fraction must be in (0, 1], got {fraction}")
        if bins < 1 or not value_range[0] < value_range[1]:
            raise ValueError(f"histogram bins must be >= 1 and range (low, high) with low < high, got {bins} "
                             f"and {tuple(value_range)}")
        self.layers = spiking_layers(model)
        self.rule, self.fraction = rule, float(fraction)
        self.histograms, self.bins = histograms, int(bins)
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.surrogate_names: dict[str, str] = {}
        self.inside: dict[str, dict[int, Tensor]] = {}
        self.total: dict[str, dict[int, int]] = {}
        self.param_sums: dict[str, dict[int, dict[str, Tensor]]] = {}
        self.param_calls: dict[str, dict[int, int]] = {}
        self.hist: dict[str, dict[int, dict[str, Tensor]]] = {}
        self._pending: dict[str, dict[int, tuple[Tensor, Tensor | None]]] = {}  # step -> (mask, x)
        self._observers: list[tuple[Surrogate, Callable]] = []
        self._handles = []
        self._recording: list[tuple[nn.Module, object]] = []

    def __enter__(self) -> "WindowMonitor":
        for name, neuron in self.layers:
            surrogates = [m for m in neuron.modules() if isinstance(m, Surrogate)]
            if surrogates:
                self.surrogate_names[name] = type(surrogates[0]).__name__
            for surrogate in surrogates:
                observer = self._observer(name, neuron)
                surrogate.observers.append(observer)
                self._observers.append((surrogate, observer))
            if self.histograms:
                self._recording.append((neuron, neuron.__dict__.get("record_potentials")))
                neuron.record_potentials = True
            self._handles.append(neuron.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for surrogate, observer in self._observers:
            surrogate.observers.remove(observer)
        self._observers.clear()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for neuron, previous in self._recording:
            if previous is None:
                del neuron.record_potentials  # back to the class default
                neuron.__dict__.pop("potentials", None)
            else:
                neuron.record_potentials = previous
        self._recording.clear()
        self._pending.clear()

    def _observer(self, name: str, neuron: nn.Module):
        def observer(surrogate, x, params, context):
            owner = context.get("neuron")
            if owner is not None and owner is not neuron:
                return
            step = context.get("step") or 0
            with torch.no_grad():
                x = x.detach().float()
                mask = window_mask(surrogate, x, params, self.rule, self.fraction)
                mem = context.get("mem")
                extra = mask.dim() - mem.dim() if isinstance(mem, Tensor) else 0
                if extra > 0 and mask.shape[extra:] == mem.shape:  # one call for several levels
                    mask, x = mask.flatten(0, extra - 1).any(0), None
                pending = self._pending.setdefault(name, {})
                if step in pending and pending[step][0].shape == mask.shape:
                    mask, x = mask | pending[step][0], pending[step][1] if x is None else x
                elif step in pending:
                    self._count(name, step, pending[step][0])
                pending[step] = (mask, x)
                sums = self.param_sums.setdefault(name, {}).setdefault(step, {})
                for key, value in params.items():
                    mean = _scalar_mean(value)
                    if mean is not None:
                        mean = mean.to(mask.device)
                        sums[key] = sums[key] + mean if key in sums else mean
                calls = self.param_calls.setdefault(name, {})
                calls[step] = calls.get(step, 0) + 1
        return observer

    def _count(self, name: str, step: int, mask: Tensor) -> None:
        inside = self.inside.setdefault(name, {})
        count = mask.sum(dtype=torch.float64)
        inside[step] = inside[step] + count if step in inside else count
        totals = self.total.setdefault(name, {})
        totals[step] = totals.get(step, 0) + mask.numel()

    def _forward_hook(self, name: str):
        """At the end of the neuron's forward: count the step masks, then histogram the potentials."""
        def hook(module, inputs, output):
            pending = self._pending.pop(name, {})
            with torch.no_grad():
                for step, (mask, _) in pending.items():
                    self._count(name, step, mask)
                if self.histograms:
                    potentials = module.__dict__.pop("potentials", None) or []
                    for t, u in enumerate(potentials):
                        self._histogram(name, t, u.detach().float(), *pending.get(t, (None, None)))
        return hook

    def _histogram(self, name: str, t: int, u: Tensor, mask: Tensor | None, x: Tensor | None) -> None:
        low, high = self.value_range
        entry = self.hist.setdefault(name, {}).setdefault(t, {
            key: torch.zeros(self.bins if key in ("all", "window") else (), dtype=torch.float64, device=u.device)
            for key in ("all", "window", "below", "above", "threshold", "threshold_calls")})
        entry["all"] += torch.histc(u, self.bins, low, high).double()
        entry["below"] += (u < low).sum()
        entry["above"] += (u > high).sum()
        if mask is not None and mask.shape == u.shape:
            outside = torch.full_like(u, low - 1.0)  # histc ignores values outside the range
            entry["window"] += torch.histc(torch.where(mask, u, outside), self.bins, low, high).double()
        if x is not None and x.shape == u.shape:
            entry["threshold"] += (u - x).mean(dtype=torch.float64)
            entry["threshold_calls"] += 1

    def occupancy(self) -> dict[str, dict | None]:
        """Per layer: ``{"proportion", "per_step", "surrogate"}``, or None where no window was observed."""
        result = {}
        for name, _ in self.layers:
            inside, total = self.inside.get(name), self.total.get(name)
            if not inside:
                result[name] = None
                continue
            steps = sorted(inside)
            counts = torch.stack([inside[t] for t in steps]).cpu()
            sizes = torch.tensor([float(total[t]) for t in steps], dtype=torch.float64)
            result[name] = {"proportion": float(counts.sum() / sizes.sum()), "per_step": (counts / sizes).tolist(),
                            "surrogate": self.surrogate_names.get(name)}
        return result

    def surrogate_parameters(self) -> dict[str, dict[str, list[float]]]:
        """Per layer and parameter name, the mean per-call value at each step (e.g. TGO / MPD-AGL widths)."""
        result = {}
        for name, per_step in self.param_sums.items():
            steps = sorted(per_step)
            keys = sorted({k for t in steps for k in per_step[t]})
            result[name] = {k: [float(per_step[t][k]) / self.param_calls[name][t] if k in per_step[t] else None
                                for t in steps] for k in keys}
        return result

    def histogram_data(self) -> dict:
        """``{"range", "bins", "layers": {name: {"all": [T][bins], "window": [T][bins], "below": [T],
        "above": [T], "threshold": [T] (mean u - x, None where unknown), "window_observed"}}}``;
        the values are numbers of potentials."""
        layers = {}
        for name, per_step in self.hist.items():
            steps = sorted(per_step)
            entry = {key: [per_step[t][key].cpu().tolist() for t in steps]
                     for key in ("all", "window", "below", "above")}
            entry["threshold"] = [float(per_step[t]["threshold"] / per_step[t]["threshold_calls"])
                                  if float(per_step[t]["threshold_calls"]) > 0 else None for t in steps]
            entry["window_observed"] = bool(self.inside.get(name))
            layers[name] = entry
        return {"range": list(self.value_range), "bins": self.bins, "layers": layers}


def method_state(model: nn.Module, max_numel: int = 4096) -> dict[str, float | list]:
    """Buffers and parameters with at most ``max_numel`` elements of every module that is not a
    Conv / Linear / norm layer (neurons, surrogates, controllers), by full name, plus the derived
    values ``DERIVED_STATE`` (``decay``, ``threshold``, a learnable surrogate's ``k``) of neurons and
    surrogates when they are numbers or tensors.  Tolerant by design: it finds DS-ATGO's
    ``running_thr``, A2SG's ``w_t`` / ``sgv_ema`` / ``tgc_ema``, MPD-AGL's ``guard_count``, TLSG's
    ``rho`` and any other registered state without knowing the method."""
    state = {}
    for module_name, module in model.named_modules():
        if isinstance(module, STANDARD_LAYERS):
            continue
        prefix = f"{module_name}." if module_name else ""
        tensors = itertools.chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False))
        for name, tensor in tensors:
            if tensor is not None and tensor.numel() <= max_numel:
                state[prefix + name] = tensor.detach().cpu().tolist()
        if isinstance(module, (SpikingNeuron, Surrogate)):
            for attribute in DERIVED_STATE:
                value = getattr(module, attribute, None)
                if isinstance(value, Tensor) and value.numel() <= max_numel:
                    state[prefix + attribute] = value.detach().cpu().tolist()
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    state[prefix + attribute] = float(value)
    return state


@contextmanager
def frozen_state(model: nn.Module, mode: str = "eval") -> Iterator[Callable[[], None]]:
    """Run ``model`` in ``mode`` (``eval`` | ``train``: BN batch statistics) and give back a
    ``restore()`` callable that resets every buffer (BN running statistics, running thresholds,
    controller state) to its value on entry; on exit the buffers and the train/eval mode are restored,
    so diagnostics leave no trace in training."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    saved = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    was_training = model.training

    def restore() -> None:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in saved and buffer.shape == saved[name].shape:
                    buffer.copy_(saved[name])
                elif name in saved:  # a buffer resized at the first forward (e.g. per-channel running_thr)
                    owner, _, attribute = name.rpartition(".")
                    model.get_submodule(owner)._buffers[attribute] = saved[name].clone()

    model.train(mode == "train")
    try:
        yield restore
    finally:
        restore()
        model.train(was_training)


class _Saved:
    """What the graph keeps for one saved tensor while measuring (it dies with the graph's node)."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def saved_tensor_bytes(run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(output of ``run()``, bytes of the distinct storages that the graph of the output keeps for
    backward).  Tensors saved by graph branches discarded during the forward (e.g. snnTorch's detached
    reset) are freed with them and not counted."""
    saved: list[weakref.ref] = []

    def pack(tensor: torch.Tensor) -> _Saved:
        holder = _Saved(tensor)
        saved.append(weakref.ref(holder))
        return holder

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda holder: holder.tensor):
        output = run()
    storages = {}
    for ref in saved:
        holder = ref()
        if holder is not None:
            storage = holder.tensor.untyped_storage()
            storages[(holder.tensor.device, storage.data_ptr())] = storage.nbytes()
    return output, sum(storages.values())


def batch_images(batch) -> tuple[Tensor, Tensor | None, int]:
    """(inputs, targets, number of images) of a batch ``(inputs, targets)`` or a bare input tensor
    ([B, ...] static or [T, B, ...] frames when no targets are given)."""
    if isinstance(batch, (tuple, list)):
        inputs, targets = batch[0], batch[1]
        return inputs, targets, len(targets)
    return batch, None, batch.shape[0] if batch.dim() <= 4 else batch.shape[1]


def collect_diagnostics(model: nn.Module, batches: Iterable, measures: Sequence[str] = DEFAULT_MEASURES,
                        mode: str = "eval", max_batches: int | None = None, window_rule: str = "auto",
                        window_fraction: float = 0.5, histogram_bins: int = 100,
                        histogram_range: Sequence[float] = (-2.0, 3.0), energy_options: dict | None = None,
                        loss_fn: Callable | None = None, sharpness_options: dict | None = None,
                        landscape_options: dict | None = None, max_state_numel: int = 4096) -> dict:
    """Run ``model`` on ``batches`` and return the chosen measures as a JSON-serialisable dict.

    Args:
        model: the (unwrapped) model; its buffers and train/eval mode are restored afterwards.
        batches: iterable of ``(inputs, targets)`` (a DataLoader, or a list of a few batches);
            inputs are moved to the model's device.
        measures: any of ``MEASURES``: ``firing_rate`` (per layer and per timestep), ``window``
            (gradient-window occupancy per layer and timestep, per-call surrogate parameters),
            ``histogram`` (membrane histograms with the window), ``method_state``, ``energy``,
            ``sharpness`` (top Hessian eigenvalue; needs gradients, ``sharpness_options`` are passed
            to ``repro.sharpness.model_sharpness``) and ``landscape`` (loss slices,
            ``landscape_options`` to ``repro.sharpness.model_landscape``).  The first five share one
            forward pass per batch under ``torch.no_grad``.
        mode: ``eval`` (default; BN running statistics) or ``train`` (BN batch statistics, as
            DS-ATGO's Fig. 11 protocol); every buffer is restored after each batch, so running
            thresholds and BN statistics are frozen.  Sharpness and landscape always use eval mode.
        max_batches: use at most this many batches.
        window_rule, window_fraction: the gradient window (module docstring).
        histogram_bins, histogram_range: membrane-potential histograms.
        energy_options: ``count_matmul`` for ``EnergyMeter``, and ``e_mac_pj``, ``e_ac_pj``,
            ``enc_times_T``, ``encoder_layers`` for ``EnergyMeter.report``.
        loss_fn: ``loss(logits[T, B, ...], targets)`` for sharpness / landscape (default: CE of the
            mean logits).
        max_state_numel: largest buffer / parameter reported by ``method_state``.

    Returns:
        ``{"mode", "batches", "images", "num_steps", "measures", ...}`` plus one entry per measure:
        ``firing_rate`` {layer: rate}, ``firing_rate_per_step`` {layer: [T]}, ``window`` {layer:
        {proportion, per_step, surrogate} or None}, ``window_rule``, ``surrogate_parameters``,
        ``histograms``, ``method_state``, ``energy`` (see ``EnergyMeter.report``), ``sharpness``,
        ``landscape``.
    """
    from .sharpness import model_landscape, model_sharpness  # local: sharpness imports this module

    unknown = sorted(set(measures) - set(MEASURES))
    if unknown:
        raise ValueError(f"unknown diagnostics measure(s) {unknown}; choose from {MEASURES}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    batches = [batch for batch in itertools.islice(batches, max_batches)]
    if not batches:
        raise ValueError("collect_diagnostics needs at least one batch")
    energy_options = dict(energy_options or {})
    count_matmul = energy_options.pop("count_matmul", True)
    result: dict = {"mode": mode, "batches": len(batches), "measures": list(measures)}
    forward_measures = {"firing_rate", "window", "histogram", "method_state", "energy"} & set(measures)
    if forward_measures:
        firing = FiringRateMonitor(model, per_step=True)
        window = WindowMonitor(model, window_rule, window_fraction, "histogram" in measures, histogram_bins,
                               histogram_range)
        energy = EnergyMeter(model, count_matmul=count_matmul)
        images = 0
        with ExitStack() as stack:
            restore = stack.enter_context(frozen_state(model, mode))
            stack.enter_context(torch.no_grad())
            stack.enter_context(firing)
            if {"window", "histogram"} & set(measures):
                stack.enter_context(window)
            if "energy" in measures:
                stack.enter_context(energy)
            for batch in batches:
                inputs, _, count = batch_images(batch)
                model(inputs.to(device))
                images += count
                restore()
        per_step = firing.rates_per_step()
        num_steps = len(next(iter(per_step.values()))) if per_step else getattr(model, "num_steps", 1)
        result.update(images=images, num_steps=num_steps)
        if "firing_rate" in measures:
            result["firing_rate"] = firing.rates()
            result["firing_rate_per_step"] = per_step
        if "window" in measures:
            result["window"] = window.occupancy()
            result["window_rule"] = {"rule": window_rule, "fraction": window_fraction}
            result["surrogate_parameters"] = window.surrogate_parameters()
        if "histogram" in measures:
            result["histograms"] = window.histogram_data()
        if "method_state" in measures:
            result["method_state"] = method_state(model, max_state_numel)
        if "energy" in measures:
            result["energy"] = energy.report(images, num_steps, **energy_options)
    if "sharpness" in measures:
        result["sharpness"] = model_sharpness(model, batches, loss_fn, **(sharpness_options or {}))
    if "landscape" in measures:
        result["landscape"] = model_landscape(model, batches, loss_fn, **(landscape_options or {}))
    return result
