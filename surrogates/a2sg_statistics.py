"""A2SG's gradient statistics (docs/methods.md, "A2SG"); the paper's window search is in ``a2sg_search.py``.

Notation: delta[t] = dL/du[t], the gradient at a layer's membrane at step t (t = 1 .. T), rows [U, N]:
one row per unit (per channel for the per-channel granularities, else one), N = batch x neurons.

The paper's statistics [paper, via summary] (``a2sg_search.py`` evaluates them for every candidate window):
    SGV     = Var(delta[T]) / Mean(|delta[T]|)      (population variance; last step only)
    TGC[t]  = cos(delta[t], delta[t+1]),  t = 1 .. T-1

Our earlier reconstruction [reconstructed] (``GradientObservation``, A2SG's ``sgv_tgc`` controller):
SGV = mean_t CV(h(x[t])) or CV(|delta[t]|), TGC = mean_{t<t'} cos(delta[t], delta[t']).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

EPS = 1e-8
# the definitions behind A2SG's logged sgv_ema / tgc_ema / tgc_t, by ``A2SG.statistics`` (reports print them)
STATISTICS_DEFINITIONS = {
    "paper": "SGV = Var(delta[T]) / Mean(|delta[T]|) at the last step, TGC[t] = cos(delta[t], delta[t+1]), "
             "delta = dL/du [paper, via summary]",
    "reconstructed": "SGV = mean over t of std/mean of h(x[t]) (or of |delta[t]|), TGC = mean over t < t' of "
                     "cos(delta[t], delta[t']), delta = dL/du [reconstructed]",
}

def coefficient_of_variation(values: Tensor) -> Tensor:
    """std / (mean + 1e-8) along the last dim (population std)."""
    return values.std(-1, correction=0) / (values.mean(-1) + EPS)


def world_sum(values: Tensor) -> Tensor:
    """All-reduce (sum) across processes, in place, when torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values


def world_mean(values: Tensor) -> Tensor:
    """All-reduce (mean) across processes, in place, when torch.distributed is initialised."""
    distributed = dist.is_available() and dist.is_initialized()
    return world_sum(values).div_(dist.get_world_size() if distributed else 1)


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
        self.slope: tuple[int, Tensor] | None = None  # the latest step's h, until that step's last call
        self.deltas: dict[int, Tensor] = {}
        self.hooked: set[int] = set()
        self.gram: Tensor | None = None

    def add_step(self, step: int, h: Tensor | None, mem: Tensor | None,
                 register: Callable[[Callable[[Tensor], None]], None] | None = None, repeat: bool = False,
                 last_call: bool = True) -> None:
        """``h``: the surrogate derivative of the call, in the membrane's shape (summed over levels); ``register``:
        the fused path's stand-in for ``mem.register_hook`` (``Surrogate.observe``); ``repeat``: a further call
        at ``step`` (circulate firing's down-crossings), whose h adds to the step's (SGV of the sum over the
        step's calls [reconstructed]) and which registers no second hook; ``last_call``: the step's last call
        (its h is then reduced and freed)."""
        if h is not None:
            if repeat and self.slope is not None:
                h = self.slope[1] + h
            else:
                self._close_slope()
            self.slope = (step, h)
            if last_call:
                self._close_slope()
        if repeat or (self.from_weights and not self.sgv_from_grad):
            return
        callback = lambda grad, step=step: self._on_grad(step, grad)  # noqa: E731
        if register is not None:
            self.hooked.add(step)
            register(callback)
        elif mem is not None and mem.requires_grad:
            self.hooked.add(step)
            mem.register_hook(callback)

    def observed_steps(self) -> int:
        """The number of steps with an SGV term so far."""
        self._close_slope()
        return len(self.sgv_terms)

    def _close_slope(self) -> None:
        """The SGV term of the latest step's h, which is then freed."""
        if self.slope is not None:
            step, h = self.slope
            self.sgv_terms[step], self.slope = coefficient_of_variation(self.per_unit(h)), None

    @torch.no_grad()
    def _on_grad(self, step: int, grad: Tensor) -> None:
        delta = self.per_unit(grad.detach().float())
        if self.sgv_from_grad:
            self.sgv_terms[step] = coefficient_of_variation(delta.abs())
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
        self._close_slope()
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
