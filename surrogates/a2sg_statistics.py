"""A2SG's gradient statistics and the paper's window search (docs/methods.md, "A2SG").

Notation: delta[t] = dL/du[t], the gradient at a layer's membrane at step t (t = 1 .. T), rows [U, N]:
one row per unit (per channel for the per-channel granularities, else one), N = batch x neurons.

The paper's statistics [paper, via summary]:
    SGV     = Var(delta[T]) / Mean(|delta[T]|)      (population variance; last step only)
    TGC[t]  = cos(delta[t], delta[t+1]),  t = 1 .. T-1
and its window search (ST-ASG): the window of step T minimises SGV, the window of each t < T maximises
TGC[t].  ``WindowSearch`` evaluates every candidate window exactly from one backward [reconstructed]:
a neuron calls the surrogate once or more per step (calls c), each on x_c[L, ...] = sigma_c u - l (one row per
level l: LIF once with x = u - theta, L = 1; circulate firing once per crossing direction with the levels
l_j, sigma = -1 for the down-crossings x = -u - l_j).  With g_c[t] = dL/ds_c[t] (the spikes' whole gradient)
and f_w the surrogate with window w,

    delta[t](w) = r[t] + sum_c sigma_c sum_l g_{c,l}[t] f_w(x_{c,l}[t]),
    r[t] = delta[t] - sum_c sigma_c sum_l g_{c,l}[t] f_current(x_{c,l}[t]),

where r[t] (the recurrent term from delta[t+1], plus any loss on the potentials) does not depend on the
window of step t; delta[t+1] does not either.  So SGV(w) and TGC[t](w) are sums over
elements computed from the cached g, x and r, and summed across processes before the ratios are formed
(every replica picks the same window).  A candidate whose gradient vanishes (no membrane inside its
window) is never picked.

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


def world_mean(values: Tensor) -> Tensor:
    """All-reduce (mean) across processes when torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


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



def _world_sum(values: Tensor) -> Tensor:
    """All-reduce (sum) across processes when torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values


def sgv_from_sums(sums: Tensor, form: str = "variance") -> Tensor:
    """SGV = Var(d) / Mean(|d|) (``form="std"``: Std(d) / Mean(|d|), scale-free [reconstructed alternative]) from
    sums[..., 4] = (n, sum d, sum d^2, sum |d|) over each unit's elements; +inf where the gradient vanishes."""
    n, s1, s2, a = sums.unbind(-1)
    mean = s1 / n
    spread = (s2 / n - mean * mean).clamp_min(0)
    spread = spread if form == "variance" else spread.sqrt()
    return torch.where(a > 0, spread / (a / n), torch.full_like(a, float("inf")))


def tgc_from_sums(sums: Tensor) -> Tensor:
    """TGC = cos(d, d_next) from sums[..., 3] = (sum d d_next, sum d^2, sum d_next^2); -inf where either
    gradient vanishes."""
    dot, q, p = sums.unbind(-1)
    norms = (q * p).sqrt()
    return torch.where(norms > 0, dot / norms, torch.full_like(dot, float("-inf")))


# the most elements of one [K + 1, steps, L, U, S] evaluation of the search, by device: on a GPU as many steps as fit
# in 2^22 (16 MB in fp32; all of them at the defaults up to T = 39 on LIF, so few launches), on a CPU in 2^17, which
# keeps the temporaries in cache (ResNet-19 width 0.0625, B = 2, 1 thread: 97 ms per search step, 108 ms in one pass)
EVALUATION_ELEMENTS = {"cpu": 2 ** 17, "cuda": 2 ** 22}


