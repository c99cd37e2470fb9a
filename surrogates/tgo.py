"""DS-ATGO's threshold-driven gradient optimisation (TGO): a rectangular surrogate whose width
follows the spread of the membrane potential (Jiang et al., AAAI 2026, Eqs. 4 and 7; docs/methods.md
section "DS-ATGO").

    h(x) = (1/k_t) * 1[|x| < k_t/2],   x = U - theta_t                        [published, Eq. 4]
    k_t  = k0 * (1 - tanh(V0 - s_t))   if s_t <  V0                           [published, Eq. 7]
    k_t  = k0 * (1 + tanh(s_t - V0))   if s_t >= V0

tanh is odd, so the two branches are the same function k0 * (1 + tanh(s_t - V0)): continuous,
k = k0 at s_t = V0, narrower and taller for a concentrated potential, wider and lower for a
dispersed one.  The statistic s_t is chosen by ``tgo_stat``:

- ``std`` (default) [reference code]: s_t = sigma_t, the std of the charged membrane, so
  k is in [k0 (1 - tanh V0), 2 k0);
- ``thr`` [published]: s_t = theta_t, the adaptive threshold; theta can be negative, so
  k is clamped to >= ``k_min`` * k0 [reconstructed].

The statistics come from the neuron as context (``std=``, ``threshold=``; the
``adaptive_threshold`` neuron passes them, detached, per layer and timestep).  Without that
context, e.g. inside a stock ``snntorch.Leaky`` that passes only ``mem - thr``, or with
``tgo=False`` (the vanilla and "w/ AT" arms), the width is the constant k0.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .classic import Rectangular

TGO_STATS = ("std", "thr")


def tgo_width(statistic: Tensor, k0: float, V0: float) -> Tensor:
    """k = k0 * (1 + tanh(s - V0)), equal to Eq. 7's two branches. [published]"""
    return k0 * (1 + torch.tanh(statistic - V0))


class ThresholdDrivenRectangular(Rectangular):
    """Rectangular surrogate with TGO's per-call width (see module docstring)."""

    reads_membrane = False  # the width comes from the neuron's statistic (std or theta_t) in the context

    def __init__(self, k0: float = 1.0, V0: float = 1.0, tgo: bool = True, tgo_stat: str = "std",
                 k_min: float = 0.05):
        super().__init__(width=k0)
        if tgo_stat not in TGO_STATS:
            raise ValueError(f"tgo_stat must be one of {TGO_STATS} ('std': code, 'thr': paper), got {tgo_stat!r}")
        if not 0.0 < k_min <= 1.0:
            raise ValueError(f"k_min must be in (0, 1] (a fraction of k0), got {k_min}")
        self.k0, self.V0, self.tgo, self.tgo_stat, self.k_min = float(k0), float(V0), bool(tgo), tgo_stat, float(k_min)

    def call_params(self, x: Tensor, std: Tensor | None = None, threshold: Tensor | None = None,
                    **context: Any) -> dict:
        statistic = std if self.tgo_stat == "std" else threshold
        if not self.tgo or statistic is None:
            return self.params
        return {"width": self.width_of(torch.as_tensor(statistic, dtype=torch.float32, device=x.device))}

    def step_params(self, x: Tensor, contexts: list[dict], calls: int = 1) -> list[dict]:
        """Every step's width at once, equal to ``call_params``'s (``Surrogate.step_params``)."""
        statistics = [context.get("std" if self.tgo_stat == "std" else "threshold") for context in contexts]
        if not self.tgo or any(statistic is None for statistic in statistics):
            return super().step_params(x, contexts, calls)
        stacked = torch.stack([torch.as_tensor(s, dtype=torch.float32, device=x.device) for s in statistics])
        return [{"width": width} for width in self.width_of(stacked).unbind()]

    @torch.no_grad()
    def width_of(self, statistic: Tensor) -> Tensor:
        """k from the statistic s (std or theta_t), floored at k_min * k0 for s = theta_t."""
        width = tgo_width(statistic, self.k0, self.V0)
        return width.clamp_min(self.k_min * self.k0) if self.tgo_stat == "thr" else width

    def extra_repr(self) -> str:
        return f"k0={self.k0}, V0={self.V0}, tgo={self.tgo}, tgo_stat={self.tgo_stat}, k_min={self.k_min}"


def tgo(k0: float = 1.0, V0: float = 1.0, tgo: bool = True, tgo_stat: str = "std",
        k_min: float = 0.05) -> ThresholdDrivenRectangular:
    """DS-ATGO's TGO surrogate; ``tgo=False`` keeps the width at k0 (vanilla / "w/ AT" arms)."""
    return ThresholdDrivenRectangular(k0=k0, V0=V0, tgo=tgo, tgo_stat=tgo_stat, k_min=k_min)
