"""MPD-AGL: a rectangular surrogate whose width is the predicted spread of the membrane
potential, computed from parameters (Jiang et al., IJCAI 2025, and its released code; docs/methods.md
section "MPD-AGL").

    h(x)    = (1/kappa_t) * 1[|x| < kappa_t/2],   x = U - V_th     (area 1, centred on V_th)
    kappa_1 = 2 * alpha * gbar * V_th                               first step         [reference code]
    kappa_t = 2 * sqrt(1 + k^2) * alpha * gbar * V_th               every later step   [reference code]

- gbar = mean_c(gamma_c), the weight of the tdBN feeding the neuron (``neuron.input_norm.weight``),
  detached and read at forward time, so it follows training (weight decay shrinks it);
- k = the neuron's decay, detached; V_th = the neuron's fixed threshold (``neuron.threshold``);
- alpha = the tdBN's alpha (1 in the code; the model's BN scale is alpha * V_th).

Reading: after tdBN the input current is ~ N(beta, (alpha gamma V_th)^2), so sigma_1 = alpha gbar V_th
and, ignoring the reset, sigma_t = sqrt(1 + k^2) sigma_1; the window 2 sigma_t gives gradient to
|U - V_th| < sigma_t [reconstructed derivation].  kappa receives no gradient: gamma and the decay
learn only through the forward pass.

Options (the ablation arms of section 9):
- ``width``: ``mpd`` (the rule above), ``gamma_only`` (2 alpha gbar V_th at every t),
  ``lsg`` (2 V_th sqrt(1 + k^2) at every t, no gamma [published: Lian et al. 2023]), ``fixed``
  (``fixed_width``);
- ``exact_var`` (mpd only): sqrt(sum_{j<=t} k^{2j}) instead of sqrt(1 + k^2) for step t (0-based)
  [reconstructed];
- ``granularity``: ``layer`` (gbar, the code) or ``channel`` (gamma_c, width shaped [C, 1, ...])
  [reconstructed];
- ``gamma_guard``: ``abs_eps`` (default) uses max(|gbar|, guard_eps), ``none`` is the code (gbar <= 0
  empties the window) [reconstructed].  ``guard_count`` (a buffer) counts, in training, the
  (call, channel) pairs where the guard changed gamma.

Fallback: with no neuron context (a stock ``snntorch.Leaky`` passes only ``mem - thr``), a
single-step call (no timestep), or no feeding BN with a weight, kappa = ``fixed_width`` (1.0),
the standard width-1 rectangle that MPD-AGL equals at initialisation.
"""
from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn

from .classic import Rectangular

WIDTH_RULES = ("mpd", "gamma_only", "lsg", "fixed")
GRANULARITIES = ("layer", "channel")
GAMMA_GUARDS = ("abs_eps", "none")