class WindowSearch:
    """The paper's statistics of one training forward, for every candidate window (module docstring).

    ``add_step`` (forward, per surrogate call) caches a sample of the call's x[L, ...] and registers its spike-
    gradient callback, and on the step's first call the membrane-gradient one; the callbacks (backward) cache
    the same sample of g[t] and delta[t].  ``reduced_statistics`` then evaluates every candidate for every step
    at once ([K + 1, T, U, S]: a fixed number of operations per layer, whatever T; a GPU runs the search in
    few launches) and reduces them to sums.  The sample is every ``stride``-th element of each unit's row of the
    membrane, stride = ceil(N / ``sample``), the same elements for every level (``sample=None``: every element,
    exact) [reconstructed: the paper's search cost is not given].  ``candidate_params(w)`` gives the surrogate
    parameters for windows ``w`` in units of theta (a tensor broadcasting to the rows); the last column of the
    sums is the window in force.
    """

    def __init__(self, shape: Callable[..., Tensor], candidate_params: Callable[[Tensor], dict],
                 candidates: Tensor, per_unit: Callable[[Tensor], Tensor], sample: int | None,
                 sgv_form: str = "variance"):
        self.shape, self.candidate_params, self.per_unit, self.sample = shape, candidate_params, per_unit, sample
        self.sgv_form = sgv_form
        self.candidates = candidates  # [K]
        self.inputs: dict[int, list[tuple]] = {}  # t -> per call: (x rows [L, U, S], sigma, window in force [U, 1])
        self.spike_grads: dict[tuple[int, int], Tensor] = {}  # (t, call) -> g rows [L, U, S]
        self.deltas: dict[int, Tensor] = {}  # t -> dL/du rows [U, S]

    def rows(self, values: Tensor) -> Tensor:
        """The sampled [U, S] rows of a per-step tensor of the membrane's shape (views)."""
        rows = self.per_unit(values.detach())
        return rows[:, ::1 if self.sample is None else -(-rows.shape[-1] // self.sample)]

    def level_rows(self, values: Tensor, membrane: torch.Size) -> Tensor:
        """The sampled [L, U, S] rows (fp32, own memory) of each level of ``values`` (x or dL/ds: [L, *membrane]
        or the membrane's shape, L = 1)."""
        return torch.stack([self.rows(level) for level in values.reshape(-1, *membrane)]).float()

    def add_step(self, step: int, x: Tensor, mem: Tensor, sigma: float, window: Tensor, register_spike: Callable,
                 register_membrane: Callable, repeat: bool = False) -> None:
        """One surrogate call of step ``step`` on ``x`` (the membrane ``mem``'s shape, or [L, *mem's shape]);
        ``sigma`` = dx/du (the context's ``mem_slope``: -1 for circulate firing's down-crossings, else 1, the same
        at every step); ``window``: the window in force at this step, in units of theta, [U, 1]; ``repeat``: a
        further call at this step, on the same membrane."""
        if not repeat:
            self.inputs[step] = []
            register_membrane(lambda grad, step=step: self.deltas.__setitem__(step, self.rows(grad).float().clone()))
        calls, membrane = self.inputs[step], mem.shape
        calls.append((self.level_rows(x, membrane), sigma, window))
        register_spike(lambda grad, key=(step, len(calls) - 1):
                       self.spike_grads.__setitem__(key, self.level_rows(grad, membrane)))

    def through_spikes(self, calls: list[tuple], windows: Tensor | None = None) -> Tensor:
        """sum_c sigma_c sum_l g_{c,l} f_w(x_{c,l}) over the calls (x rows [T, L, U, S], sigma, windows in force
        [T, 1, U, 1], g rows): with the windows in force ([T, U, S]), or with each of ``windows`` [K, 1, 1, 1, 1]
        ([K, T, U, S])."""
        return sum(sigma * (g * self.shape(x, **self.candidate_params(window if windows is None else windows))).sum(-3)
                   for x, sigma, window, g in calls)

    @torch.no_grad()
    def reduced_statistics(self) -> tuple[Tensor, Tensor] | None:
        """(SGV[K + 1, U], TGC[T - 1, K + 1, U]) summed over processes, or None if a gradient was missing (no
        gradient reached u at a step, or none reached any spike of a step) or the steps made different numbers
        of calls (every process runs the same graph, so all of them return None together)."""
        steps = sorted(self.inputs)
        if not steps or sorted(self.deltas) != steps or len({len(self.inputs[t]) for t in steps}) > 1:
            return None
        calls = []  # per call index: its inputs, sigma, windows and spike gradients over the steps
        for index in range(len(self.inputs[steps[0]])):
            x, sigma, window = self.inputs[steps[0]][index]
            grads = [self.spike_grads.get((t, index)) for t in steps]
            calls.append((torch.stack([self.inputs[t][index][0] for t in steps]), sigma,
                          torch.stack([self.inputs[t][index][2] for t in steps])[:, None],
                          torch.stack([torch.zeros_like(x) if g is None else g for g in grads]), grads))
        if any(all(call[-1][i] is None for call in calls) for i in range(len(steps))):
            return None  # a step none of whose spikes got a gradient: delta has no surrogate part there
        calls = [call[:-1] for call in calls if any(g is not None for g in call[-1])]
        delta = torch.stack([self.deltas[t] for t in steps])  # [T, U, S]
        candidates = self.candidates.to(delta.device)[:, None, None, None, None]
        budget = EVALUATION_ELEMENTS.get(delta.device.type, EVALUATION_ELEMENTS["cuda"])
        chunk = max(1, budget // ((len(candidates) + 1) * calls[0][0][0].numel()))
        tgc_sums = []
        for start in range(0, len(steps), chunk):  # one pass unless the temporaries would be large
            part = [(x[start:start + chunk], sigma, window[start:start + chunk], g[start:start + chunk])
                    for x, sigma, window, g in calls]
            rest = delta[start:start + chunk] - self.through_spikes(part)  # what no window of these steps changes
            columns = torch.cat([self.through_spikes(part, candidates) + rest,
                                 delta[None, start:start + chunk]])  # [K + 1, steps, U, S]
            following = delta[start + 1:start + chunk + 1]  # delta[t + 1] of the steps t < T
            tgc_sums.append(_tgc_sums(columns[:, :len(following)], following))
        sgv_sums, tgc_sums = _sgv_sums(columns[:, -1]), torch.cat(tgc_sums, 1).transpose(0, 1)  # the last step: T
        packed = _world_sum(torch.cat([sgv_sums.flatten(), tgc_sums.flatten()]))
        sgv_sums, tgc_sums = packed[:sgv_sums.numel()].view_as(sgv_sums), packed[sgv_sums.numel():].view_as(tgc_sums)
        return sgv_from_sums(sgv_sums, self.sgv_form), tgc_from_sums(tgc_sums)


def _sgv_sums(delta: Tensor) -> Tensor:
    """[..., 4]: (n, sum d, sum d^2, sum |d|) over the last dim, in float64."""
    d = delta.double()
    return torch.stack([torch.full_like(d[..., 0], d.shape[-1]), d.sum(-1), (d * d).sum(-1), d.abs().sum(-1)], -1)


def _tgc_sums(delta: Tensor, delta_next: Tensor) -> Tensor:
    """[..., 3]: (sum d d_next, sum d^2, sum d_next^2) over the last dim, summed in the inputs' precision (fp32: the
    cosine to about 1e-7; no cancellation as in SGV's variance) and returned in float64; ``delta_next``
    broadcasts to ``delta``."""
    squares = torch.linalg.vecdot(delta_next, delta_next).expand(delta.shape[:-1])
    return torch.stack([torch.linalg.vecdot(delta, delta_next), torch.linalg.vecdot(delta, delta), squares], -1).double()
