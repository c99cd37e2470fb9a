"""Classic fixed-shape surrogate gradients, ``x = u - threshold``.

Each factory returns a module usable as ``spike_grad=`` of ``snntorch.Leaky``.  Unlike
snnTorch 1.0.0 the sigmoid derivative is computed from the logistic function (no NaN for very
negative x) and the triangle is a real triangle.

Each ``shape`` is written in the vocabulary of ``surrogates/closed_form.py``, so the same function is
also the derivative the GPU kernels evaluate (``models/triton_surrogates.py``).
"""
from __future__ import annotations

import math

from torch import Tensor

from .base import FixedSurrogate
from .closed_form import absolute, clamp_min, div, indicator, logistic

HALF_PI = math.pi / 2


class Rectangular(FixedSurrogate):
    """h(x) = (1/width) * 1[|x| < width/2]; area 1.  [published: STBP, Wu et al. 2018;
    DS-ATGO Eq. 4 uses width k = 1]"""

    @staticmethod
    def shape(x: Tensor, width) -> Tensor:
        return div(indicator(absolute(x) < width * 0.5), width)


class Triangle(FixedSurrogate):
    """h(x) = (1/width) * max(0, 1 - |x|/width); peak 1/width, half-support width, area 1.
    [reference code: TET's ZIF with gamma = width]"""

    @staticmethod
    def shape(x: Tensor, width) -> Tensor:
        return div(clamp_min(1 - div(absolute(x), width), 0.0), width)


class Sigmoid(FixedSurrogate):
    """h(x) = alpha * s(alpha x) * (1 - s(alpha x)), s the logistic; peak alpha/4, area 1.
    [library default: spikingjelly's Sigmoid, alpha = 4]"""

    @staticmethod
    def shape(x: Tensor, alpha) -> Tensor:
        s = logistic(alpha * x)
        return alpha * s * (1 - s)


class ATan(FixedSurrogate):
    """h(x) = (alpha/2) / (1 + (pi/2 * alpha * x)^2); peak alpha/2, area 1.
    [published: Fang et al. 2021; snnTorch's and spikingjelly's ATan]"""

    @staticmethod
    def shape(x: Tensor, alpha) -> Tensor:
        z = HALF_PI * alpha * x
        return div(alpha * 0.5, 1 + z * z)


class FastSigmoid(FixedSurrogate):
    """h(x) = 1 / (1 + slope * |x|)^2; peak 1, area 2/slope.
    [published: SuperSpike, Zenke & Ganguli 2018; snnTorch's fast_sigmoid]"""

    @staticmethod
    def shape(x: Tensor, slope) -> Tensor:
        d = 1 + slope * absolute(x)
        return div(1.0, d * d)


def rectangular(width: float = 1.0) -> Rectangular:
    return Rectangular(width=width)


def triangle(width: float = 1.0) -> Triangle:
    return Triangle(width=width)


def sigmoid(alpha: float = 4.0) -> Sigmoid:
    return Sigmoid(alpha=alpha)


def atan(alpha: float = 2.0) -> ATan:
    return ATan(alpha=alpha)


def fast_sigmoid(slope: float = 25.0) -> FastSigmoid:
    return FastSigmoid(slope=slope)