class MembranePotentialWidth(Rectangular):
    """Rectangular surrogate with MPD-AGL's parameter-derived width (see module docstring)."""

    reads_membrane = False  # the width comes from the step, the neuron's decay and threshold and the feeding BN

    def __init__(self, width: str = "mpd", alpha: float = 1.0, exact_var: bool = False, granularity: str = "layer",
                 gamma_guard: str = "abs_eps", guard_eps: float = 1e-3, fixed_width: float = 1.0):
        super().__init__(width=fixed_width)
        for name, value, choices in (("width", width, WIDTH_RULES), ("granularity", granularity, GRANULARITIES),
                                     ("gamma_guard", gamma_guard, GAMMA_GUARDS)):
            if value not in choices:
                raise ValueError(f"mpd_agl {name} must be one of {choices}, got {value!r}")
        if exact_var and width != "mpd":
            raise ValueError(f"exact_var applies to width='mpd' only, got width={width!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if not guard_eps > 0:
            raise ValueError(f"guard_eps must be > 0, got {guard_eps}")
        self.rule, self.alpha, self.exact_var = width, float(alpha), bool(exact_var)
        self.granularity, self.gamma_guard, self.guard_eps = granularity, gamma_guard, float(guard_eps)
        self.register_buffer("guard_count", torch.zeros((), dtype=torch.long))

    def call_params(self, x: Tensor, step: int | None = None, neuron: nn.Module | None = None,
                    **context: Any) -> dict:
        widths = None if step is None else self.step_widths(neuron, step + 1, context.get("mem", x))
        return self.params if widths is None else {"width": widths[step]}

    def step_params(self, x: Tensor, contexts: list[dict], calls: int = 1) -> list[dict]:
        """Every step's width at once, equal to ``call_params``'s (``Surrogate.step_params``)."""
        first = contexts[0]
        if first.get("step") is None:
            return super().step_params(x, contexts, calls)
        widths = self.step_widths(first.get("neuron"), len(contexts), first.get("mem", x[0]), calls * len(contexts))
        return [self.params] * len(contexts) if widths is None else [{"width": width} for width in widths.unbind()]

    def step_widths(self, neuron: nn.Module | None, steps: int, mem: Tensor, calls: int = 1) -> Tensor | None:
        """kappa_t of steps 0..steps-1, detached: [steps] (layer) or [steps, C, 1, ...] (channel, against a step
        ``mem`` [B, C, ...]); None where the fixed width applies (rule ``fixed``, no neuron, no feeding BN weight).
        ``calls``: the surrogate calls these widths serve (``guard_count`` counts each)."""
        if self.rule == "fixed" or neuron is None:
            return None
        decay, threshold = getattr(neuron, "decay", None), getattr(neuron, "threshold", None)  # decay: computed once
        if decay is None or threshold is None:
            raise ValueError(f"mpd_agl needs a neuron with `decay` and `threshold` (e.g. plif); got {type(neuron).__name__}")
        with torch.no_grad():
            v_th = float(threshold)
            decay = decay.detach().float().to(mem.device)
            if self.rule == "lsg":
                return (2 * v_th * torch.sqrt(1 + decay ** 2)).expand(steps)
            gamma = self.feeding_gamma(getattr(neuron, "input_norm", None), mem, calls)
            if gamma is None:
                return None
            factors = self.spread_factors(decay, steps)
            return factors.view(-1, *([1] * gamma.dim())) * (gamma * (2 * self.alpha * v_th))

    def feeding_gamma(self, norm: nn.Module | None, mem: Tensor, calls: int = 1) -> Tensor | None:
        """gbar (layer) or gamma_c shaped [C, 1, ...] (channel) of the feeding BN, detached and guarded; ``mem``: a
        step of the membrane [B, C, ...] (over whose levels circulate firing's [L, B, C, ...] inputs broadcast the
        same gamma_c); in training ``guard_count`` grows by ``calls`` per channel the guard changed."""
        weight = getattr(norm, "weight", None)
        if weight is None:
            return None
        weight = weight.detach().float().to(mem.device)
        gamma = weight.mean() if self.granularity == "layer" else weight.view((-1,) + (1,) * (mem.dim() - 2))
        if self.gamma_guard == "none":
            return gamma
        guarded = gamma.abs().clamp_min(self.guard_eps)
        if self.training:
            self.guard_count.add_((guarded != gamma).sum(), alpha=calls)
        return guarded

    def spread_factors(self, decay: Tensor, steps: int) -> Tensor:
        """sigma_t / sigma_1 of steps 0..steps-1, [steps]: 1 at step 0 (and always for gamma_only); sqrt(1 + k^2)
        later, or the unrolled sqrt(sum_{j<=t} k^{2j}) with ``exact_var``."""
        first = torch.ones_like(decay).view(1)
        if self.rule == "gamma_only":
            return first.expand(steps)
        if self.exact_var:  # the partial sums in order: each rounds as sum(k^{2j} for j <= t)
            return torch.sqrt(torch.stack(list(itertools.accumulate(decay ** (2 * j) for j in range(steps)))))
        return torch.cat([first, torch.sqrt(1 + decay ** 2).view(1).expand(steps - 1)])

    def extra_repr(self) -> str:
        return (f"width={self.rule}, alpha={self.alpha}, exact_var={self.exact_var}, granularity={self.granularity}, "
                f"gamma_guard={self.gamma_guard}, fixed_width={self.params['width']}")


def mpd_agl(width: str = "mpd", alpha: float = 1.0, exact_var: bool = False, granularity: str = "layer",
            gamma_guard: str = "abs_eps", guard_eps: float = 1e-3, fixed_width: float = 1.0) -> MembranePotentialWidth:
    """MPD-AGL's surrogate; use with ``plif`` (decay 0.2, threshold 0.5) behind tdBN with scale 0.5."""
    return MembranePotentialWidth(width=width, alpha=alpha, exact_var=exact_var, granularity=granularity,
                                  gamma_guard=gamma_guard, guard_eps=guard_eps, fixed_width=fixed_width)
