"""The vocabulary surrogate derivatives are written in, so that one closed form serves torch and the GPU kernels.

A surrogate's ``shape(x, **params)`` (the derivative h(x), x = u - theta) written with only

- Python arithmetic ``+ - *``, comparisons, and numeric literals or module-level float constants;
- the functions below: ``absolute``, ``div``, ``indicator``, ``where``, ``clamp_min``, ``logistic``

is evaluated by torch as it stands (these functions are torch's), and ``models/triton_surrogates.py``
compiles the *same function object* for the Triton kernels by binding these names to Triton
implementations (``div`` to IEEE division ``tl.div_rn``, ``logistic`` to 1 / (1 + expf(-x))).  There is no
second copy of any formula.  Division is always ``div`` (Triton's ``/`` is an approximate division on
the GPU); halving is ``* 0.5`` (exact in both).

What is bitwise equal and what is not (docs/performance.md, "What is bitwise equal"): with the
parameters given as fp32 tensors, torch and the kernels perform the same fp32 operations in the same
order, so the rational shapes (rectangular, triangle, atan, fast_sigmoid) agree bitwise wherever both
round as IEEE; ``sigmoid`` uses each backend's exp and agrees to a few ulp.  With Python-float
parameters torch folds constants such as ``pi/2 * alpha`` in float64 and divides a tensor by a float
through a host reciprocal on CUDA, so values can differ in the last bit.
"""
from __future__ import annotations

import torch
from torch import Tensor

VOCABULARY = ("absolute", "div", "indicator", "where", "clamp_min", "logistic")


def absolute(x: Tensor) -> Tensor:
    return x.abs()


def div(a, b):
    """a / b (IEEE division of tensors; a Python number over a tensor is torch's reciprocal times a)."""
    return a / b


def indicator(condition: Tensor, like: Tensor | None = None) -> Tensor:
    """1.0 where ``condition`` holds, else 0.0, in ``like``'s dtype (fp32 without ``like``; the kernels
    compute in fp32 either way)."""
    return condition.to(torch.float32 if like is None else like.dtype)


def where(condition: Tensor, a, b) -> Tensor:
    return torch.where(condition, a, b)


def clamp_min(x: Tensor, low: float) -> Tensor:
    return torch.clamp(x, min=low)


def logistic(x: Tensor) -> Tensor:
    """The logistic sigmoid 1 / (1 + exp(-x))."""
    return torch.sigmoid(x)
