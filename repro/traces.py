"""Spikes and membrane potentials of a few samples over time (docs/diagnostics.md, "Spike rasters and
membrane traces"): what a spike raster and a membrane-trace plot show.

``record_traces(model, inputs)`` runs one eval-mode forward (buffers restored, no gradients) and returns,
per spiking layer:

- ``spikes`` [T][samples][neurons]: the layer's output s_t (0 = no event; multi-level or signed spikes
  keep their value) for ``neurons`` neurons spread evenly over the flattened layer, the same for every
  sample (``indices``);
- for the ``traced`` most active of those neurons in sample 0: ``potential`` [T][traced], the pre-fire
  membrane u_t (``record_potentials``); ``threshold`` [T][traced], theta_t = u_t - x_t from the
  surrogate's call (x = u - theta, the argument of the surrogate), None where the surrogate is not called
  as ``Surrogate.forward`` or is called on several levels at once (circulate firing);
- ``window`` [T] of (low, high): the gradient window as an interval of x = u - theta (inside: the rule of
  ``repro.diagnostics.window_mask``), for the layer's per-call surrogate parameters averaged over neurons
  [reconstructed: per-neuron widths are shown by their mean], None where unobserved.  On the u axis the
  window is [theta_t + low, theta_t + high].
"""
from __future__ import annotations

import itertools
from contextlib import ExitStack

import torch
from torch import Tensor, nn

from .diagnostics import frozen_state, window_mask
from .models import spiking_layers
from .surrogates import Surrogate

WINDOW_GRID = torch.linspace(-4.0, 4.0, 8001)  # x = u - theta, in units of the membrane


def _mean_params(params: dict) -> dict:
    """Per-call parameters with tensors replaced by their mean (one window for the whole layer)."""
    return {k: (float(v.detach().float().mean()) if isinstance(v, Tensor) else v) for k, v in params.items()}


def window_interval(surrogate: Surrogate, params: dict, rule: str = "auto", fraction: float = 0.5):
    """(low, high) of x = u - theta inside the gradient window on ``WINDOW_GRID``, or None if empty."""
    inside = WINDOW_GRID[window_mask(surrogate, WINDOW_GRID, _mean_params(params), rule, fraction).cpu()]
    return (float(inside.min()), float(inside.max())) if inside.numel() else None


class _LayerTrace:
    def __init__(self, neurons: int):
        self.neurons = neurons
        self.spikes: Tensor | None = None
        self.potentials: list[Tensor] = []
        self.x: dict[int, Tensor] = {}
        self.window: dict[int, tuple | None] = {}


@torch.no_grad()
def record_traces(model: nn.Module, inputs: Tensor, neurons: int = 64, traced: int = 3, window_rule: str = "auto",
                  window_fraction: float = 0.5) -> dict[str, dict]:
    """See the module docstring; ``inputs`` is one model-ready batch (its samples are the traced ones)."""
    layers = spiking_layers(model)
    traces = {name: _LayerTrace(neurons) for name, _ in layers}

    def observer_for(name, neuron):
        def observer(surrogate, x, params, context):
            owner = context.get("neuron")
            if owner is not None and owner is not neuron:
                return
            step = context.get("step") or 0
            trace = traces[name]
            if step not in trace.x:  # first call of the step (circulate firing: the first level)
                trace.x[step] = x.detach().float()
                trace.window[step] = window_interval(surrogate, params, window_rule, window_fraction)
        return observer

    def hook_for(name):
        def hook(module, args, output):
            trace = traces[name]
            trace.spikes = output.detach().float()
            trace.potentials = [u.detach().float() for u in module.__dict__.pop("potentials", None) or []]
        return hook

    with ExitStack() as stack:
        stack.enter_context(frozen_state(model, "eval"))
        for name, neuron in layers:
            for surrogate in (m for m in neuron.modules() if isinstance(m, Surrogate)):
                observer = observer_for(name, neuron)
                surrogate.observers.append(observer)
                stack.callback(surrogate.observers.remove, observer)
            previous = neuron.__dict__.get("record_potentials")
            neuron.record_potentials = True
            stack.callback(_restore_recording, neuron, previous)
            stack.enter_context(neuron.register_forward_hook(hook_for(name)))
        weight = next(itertools.chain(model.parameters(), model.buffers()), None)
        model(inputs if weight is None else inputs.to(weight.device))
    return {name: summary for name, trace in traces.items() if (summary := _summarise(trace, traced)) is not None}


def _restore_recording(neuron: nn.Module, previous) -> None:
    if previous is None:
        neuron.__dict__.pop("record_potentials", None)  # back to the class default
    else:
        neuron.record_potentials = previous
    neuron.__dict__.pop("potentials", None)


def _summarise(trace: _LayerTrace, traced: int) -> dict | None:
    """The JSON-ready record of one layer (None if it did not run time-first)."""
    if trace.spikes is None or trace.spikes.dim() < 3:
        return None
    spikes = trace.spikes.flatten(2)  # [T, B, N]
    steps, size = spikes.shape[0], spikes.shape[2]
    indices = torch.linspace(0, size - 1, min(trace.neurons, size)).round().long().unique()
    chosen = spikes[:, :, indices.to(spikes.device)]
    activity = chosen[:, 0].abs().sum(0)
    order = torch.argsort(activity, descending=True, stable=True)[:traced]
    picked = indices[order.cpu()]
    record = {"indices": indices.tolist(), "traced": picked.tolist(), "spikes": chosen.cpu().tolist(),
              "potential": None, "threshold": None, "window": [trace.window.get(t) for t in range(steps)]}
    if len(trace.potentials) == steps:
        u = torch.stack([p.reshape(p.shape[0], -1)[0] for p in trace.potentials])[:, picked.to(spikes.device)]
        record["potential"] = u.cpu().tolist()
        thresholds = []
        for t in range(steps):
            x = trace.x.get(t)
            if x is not None and x.shape == trace.potentials[t].shape:
                thresholds.append((u[t] - x.reshape(x.shape[0], -1)[0, picked.to(x.device)]).cpu().tolist())
            else:
                thresholds.append(None)
        record["threshold"] = thresholds
    return record
