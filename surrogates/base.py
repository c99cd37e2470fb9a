"""Spike function with a pluggable surrogate gradient.

Forward is the Heaviside step of ``x = u - threshold``; backward multiplies the incoming
gradient by the surrogate derivative ``h(x)``.  A surrogate is an ``nn.Module`` so that it
works as ``spike_grad=`` of a stock ``snntorch.Leaky`` (which calls it with ``mem - thr``
only) and as the surrogate of our own neurons (which also pass context such as the
timestep, the membrane or the preceding BN).

Rules every surrogate follows (docs/methods.md, "Classic surrogates"):
- per-call parameters are computed in ``forward`` from detached context and captured
  then; ``backward`` never reads mutable module state;
- ``h`` is evaluated in fp32 (exp-based shapes overflow in fp16/bf16) and written with
  differentiable torch ops, so Hessian-vector products (``create_graph=True``) work.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn


class RowLayout(NamedTuple):
    """Where ``RowSample.rows`` takes its entries from a step of a given shape, viewed as [outer, units, inner]:
    element n lies in row (n // inner) % units at position j = n // (inner units) * inner + n % inner of that row,
    and is taken where j % every == 0, as entry j // every of the row's ``length``."""

    units: int
    inner: int
    every: int
    length: int


class RowSample(NamedTuple):
    """An evenly strided sample of a membrane step [B, C, ...]: one row per index along ``unit_dim`` (a channel) or,
    ``unit_dim=None``, one row of the whole step, and every ``every``-th element of each row, every = ceil(row
    length / ``size``) (``size=None``: every element) [reconstructed: A2SG's window search, docs/methods.md]."""

    unit_dim: int | None
    size: int | None

    def per_unit(self, values: Tensor) -> Tensor:
        """[U, N]: the whole rows of a step (views where the layout allows)."""
        if self.unit_dim is None:
            return values.reshape(1, -1)
        return values.movedim(self.unit_dim, 0).flatten(1)

    def rows(self, values: Tensor) -> Tensor:
        """[U, S]: the sampled rows of a step (views)."""
        rows = self.per_unit(values)
        return rows[:, ::self.layout(values.shape).every]

    def layout(self, step: torch.Size) -> RowLayout:
        """The ``RowLayout`` of a step of shape ``step``."""
        numel = math.prod(step)
        units = 1 if self.unit_dim is None else step[self.unit_dim]
        inner = numel if self.unit_dim is None else math.prod(step[self.unit_dim % len(step) + 1:])
        row = numel // units if units else 0
        every = 1 if self.size is None else max(1, -(-row // self.size))
        return RowLayout(units, inner, every, -(-row // every))


class SpikeFunction(torch.autograd.Function):
    """Heaviside forward, ``grad * shape(x, **params)`` backward.

    ``fire_ge`` selects ``x >= 0`` (reference codes, spikingjelly) instead of snnTorch's
    strict ``x > 0``.  ``params`` are captured at forward time and receive no gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor, shape: Callable[..., Tensor], params: dict, fire_ge: bool) -> Tensor:
        ctx.save_for_backward(x)
        ctx.shape, ctx.params = shape, params
        spikes = x >= 0 if fire_ge else x > 0
        return spikes.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (x,) = ctx.saved_tensors
        h = ctx.shape(x.float(), **ctx.params)
        return (grad_output * h).to(grad_output.dtype), None, None, None


class Surrogate(nn.Module):
    """Base class: subclasses define ``shape(x, **params)`` and, if the parameters depend on
    the call, ``call_params(x, **context)``.

    ``forward(x, fire_ge=False, **context)`` returns spikes; ``derivative(x, **context)``
    returns ``h(x)`` in closed form (fp32).  Unknown context keys are ignored, so any of our
    neurons can pass what it has and a stock snnTorch neuron can pass nothing.

    ``observers``: callables ``observer(surrogate, x, params, context)`` run on every call (``observe``)
    with the parameters actually used (diagnostics such as gradient-window occupancy attach here).
    """

    # whether ``call_params`` reads the values of ``x`` or of the context's ``mem`` (True, the safe default).  False:
    # the parameters come from the rest of the context (the step, the neuron, its statistics), read only x's device
    # and mem's shape (a step [B, C, ...] of the membrane), and keep neither; the fused neuron paths then pass a
    # stand-in for both (the membrane buffer, or the step's input, in its own dtype) without forming u - theta_t,
    # and the LIF kernels need no membrane output
    reads_membrane = True

    def __init__(self):
        super().__init__()
        self.observers: list = []

    def call_params(self, x: Tensor, **context: Any) -> dict:
        """Per-call surrogate parameters (floats or detached tensors broadcasting to x)."""
        return {}

    def step_params(self, x: Tensor, contexts: list[dict], calls: int = 1) -> list[dict]:
        """The parameters of every step of a forward, for a surrogate that reads no membrane (``reads_membrane``
        False): what ``calls`` calls per step, ``call_params(x[t], **contexts[t])``, give, side effects included (one
        dict per step: a step's calls give equal parameters); ``x[t]`` and the contexts' ``mem`` are stand-ins of
        step t.  The default makes those calls; a surrogate may compute all steps at once (MPD-AGL, TGO)."""
        steps = []
        for t, context in enumerate(contexts):
            for _ in range(calls):
                params = self.call_params(x[t], **context)
            steps.append(params)
        return steps

    @staticmethod
    def shape(x: Tensor, **params: Any) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def derivative(self, x: Tensor, **context: Any) -> Tensor:
        return self.shape(x.float(), **self.call_params(x, **context))

    def forward(self, x: Tensor, fire_ge: bool = False, **context: Any) -> Tensor:
        params = self.call_params(x, **context)
        spike_hooks: list = []
        if x.requires_grad and self.wants_spike_grad() and "register_spike_grad" not in context:
            context["register_spike_grad"] = spike_hooks.append
        self.observe(x, params, context)
        spikes = SpikeFunction.apply(x, self.shape, params, fire_ge)
        for hook in spike_hooks:
            spikes.register_hook(hook)
        return spikes

    def wants_spike_grad(self) -> bool:
        """Whether this call's ``observe`` may register a spike-gradient callback (A2SG's window search);
        the reference path then offers ``register_spike_grad`` (False by default: nothing for
        torch.compile to trace)."""
        return False

    @property
    def observes(self) -> bool:
        """Whether a call has side effects (``observe`` overridden, as A2SG's statistics, or observers attached)."""
        return type(self).observe is not Surrogate.observe or bool(self.observers)

    def observe(self, x: Tensor, params: dict, context: dict) -> None:
        """The side effects of one call, given the parameters actually used: the observers here,
        statistics in subclasses (A2SG).  The fused neuron paths call it too, with ``x`` and ``mem``
        without graph; there ``context["register_membrane_grad"](callback)`` (present when a backward
        will run) has ``callback(dL/dmem)`` called during the backward, in place of a tensor hook.
        ``context["register_spike_grad"](callback)`` (both paths, when a backward will run) has
        ``callback(dL/ds)`` called with the whole gradient of this call's spikes.  With
        ``context["sampled"]`` (``observation_sample``) x and the callbacks' gradients are sampled rows."""
        for observer in self.observers:
            observer(self, x, params, context)

    def observation_sample(self) -> RowSample | None:
        """The rows this forward's ``observe`` and its gradient callbacks read, where they read only a fixed
        ``RowSample`` of each step (A2SG's window search) and ``call_params`` reads no membrane
        (``reads_membrane`` False); None (the default): whole steps.  A fused neuron path may then hand over
        only those rows: ``observe`` gets x as the rows [U, S] of u[t] - theta_t with ``context["sampled"]``
        True (the context's ``mem``: a stand-in of the step's shape, as for ``reads_membrane``), and the
        callbacks get the same rows of dL/ds[t] and dL/du[t]; so the LIF kernels write [T, U, S] rows, not the
        whole fp32 membrane and gradients."""
        return None


class FixedSurrogate(Surrogate):
    """A surrogate whose parameters are fixed constants given at construction."""

    def __init__(self, **params: float):
        super().__init__()
        for name, value in params.items():
            if not value > 0:
                raise ValueError(f"{type(self).__name__}: {name} must be > 0, got {value!r}")
        self.params = params

    def call_params(self, x: Tensor, **context: Any) -> dict:
        return self.params

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items())
