"""A2SG's window search (ST-ASG) [paper, via summary], exact from one backward [reconstructed] (docs/methods.md,
"A2SG").

Notation as in ``a2sg_statistics.py``: delta[t] = dL/du[t], rows [U, N].  The window of step T minimises
SGV = Var(delta[T]) / Mean(|delta[T]|), the window of each t < T maximises TGC[t] = cos(delta[t], delta[t+1]).
A neuron calls the surrogate once or more per step (calls c), each on x_c[L, ...] = sigma_c u - l (one row per
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
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .a2sg_statistics import world_sum
from .base import RowSample


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
# keeps the temporaries in cache (ResNet-19 width 0.0625, B = 2, 1 thread, one layer: 97 ms per search step, 108 ms
# with all 4 steps in one pass)
EVALUATION_ELEMENTS = {"cpu": 2 ** 17, "cuda": 2 ** 22}


class WindowSearch:
    """The paper's statistics of one training forward, for every candidate window (module docstring).

    ``add_step`` (forward, per surrogate call) caches a sample of the call's x[L, ...] and registers its spike-
    gradient callback, and on the step's first call the membrane-gradient one; the callbacks (backward) cache
    the same sample of g[t] and delta[t].  After the backward, ``reduce_searches`` evaluates every candidate for
    every step and for the searches of a model together, in [K + 1, steps, L, units, S] passes within an element
    budget (few operations, so few GPU launches, however many steps and layers fit), and reduces them to sums.
    The ``sample`` (a ``RowSample``) is every ``every``-th element of each unit's row of the membrane, every =
    ceil(N / its size), the same elements for every level (size None: every element, exact) [reconstructed: the
    paper's search cost is not given]; a fused path may hand over these rows themselves (``sampled``: the LIF
    kernels write only them).  ``shape_params(w)`` gives the surrogate parameters for
    absolute windows ``w`` (a tensor broadcasting to the rows), ``theta`` the neuron's threshold, ``key`` what
    searches evaluated together must share (the shape and its other parameters, the candidates, the SGV form);
    the last column of the sums is the window in force.
    """

    def __init__(self, shape: Callable[..., Tensor], shape_params: Callable[[Tensor], dict], theta: float,
                 candidates: Tensor, sample: RowSample, sgv_form: str = "variance", key: tuple = ()):
        self.shape, self.shape_params, self.theta, self.key = shape, shape_params, theta, key
        self.sample, self.sgv_form = sample, sgv_form
        self.candidates = candidates  # [K], units of theta
        self.inputs: dict[int, list[tuple]] = {}  # t -> per call: (x rows [L, U, S], sigma, window in force [U, 1])
        self.spike_grads: dict[tuple[int, int], Tensor] = {}  # (t, call) -> g rows [L, U, S]
        self.deltas: dict[int, Tensor] = {}  # t -> dL/du rows [U, S]

    def step_rows(self, values: Tensor, sampled: bool = False) -> Tensor:
        """The sampled [U, S] rows (fp32) of a step of the membrane's shape (dL/du), in memory of their own (the torch
        paths overwrite their gradient buffers); with ``sampled``, ``values`` are the rows themselves (a fused path
        wrote them for this search)."""
        return values.detach().float() if sampled else self.sample.rows(values.detach()).to(torch.float32, copy=True)

    def level_rows(self, values: Tensor, membrane: torch.Size, sampled: bool = False) -> Tensor:
        """The sampled [L, U, S] rows (fp32, ``step_rows``) of each level of ``values`` (x or dL/ds: [L, *membrane]
        or the membrane's shape, L = 1; ``sampled``: the rows [U, S] themselves, L = 1)."""
        if sampled:
            return self.step_rows(values, sampled)[None]
        return torch.stack([self.sample.rows(level.detach()) for level in values.reshape(-1, *membrane)]).float()

    def add_step(self, step: int, x: Tensor, mem: Tensor, sigma: float, window: Tensor, register_spike: Callable,
                 register_membrane: Callable, repeat: bool = False, sampled: bool = False) -> None:
        """One surrogate call of step ``step`` on ``x`` (the membrane ``mem``'s shape, or [L, *mem's shape]);
        ``sigma`` = dx/du (the context's ``mem_slope``: -1 for circulate firing's down-crossings, else 1, the same
        at every step); ``window``: the window in force at this step, in units of theta, [U, 1]; ``repeat``: a
        further call at this step, on the same membrane; ``sampled``: x and the callbacks' gradients are the
        sampled rows [U, S] already (``Surrogate.observation_sample``)."""
        membrane = x.shape if sampled else mem.shape
        if not repeat:
            self.inputs[step] = []
            register_membrane(lambda grad, step=step:
                              self.deltas.__setitem__(step, self.step_rows(grad, sampled)))
        calls = self.inputs[step]
        calls.append((self.level_rows(x, membrane, sampled), sigma, window))
        register_spike(lambda grad, key=(step, len(calls) - 1):
                       self.spike_grads.__setitem__(key, self.level_rows(grad, membrane, sampled)))

    def live_calls(self) -> list[int] | None:
        """The calls (indices) whose spikes got a gradient at some step; None if the statistics cannot be formed: a
        gradient is missing (none reached u at a step, or none reached any spike of a step) or the steps made
        different numbers of calls (every process runs the same graph, so all of them return None together)."""
        steps = sorted(self.inputs)
        if not steps or sorted(self.deltas) != steps or len({len(self.inputs[t]) for t in steps}) > 1:
            return None
        calls = range(len(self.inputs[steps[0]]))
        if any(all((t, c) not in self.spike_grads for c in calls) for t in steps):
            return None  # a step none of whose spikes got a gradient: delta has no surrogate part there
        return [c for c in calls if any((t, c) in self.spike_grads for t in steps)]

    def kind(self, calls: list[int]) -> tuple:
        """What searches evaluated together share: the key, steps, device, and per live call its levels and sign."""
        first, delta = self.inputs[min(self.inputs)], self.deltas[min(self.deltas)]
        return self.key, len(self.inputs), delta.device, tuple((first[c][0].shape[0], first[c][1]) for c in calls)

    def rows_shape(self) -> torch.Size:
        """[U, S]: the units and the sample length of the rows."""
        return self.deltas[min(self.deltas)].shape

    def stacked(self, calls: list[int]) -> tuple[list[tuple], Tensor]:
        """(calls, delta) over the steps: per live call (x rows [T, L, U, S], sigma, absolute windows in force
        [T, 1, U, 1], g rows [T, L, U, S], zero at steps where its spikes got no gradient) and delta rows
        [T, U, S]."""
        steps = sorted(self.inputs)
        stacked = []
        for c in calls:
            x, sigma, _ = self.inputs[steps[0]][c]
            grads = [self.spike_grads.get((t, c)) for t in steps]
            stacked.append((torch.stack([self.inputs[t][c][0] for t in steps]), sigma,
                            torch.stack([self.inputs[t][c][2] for t in steps])[:, None] * self.theta,
                            torch.stack([torch.zeros_like(x) if g is None else g for g in grads])))
        return stacked, torch.stack([self.deltas[t] for t in steps])

    def reduced_statistics(self) -> tuple[Tensor, Tensor] | None:
        """(SGV[K + 1, U], TGC[T - 1, K + 1, U]) summed over processes, or None (``live_calls``)."""
        return reduce_searches([self])[0]


class PendingSearches:
    """The window searches of a model's latest forward, evaluated together by the first ``choice`` call after
    the backward (A2SG's ``after_optimizer_step``; the model's A2SG surrogates share one, ``A2SG.on_model_built``)."""

    def __init__(self):
        self.searches: dict[int, WindowSearch] = {}  # id(owner) -> its latest search
        self.results: dict[WindowSearch, WindowChoice | None] = {}

    def add(self, owner: object, search: WindowSearch) -> None:
        self.searches[id(owner)], self.results = search, {}

    def __getstate__(self) -> dict:
        """A copy (pickle, deepcopy) starts with nothing pending: the searches belong to the original's owners."""
        return {"searches": {}, "results": {}}

    def choice(self, search: WindowSearch) -> WindowChoice | None:
        """``search``'s ``WindowChoice`` (None: ``live_calls``), every pending search's made at once
        (``choose_windows``)."""
        if search not in self.results:
            batch = list({id(s): s for s in [*self.searches.values(), search]}.values())
            self.searches, self.results = {}, dict(zip(batch, choose_windows(batch)))
        return self.results.pop(search)


class WindowChoice(NamedTuple):
    """What a search step applies, per unit (the last dim): the paper's statistics of the windows in force, SGV[U]
    and TGC[T - 1, U] (fp32, 0 where the gradient vanished) and TGC's mean over t; per step [T, U] the best
    candidate (units of theta: the highest TGC[t] for t < T, the lowest SGV for step T) and whether it has a
    gradient (a vanished one scores -inf / +inf; NaN statistics count as none)."""
    sgv: Tensor
    tgc: Tensor
    tgc_mean: Tensor
    best: Tensor
    found: Tensor

    @classmethod
    def of(cls, sgv: Tensor, tgc: Tensor, candidates: Tensor) -> "WindowChoice":
        """From SGV[K + 1, U] and TGC[T - 1, K + 1, U] over the ``candidates`` [K], the window in force last
        (``reduce_searches``)."""
        in_force_sgv, in_force_tgc = sgv[-1].nan_to_num(posinf=0.0), tgc[:, -1].nan_to_num(neginf=0.0)
        best_last, best_earlier = sgv[:-1].min(0), tgc[:, :-1].max(1)
        best = candidates[torch.cat([best_earlier.indices, best_last.indices[None]])]
        found = torch.cat([best_earlier.values > -math.inf, best_last.values[None] < math.inf])
        return cls(in_force_sgv.float(), in_force_tgc.float(), in_force_tgc.mean(0).float(), best, found)

    def split(self, units: list[int]) -> list["WindowChoice"]:
        """The choices of the searches whose units lie side by side, ``units`` each."""
        return [WindowChoice(*fields) for fields in zip(*(field.split(units, -1) for field in self))]


@torch.no_grad()
def reduce_searches(searches: list[WindowSearch]) -> list[tuple[Tensor, Tensor] | None]:
    """Every search's (SGV[K + 1, U], TGC[T - 1, K + 1, U]) summed over processes (None where ``live_calls`` is None;
    ``_reduced_groups``)."""
    results: list[tuple[Tensor, Tensor] | None] = [None] * len(searches)
    for members, sgv, tgc in _reduced_groups(searches):
        units = [searches[i].rows_shape()[0] for i in members]
        for i, result in zip(members, zip(sgv.split(units, -1), tgc.split(units, -1))):
            results[i] = result
    return results


@torch.no_grad()
def choose_windows(searches: list[WindowSearch]) -> list[WindowChoice | None]:
    """Every search's ``WindowChoice`` (None where ``live_calls`` is None): a group's at once, over its units side by
    side (``_reduced_groups``)."""
    results: list[WindowChoice | None] = [None] * len(searches)
    for members, sgv, tgc in _reduced_groups(searches):
        choice = WindowChoice.of(sgv, tgc, searches[members[0]].candidates.to(sgv.device))
        for i, result in zip(members, choice.split([searches[i].rows_shape()[0] for i in members])):
            results[i] = result
    return results


def _reduced_groups(searches: list[WindowSearch]) -> list[tuple[list[int], Tensor, Tensor]]:
    """Per group of searches evaluated together (``_groups``; each group's rows stacked only for its pass): its
    members (indices), SGV[K + 1, units] and TGC[T - 1, K + 1, units], the members' units side by side, summed over
    processes: all sums are all-reduced at once, packed in the searches' order (the groups depend on the sample
    lengths, which may differ between processes) on the first search's device."""
    live = [search.live_calls() for search in searches]
    groups = _groups(searches, live)
    sums = {}  # search index -> its sums of SGV [U, K + 1, 4] and TGC [U, T - 1, K + 1, 3], units first (contiguous)
    for members in groups:
        units = [searches[i].rows_shape()[0] for i in members]
        sgv_sums, tgc_sums = _joined_sums([searches[i] for i in members],
                                          [searches[i].stacked(live[i]) for i in members])
        sums.update(zip(members, zip(*(part.movedim(-2, 0).contiguous().split(units) for part in (sgv_sums, tgc_sums)))))
    if not sums:
        return []
    order = sorted(sums)
    device = sums[order[0]][0].device
    packed = world_sum(torch.cat([part.flatten().to(device) for i in order for part in sums[i]])).split(
        [part.numel() for i in order for part in sums[i]])
    reduced = {i: (packed[2 * k].view_as(sums[i][0]), packed[2 * k + 1].view_as(sums[i][1]))
               for k, i in enumerate(order)}
    return [(members, sgv_from_sums(_joined([reduced[i][0] for i in members], 0).movedim(0, -2),
                                    searches[members[0]].sgv_form),
             tgc_from_sums(_joined([reduced[i][1] for i in members], 0).movedim(0, -2))) for members in groups]


def _joined(tensors: list[Tensor], dim: int) -> Tensor:
    """``torch.cat(tensors, dim)``, or the one tensor itself (no copy)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def _groups(searches: list[WindowSearch], live: list[list[int] | None]) -> list[list[int]]:
    """Indices of the searches evaluated together: of one kind (``WindowSearch.kind``), as many in a row as fit
    one step's [K + 1, L, units, S] pass in ``EVALUATION_ELEMENTS`` (a full group then takes a pass per step)."""
    kinds: dict[tuple, list[int]] = {}
    for i, (search, calls) in enumerate(zip(searches, live)):
        if calls is not None:
            kinds.setdefault(search.kind(calls), []).append(i)
    groups = []
    for kind, members in kinds.items():
        _, _, device, levels_and_signs = kind
        budget = EVALUATION_ELEMENTS.get(device.type, EVALUATION_ELEMENTS["cuda"])
        per_unit_and_element = (len(searches[members[0]].candidates) + 1) * levels_and_signs[0][0]
        group, units, width = [], 0, 0
        for i in members:
            rows, length = searches[i].rows_shape()
            if group and per_unit_and_element * (units + rows) * max(width, length) > budget:
                groups.append(group)
                group, units, width = [], 0, 0
            group, units, width = group + [i], units + rows, max(width, length)
        groups.append(group)
    return groups


def _joined_sums(searches: list[WindowSearch], stacked: list) -> tuple[Tensor, Tensor]:
    """``_search_sums`` of searches of one group, their units side by side: rows padded with zeros to the longest
    sample (a zero g and delta add nothing but the count, which each row keeps), each row with its threshold."""
    width = max(delta.shape[-1] for _, delta in stacked)

    def joined(tensors: list[Tensor]) -> Tensor:
        return _joined([t if t.shape[-1] == width else F.pad(t, (0, width - t.shape[-1])) for t in tensors], -2)
    calls = [(joined([c[k][0] for c, _ in stacked]), sigma, _joined([c[k][2] for c, _ in stacked], -2),
              joined([c[k][3] for c, _ in stacked])) for k, (_, sigma, _, _) in enumerate(stacked[0][0])]
    delta = joined([d for _, d in stacked])
    counts, thetas = _row_constants(tuple((*d.shape[1:], search.theta) for search, (_, d) in zip(searches, stacked)),
                                    delta.device)
    candidates = searches[0].candidates.to(delta.device)[:, None, None, None, None] * thetas[:, None]  # [K,1,1,U,1]
    return _search_sums(searches[0].shape, searches[0].shape_params, candidates, calls, delta, counts)


@functools.lru_cache(maxsize=64)
def _row_constants(rows: tuple[tuple[int, int, float], ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """fp32 (counts, thetas) [units] of searches side by side, each (units, sample length, theta): cached, so that a
    model's searches (the same every step) fill them once (fills: no host data to copy, so no wait)."""
    return tuple(torch.cat([torch.full((units,), float(row[column]), dtype=torch.float32, device=device)
                            for units, *row in rows])
                 for column in (0, 1))


def _search_sums(shape: Callable[..., Tensor], shape_params: Callable[[Tensor], dict], candidates: Tensor,
                 calls: list[tuple], delta: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """The sums of SGV[K + 1, U, 4] (the last step) and TGC[T - 1, K + 1, U, 3] for the absolute ``candidates``
    [K, 1, 1, U, 1] and the windows in force, from the stacked ``calls`` and ``delta`` (``WindowSearch.stacked``);
    ``counts[U]``: the elements of each row (padding aside); in passes of as many steps as the temporaries allow
    (``EVALUATION_ELEMENTS``)."""
    def through_spikes(part: list[tuple], windows: Tensor | None = None) -> Tensor:
        # sum_c sigma_c sum_l g_{c,l} f_w(x_{c,l}): with the windows in force ([steps, U, S]) or each candidate's
        return sum(sigma * (g * shape(x, **shape_params(window if windows is None else windows))).sum(-3)
                   for x, sigma, window, g in part)

    budget = EVALUATION_ELEMENTS.get(delta.device.type, EVALUATION_ELEMENTS["cuda"])
    chunk = max(1, budget // ((len(candidates) + 1) * calls[0][0][0].numel()))
    tgc_sums = []
    for start in range(0, len(delta), chunk):  # one pass unless the temporaries would be large
        steps = slice(start, start + chunk)
        part = [(x[steps], sigma, window[steps], g[steps]) for x, sigma, window, g in calls]
        rest = delta[steps] - through_spikes(part)  # what no window of these steps changes
        columns = torch.cat([through_spikes(part, candidates) + rest, delta[None, steps]])  # [K + 1, steps, U, S]
        following = delta[start + 1:start + chunk + 1]  # delta[t + 1] of the steps t < T
        tgc_sums.append(_tgc_sums(columns[:, :len(following)], following))
    return _sgv_sums(columns[:, -1], counts), torch.cat(tgc_sums, 1).transpose(0, 1)  # the last pass ends at T


def _sgv_sums(delta: Tensor, counts: Tensor | None = None) -> Tensor:
    """[..., 4]: (n, sum d, sum d^2, sum |d|) over the last dim, in float64; n = ``counts`` (broadcasting to the
    leading dims; rows padded with zeros) or the last dim's size."""
    d = delta.double()
    n = torch.full_like(d[..., 0], d.shape[-1]) if counts is None else counts.to(d).expand(d.shape[:-1])
    return torch.stack([n, d.sum(-1), (d * d).sum(-1), d.abs().sum(-1)], -1)


def _tgc_sums(delta: Tensor, delta_next: Tensor) -> Tensor:
    """[..., 3]: (sum d d_next, sum d^2, sum d_next^2) over the last dim, summed in the inputs' precision (fp32: the
    cosine to about 1e-7; no cancellation as in SGV's variance) and returned in float64; ``delta_next``
    broadcasts to ``delta``."""
    dot, squares = torch.linalg.vecdot(delta, delta_next), torch.linalg.vecdot(delta, delta)
    squares_next = torch.linalg.vecdot(delta_next, delta_next).expand(delta.shape[:-1])
    return torch.stack([dot, squares, squares_next], -1).double()
