"""A2SG's surrogate shapes h(x; w, ...), x = u - theta, window w > 0 (docs/methods.md, "A2SG").

The paper's shapes [paper, via summary], w the window's half-width beta (window [theta - w, theta + w]):

=============  =====================================================================================
``ramp``       x/(2w) + height on [-w, w], 0 outside: rises across the window (height - 1/2 at the
               lower edge, height at theta, height + 1/2 at the upper edge); area 2 w height.
               ``height=None``: 1/(2w) (area 1) [reconstructed default]; negative values clipped to 0
               unless ``clip=False`` [reconstructed].  The paper's asymmetric surrogate (ASY).
``triangle``   (1/w) max(0, 1 - |x|/w): the symmetric reference TRI, area 1.
``box``        1/(2w) on [-w, w]: the symmetric reference BOX, area 1.
=============  =====================================================================================

Our earlier reconstruction [reconstructed], asymmetry a in [0, 0.9], wR = w (1 + a) above threshold,
wL = w (1 - a) below; area 1 for every a, h(d) >= h(-d) for d > 0, a = 0 symmetric:

=================  ==============================================================================
``asym_triangle``  (1/w) max(0, 1 - x/wR) for x >= 0, (1/w) max(0, 1 + x/wL) for x < 0; peak 1/w
``asym_rect``      1/w on [-wL/2, wR/2], else 0                       (w is a full width here)
``asym_sigmoid``   (1/w) 4 s(x/c) (1 - s(x/c)), c = wR/4 (x >= 0), wL/4 (x < 0), s the logistic
``shifted``        (1/w) max(0, 1 - |x - d|/w), d = a w/2   (symmetric triangle moved up by d)
=================  ==============================================================================

Every shape is written in the closed-form vocabulary of ``closed_form.py`` (differentiable torch ops, so
Hessian-vector products work; the same functions are the derivatives the GPU kernels evaluate,
``models/triton_surrogates.py``) and takes only the keyword parameters listed in ``SHAPE_PARAMETERS``.  The
ramp's ``height=None`` and ``clip`` are switches (compile-time constants in the kernels).
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from .closed_form import absolute, clamp_min, div, indicator, logistic, where


def ramp(x: Tensor, w, height=None, clip=True) -> Tensor:
    """x/(2w) + height on [-w, w], 0 outside; height 1/(2w) by default [paper, via summary]."""
    value = div(x, 2 * w) + (div(1.0, 2 * w) if height is None else height)
    if clip:
        value = clamp_min(value, 0.0)
    return where(absolute(x) <= w, value, 0.0)


def triangle(x: Tensor, w) -> Tensor:
    """(1/w) max(0, 1 - |x|/w) [paper, via summary: TRI, area-normalised]."""
    return div(clamp_min(1 - div(absolute(x), w), 0.0), w)


def box(x: Tensor, w) -> Tensor:
    """1/(2w) on [-w, w] [paper, via summary: BOX, area-normalised]."""
    return div(indicator(absolute(x) <= w, x), 2 * w)


def asym_triangle(x: Tensor, w, a) -> Tensor:
    """(1/w) max(0, 1 - x/wR) above threshold, (1/w) max(0, 1 + x/wL) below [reconstructed]."""
    right = clamp_min(1 - div(x, w * (1 + a)), 0.0)
    left = clamp_min(1 + div(x, w * (1 - a)), 0.0)
    return div(where(x >= 0, right, left), w)


def asym_rect(x: Tensor, w, a) -> Tensor:
    """1/w on [-wL/2, wR/2] [reconstructed]."""
    return div(indicator(x >= -w * (1 - a) * 0.5, x) * indicator(x <= w * (1 + a) * 0.5, x), w)


def asym_sigmoid(x: Tensor, w, a) -> Tensor:
    """(1/w) 4 s(x/c)(1 - s(x/c)), c = wR/4 above and wL/4 below threshold [reconstructed].
    1 - s(z) is computed as s(-z), which keeps the positive tail accurate in fp32."""
    z = div(x, where(x >= 0, w * (1 + a) * 0.25, w * (1 - a) * 0.25))
    return div(4 * logistic(z) * logistic(-z), w)


def shifted(x: Tensor, w, a) -> Tensor:
    """Symmetric triangle moved up by a w/2: (1/w) max(0, 1 - |x - a w/2|/w) [reconstructed]."""
    return div(clamp_min(1 - div(absolute(x - a * w * 0.5), w), 0.0), w)


SHAPES: dict[str, Callable[..., Tensor]] = {
    f.__name__: f for f in (ramp, triangle, box, asym_triangle, asym_rect, asym_sigmoid, shifted)
}
# the keyword parameters of each shape besides x (A2SG.call_params builds exactly these)
SHAPE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "ramp": ("w", "height", "clip"), "triangle": ("w",), "box": ("w",),
    "asym_triangle": ("w", "a"), "asym_rect": ("w", "a"), "asym_sigmoid": ("w", "a"), "shifted": ("w", "a"),
}
ASYMMETRY_SHAPES = tuple(name for name, params in SHAPE_PARAMETERS.items() if "a" in params)
