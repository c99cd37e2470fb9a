"""The step equations of the suite's neurons: the maths layer under the reference loops (``models/neurons.py``,
``models/circulate_firing.py``, the oracles), the fused paths (``models/fused.py``, ``models/fused_cf.py``) and
their double backward.  Differentiable torch functions of one step; the modules' docstrings give the
equations and their sources (docs/methods.md sections "Neuron conventions" and "Circulate-firing neurons,
learnable surrogate, balanced loss").
"""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


def charge(x: Tensor, mem: Tensor, spk: Tensor, decay: Tensor, threshold: float, reset: str, reset_decayed: bool,
           reset_detach: bool, decay_input: bool) -> Tensor:
    """u[t] from I[t] = ``x``, u[t-1] = ``mem`` and s[t-1] = ``spk`` (the LIF step of ``models/neurons.py``'s
    docstring); differentiable."""
    prev = spk.detach() if reset_detach else spk
    current = (1 - decay) * x if decay_input else x
    if reset == "zero":
        return decay * mem * (1 - prev) + current
    if reset == "subtract" and reset_decayed:
        return decay * (mem - threshold * prev) + current
    if reset == "subtract":
        return decay * mem + current - threshold * prev
    return decay * mem + current


class CFConfig(NamedTuple):
    """The switches of one circulate-firing step (``models/circulate_firing.py``'s docstring), captured at forward time (the fused backward reads no module state):
    the mode, r (theta, or 2 theta on the ring), ``reset_detach``, the output scale (1 or theta) and the
    levels l_j as Python numbers (the fp32 values of the ``levels`` buffer; no device read in the loops)."""

    mode: str
    reset_unit: float
    reset_detach: bool
    scale: float
    levels: tuple[float, ...]


# dx/dH of the up- and down-crossing inputs of ``crossing_inputs`` (the surrogate context's ``mem_slope``).
CROSSING_SLOPES = (1.0, -1.0)


def crossing_inputs(potential: Tensor, levels: Tensor, mode: str) -> list[tuple[Tensor, bool]]:
    """The surrogate inputs x [levels, ...] of one step with their ``fire_ge``: up-crossings H - l_j >= 0, then
    (not ``unsigned``) down-crossings -H - l_j >= 0 (signed) or > 0 (the ring [-theta, theta) is half-open).
    ``levels`` is [levels, 1, ...] (one 1 per dimension of ``potential``)."""
    up = (potential - levels, True)
    if mode == "unsigned":
        return [up]
    return [up, (-potential - levels, mode == "signed")]


def discharge(charged: Tensor, counts: list[Tensor], config: CFConfig) -> tuple[Tensor, Tensor]:
    """(U_t, output_t) from H_t and the crossing counts [up] or [up, down] (differentiable): the soft reset
    and the output."""
    up = counts[0]
    net = up - counts[1] if len(counts) > 1 else up
    reset = net.detach() if config.reset_detach else net
    return charged - config.reset_unit * reset, (up if config.mode == "wrap_binary" else net) * config.scale
