"""Sharpness of the loss at the trained weights (docs/diagnostics.md section "Sharpness").

- Top Hessian eigenvalue by power iteration on Hessian-vector products [reconstructed, standard]:
      v <- H v / ||H v||,   lambda = v . H v   (Rayleigh quotient; converges to the eigenvalue of
      largest magnitude; shifted by it when it is negative, so the result is the largest eigenvalue),
      H v = d/dw (g(w) . v) with g = dL/dw built with ``create_graph=True``.
  This works through spiking layers because every surrogate's backward is written with
  differentiable torch ops (double backward).  Defaults: 20 iterations, BN eval mode, buffers
  (running thresholds, controllers) frozen, the loss averaged over a few fixed batches.
- Hessian trace by Hutchinson's estimator, E_v[v . H v] with Rademacher v [published: Hutchinson 1989].
- Loss-landscape slices L(w + a d1 [+ b d2]) along random directions, filter-normalised
  [published: Li et al. 2018]: per output filter i of every weight with >= 2 dims,
  d_i <- d_i * ||w_i|| / ||d_i||; 1-D tensors (biases, BN, decays, surrogate parameters) get d = 0
  (``norm_1d="ignore"``, Li et al.'s default) or are normalised as one filter (``"filter"``).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .diagnostics import batch_images, frozen_state

NORM_1D = ("ignore", "filter")


def mean_logits_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """CE of the T-averaged logits (the engine's test loss)."""
    return F.cross_entropy(logits.float().mean(0), targets)


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def hessian_vector_product(closures: Sequence[Callable[[], Tensor]], params: Sequence[Tensor],
                           vector: Sequence[Tensor]) -> list[Tensor]:
    """H v of the mean of the closures' losses (one graph at a time, so memory stays one batch)."""
    total = [torch.zeros_like(p) for p in params]
    for closure in closures:
        loss = closure()
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        pairs = [(g, v) for g, v in zip(grads, vector) if g is not None]
        dot = sum((g * v).sum() for g, v in pairs) if pairs else None
        if dot is None or not dot.requires_grad:  # the gradient does not depend on the weights here
            continue
        hv = torch.autograd.grad(dot, params, allow_unused=True)
        for acc, h in zip(total, hv):
            if h is not None:
                acc.add_(h.detach(), alpha=1.0 / len(closures))
    return total


def _power_iteration(closures, params, vector, iterations: int, tolerance: float, shift: float) -> list[float]:
    """Rayleigh quotients of (H - shift I) along the power iteration started at ``vector``."""
    history: list[float] = []
    for _ in range(iterations):
        hv = [h - shift * v for h, v in zip(hessian_vector_product(closures, params, vector), vector)]
        history.append(float(_dot(vector, hv)))
        norm = math.sqrt(float(_dot(hv, hv)))
        if norm == 0.0:
            break
        vector = [h / norm for h in hv]
        if len(history) > 1 and abs(history[-1] - history[-2]) <= tolerance * abs(history[-1]):
            break
    return history


def top_hessian_eigenvalue(closures: Sequence[Callable[[], Tensor]], params: Sequence[Tensor], iterations: int = 20,
                           tolerance: float = 1e-3, seed: int = 0) -> dict:
    """Largest (algebraic) Hessian eigenvalue by power iteration (module docstring).

    Power iteration converges to the eigenvalue of largest magnitude, ``dominant``; when that one is
    negative, a second run on H - dominant I (whose spectrum is >= 0 with top lambda_max - dominant)
    gives lambda_max [reconstructed, standard shift].  Each run stops after ``iterations`` or when the
    relative change of the estimate is below ``tolerance``.  Returns ``{"eigenvalue" (lambda_max),
    "dominant", "iterations", "history"}``."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    params = [p for p in params if p.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    vector = [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p) for p in params]
    norm = math.sqrt(float(_dot(vector, vector)))
    vector = [v / norm for v in vector]
    history = _power_iteration(closures, params, vector, iterations, tolerance, 0.0)
    dominant, eigenvalue = history[-1], history[-1]
    if dominant < 0:
        shifted = _power_iteration(closures, params, vector, iterations, tolerance, dominant)
        history += [value + dominant for value in shifted]
        eigenvalue = history[-1]
    return {"eigenvalue": eigenvalue, "dominant": dominant, "iterations": len(history), "history": history}


def hessian_trace(closures: Sequence[Callable[[], Tensor]], params: Sequence[Tensor], samples: int = 10,
                  seed: int = 0) -> dict:
    """Hutchinson's estimate of tr(H) with Rademacher vectors: ``{"trace", "std_error", "samples"}``."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    params = [p for p in params if p.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(samples):
        vector = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in params]
        estimates.append(float(_dot(vector, hessian_vector_product(closures, params, vector))))
    values = torch.tensor(estimates, dtype=torch.float64)
    std_error = float(values.std() / math.sqrt(samples)) if samples > 1 else None
    return {"trace": float(values.mean()), "std_error": std_error, "samples": samples}


