"""Classic fixed-shape surrogate gradients, ``x = u - threshold``.

Each factory returns a module usable as ``spike_grad=`` of ``snntorch.Leaky``.  Unlike
snnTorch 1.0.0 (ecosystem.md A.1) the sigmoid derivative is computed from
``torch.sigmoid`` (no NaN for very negative x) and the triangle is a real triangle.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import FixedSurrogate


class Rectangular(FixedSurrogate):
    """h(x) = (1/width) * 1[|x| < width/2]; area 1.  [published: STBP, Wu et al. 2018;
    DS-ATGO Eq. 4 uses width k = 1]"""

    @staticmethod
    def shape(x: Tensor, width) -> Tensor:
        return (x.abs() < width / 2).to(x.dtype) / width


class Triangle(FixedSurrogate):
    """h(x) = (1/width) * max(0, 1 - |x|/width); peak 1/width, half-support width, area 1.
    [published: TET's ZIF with gamma = width]"""

    @staticmethod
    def shape(x: Tensor, width) -> Tensor:
        return torch.clamp(1 - x.abs() / width, min=0) / width


class Sigmoid(FixedSurrogate):
    """h(x) = alpha * s(alpha x) * (1 - s(alpha x)), s the logistic; peak alpha/4, area 1.
    [published: spikingjelly's Sigmoid, default alpha = 4]"""

    @staticmethod
    def shape(x: Tensor, alpha) -> Tensor:
        s = torch.sigmoid(alpha * x)
        return alpha * s * (1 - s)


class ATan(FixedSurrogate):
    """h(x) = (alpha/2) / (1 + (pi/2 * alpha * x)^2); peak alpha/2, area 1.
    [published: Fang et al. 2021; snnTorch's and spikingjelly's ATan]"""

    @staticmethod
    def shape(x: Tensor, alpha) -> Tensor:
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)


class FastSigmoid(FixedSurrogate):
    """h(x) = 1 / (1 + slope * |x|)^2; peak 1, area 2/slope.
    [published: SuperSpike, Zenke & Ganguli 2018; snnTorch's fast_sigmoid]"""

    @staticmethod
    def shape(x: Tensor, slope) -> Tensor:
        return 1 / (1 + slope * x.abs()) ** 2


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
