"""Surrogate derivatives inside the Triton kernels, compiled from the surrogates' own ``shape`` functions.

A ``shape(x, **params)`` written in the vocabulary of ``surrogates/closed_form.py`` is compiled here a
second time, for Triton: ``kernel_shape`` rebuilds the function from the same code object with its
global names bound to the Triton implementations below (``div`` -> ``tl.div_rn``, IEEE division;
``logistic`` -> 1 / (1 + exp(-x)) with the CUDA math library's ``expf``, numpy's exp in the interpreter),
module-level float constants (e.g. ``HALF_PI``) as ``tl.constexpr``, and then ``triton.jit``.  The torch
path and the kernels therefore evaluate one closed form; they cannot drift apart.

``kernel_shape(shape)`` is None for a shape that uses anything outside the vocabulary (such a surrogate
keeps the torch backward).  Parameters reach the kernel as a table (``parameter_table``): fp32
[T, C, P], one row per step, C = 1 or the channel count, P the shape's numeric parameters in signature
order.  Switches (parameters whose value is None or a bool in every step, e.g. A2SG's ramp ``height=None``,
``clip``) must follow the numeric ones; ``kernel_parameters`` splits them off, and the kernels pass them
after the table's values as compile-time constants (``if clip:`` and ``height is None`` are resolved when
the kernel is compiled).
"""
from __future__ import annotations

import ast
import dis
import functools
import inspect
import os
import types
from typing import Callable

import torch
from torch import Tensor

from ..surrogates import closed_form

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # kernel_shape() is None for every shape
    triton = None

if triton is not None:

    @triton.jit
    def absolute(x):
        return tl.abs(x)

    @triton.jit
    def div(a, b):
        return tl.div_rn(a, b)

    @triton.jit
    def indicator(condition, like=None):
        return condition.to(tl.float32)

    @triton.jit
    def where(condition, a, b):
        return tl.where(condition, a, b)

    @triton.jit
    def clamp_min(x, low):
        return tl.maximum(x, low)

    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter has no libdevice

        @triton.jit
        def _exp(x):
            return tl.exp(x)
    else:

        @triton.jit
        def _exp(x):
            return libdevice.exp(x)

    @triton.jit
    def logistic(x):
        return tl.div_rn(1.0, 1.0 + _exp(-x))

    TRITON_VOCABULARY = {name: globals()[name] for name in closed_form.VOCABULARY}


def shape_parameters(shape: Callable) -> tuple[str, ...]:
    """The parameter names of ``shape(x, ...)`` after x, in signature order."""
    return tuple(inspect.signature(shape).parameters)[1:]


def kernel_parameters(shape: Callable, params: list[dict]) -> tuple[tuple[str, ...], tuple] | None:
    """(the names of ``shape``'s numeric parameters, for ``parameter_table``; the values of its trailing
    switches, for ``kernel_shape``) from the per-step parameter dicts; None when a parameter is missing, a
    switch changes between steps or precedes a numeric parameter."""
    names = shape_parameters(shape)
    if any(name not in step for step in params for name in names):
        return None
    switch = [all(isinstance(step[name], SWITCH_TYPES) for step in params) for name in names]
    numeric = switch.index(True) if True in switch else len(names)
    if not all(switch[numeric:]) or any(step[name] != params[0][name] for step in params for name in names[numeric:]):
        return None
    return names[:numeric], tuple(params[0][name] for name in names[numeric:]) if params else ()


SWITCH_TYPES = (bool, type(None))


@functools.cache
def kernel_shape(shape: Callable):
    """The Triton compilation of ``shape`` (a ``triton.jit`` function of (x, *params)), or None when
    triton is missing or ``shape`` uses a name outside the closed-form vocabulary (or a closure)."""
    if triton is None or not isinstance(shape, types.FunctionType) or shape.__code__.co_freevars:
        return None
    bound = {"tl": tl}  # the interpreter looks for triton.language among the globals
    for name in _global_names(shape.__code__):
        value = shape.__globals__.get(name)
        if name in TRITON_VOCABULARY and value is getattr(closed_form, name):
            bound[name] = TRITON_VOCABULARY[name]
        elif isinstance(value, float):
            bound[name] = tl.constexpr(value)
        else:
            return None
    for annotation in shape.__annotations__.values():  # names in type hints (Triton reads them, unused)
        bound.update({node.id: tl.constexpr(None) for node in ast.walk(ast.parse(str(annotation)))
                      if isinstance(node, ast.Name) and node.id not in bound})
    return triton.jit(types.FunctionType(shape.__code__, bound, shape.__name__))


def _global_names(code: types.CodeType) -> set[str]:
    """Names ``code`` (and code nested in it) looks up as globals."""
    names = {op.argval for op in dis.get_instructions(code) if op.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _global_names(constant)
    return names


def kernel_inputs(derivative: Callable, params: list[dict], step_shape: torch.Size,
                  device: torch.device) -> tuple | None:
    """(the Triton compilation of ``derivative``, its parameter table [T, 1 or C, P], its switches) for the
    backward kernels from the per-step parameter dicts; None when a value does not fit a table or a switch
    changes between steps (the torch backward runs then)."""
    split = kernel_parameters(derivative, params)
    table = None if split is None else parameter_table(params, split[0], step_shape, device)
    return None if table is None else (kernel_shape(derivative), table, split[1])


def parameter_table(params: list[dict], names: tuple[str, ...], step_shape: torch.Size,
                    device: torch.device) -> Tensor | None:
    """fp32 [T, C, P] from the per-step parameter dicts (floats, or tensors holding one value or one per
    channel, shaped to broadcast over a step [B, C, ...] = ``step_shape``); None if a value does not fit."""
    if any(name not in step for step in params for name in names):
        return None
    if not names:
        return torch.zeros(len(params), 1, 0, device=device)
    if all(isinstance(step[name], (int, float)) for step in params for name in names):
        return _constant_table(tuple(tuple(float(step[name]) for name in names) for step in params), device)
    columns = []
    for name in names:
        values = [per_channel(step[name], step_shape, device) for step in params]
        if any(value is None for value in values):
            return None
        columns.append(torch.stack(values))
    if len(columns) == 1:  # one launch fewer
        return columns[0].unsqueeze(-1)
    widest = max(column.shape[1] for column in columns)
    return torch.stack([column.expand(-1, widest) for column in columns], -1).contiguous()


def per_channel(value, step_shape: torch.Size, device: torch.device) -> Tensor | None:
    """``value`` as fp32 [1] (one value) or [C] (a tensor shaped [C, 1, ...] or [1, C, 1, ...] against a
    step [B, C, ...]); None for anything else."""
    if isinstance(value, (int, float)):
        return torch.full((1,), float(value), device=device)
    if not isinstance(value, Tensor):
        return None
    if value.numel() != 1:
        shape = list(value.shape)
        while shape and shape[0] == 1 and len(shape) > len(step_shape) - 1:
            shape.pop(0)
        if len(step_shape) < 2 or shape != [step_shape[1]] + [1] * (len(step_shape) - 2):
            return None
    return value.detach().to(device=device, dtype=torch.float32).reshape(-1)


@functools.lru_cache(maxsize=256)
def _constant_table(rows: tuple[tuple[float, ...], ...], device: torch.device) -> Tensor:
    """Cached, so a fixed surrogate's table is copied to the device once (a copy from the host would
    otherwise wait for the device at every call)."""
    return torch.tensor(rows, dtype=torch.float32, device=device).unsqueeze(1)