def filter_normalized_direction(params: Sequence[Tensor], generator: torch.Generator,
                                norm_1d: str = "ignore") -> list[Tensor]:
    """A random direction with the norm of every filter of the weights (module docstring)."""
    if norm_1d not in NORM_1D:
        raise ValueError(f"norm_1d must be one of {NORM_1D}, got {norm_1d!r}")
    directions = []
    for p in params:
        d = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p)
        w = p.detach()
        if p.dim() >= 2:
            filters = d.flatten(1)
            scale = w.flatten(1).norm(dim=1) / filters.norm(dim=1).clamp_min(1e-12)
            d = (filters * scale[:, None]).view_as(p)
        elif norm_1d == "filter":
            d = d * w.norm() / d.norm().clamp_min(1e-12)
        else:
            d = torch.zeros_like(p)
        directions.append(d)
    return directions


@torch.no_grad()
def loss_along(closures: Sequence[Callable[[], Tensor]], params: Sequence[Tensor],
               directions: Sequence[Sequence[Tensor]], coordinates: Iterable[Sequence[float]]) -> list[float]:
    """Mean loss at w + sum_i c_i d_i for every coordinate tuple c; the weights are restored after."""
    originals = [p.detach().clone() for p in params]
    losses = []
    try:
        for coordinate in coordinates:
            for index, (p, w) in enumerate(zip(params, originals)):
                p.copy_(w + sum(c * d[index] for c, d in zip(coordinate, directions)))
            losses.append(sum(float(closure()) for closure in closures) / len(closures))
    finally:
        for p, w in zip(params, originals):
            p.copy_(w)
    return losses


def model_closures(model: nn.Module, batches: Sequence, loss_fn: Callable | None = None) -> list[Callable[[], Tensor]]:
    """One closure per batch: the loss of ``model`` on it (default loss: CE of the mean logits)."""
    loss_fn = loss_fn or mean_logits_ce
    device = next(model.parameters()).device

    def closure_for(batch):
        inputs, targets, _ = batch_images(batch)
        if targets is None:
            raise ValueError("sharpness and landscape need (inputs, targets) batches")
        inputs, targets = inputs.to(device), targets.to(device)
        return lambda: loss_fn(model(inputs), targets)

    return [closure_for(batch) for batch in batches]


def model_sharpness(model: nn.Module, batches: Sequence, loss_fn: Callable | None = None, iterations: int = 20,
                    tolerance: float = 1e-3, seed: int = 0, trace_samples: int = 0) -> dict:
    """Top Hessian eigenvalue (and, if ``trace_samples`` > 0, the Hutchinson trace) of the loss of
    ``model`` on ``batches`` (1-4 fixed training batches), BN in eval mode, buffers frozen."""
    params = [p for p in model.parameters() if p.requires_grad]
    with frozen_state(model, "eval"):
        closures = model_closures(model, batches, loss_fn)
        result = top_hessian_eigenvalue(closures, params, iterations, tolerance, seed)
        if trace_samples:
            result["trace"] = hessian_trace(closures, params, trace_samples, seed)
    result.update(batches=len(batches), parameters=sum(p.numel() for p in params))
    return result


def model_landscape(model: nn.Module, batches: Sequence, loss_fn: Callable | None = None, dims: int = 1,
                    points: int = 21, span: float = 1.0, seed: int = 0, norm_1d: str = "ignore") -> dict:
    """Loss of ``model`` on ``batches`` along ``dims`` (1 or 2) filter-normalised random directions,
    on a grid of ``points`` per axis over [-span, span], BN in eval mode, buffers frozen.
    Returns ``{"dims", "coordinates": [points], "loss": [points] or [points][points] (row = 2nd axis)}``."""
    if dims not in (1, 2):
        raise ValueError(f"landscape dims must be 1 or 2, got {dims}")
    if points < 2 or not span > 0:
        raise ValueError(f"landscape needs points >= 2 and span > 0, got {points} and {span}")
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    directions = [filter_normalized_direction(params, generator, norm_1d) for _ in range(dims)]
    axis = torch.linspace(-span, span, points, dtype=torch.float64).tolist()
    grid = [(a,) for a in axis] if dims == 1 else [(a, b) for b in axis for a in axis]
    with frozen_state(model, "eval"):
        losses = loss_along(model_closures(model, batches, loss_fn), params, directions, grid)
    loss = losses if dims == 1 else [losses[i * points:(i + 1) * points] for i in range(points)]
    return {"dims": dims, "coordinates": axis, "loss": loss, "norm_1d": norm_1d, "seed": seed,
            "batches": len(batches)}
