"""Stateless layers over time-first tensors: run once on the folded ``[T*B, ...]`` batch."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def scale_channels(channels: tuple[int, ...], width: float) -> list[int]:
    """Channel counts times ``width`` (> 0), rounded, at least 1 each: the models' ``width`` option."""
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"width scales every channel count and must be a finite number > 0, got {width!r}")
    return [max(1, round(c * width)) for c in channels]


def fold(x: Tensor) -> Tensor:
    """[T, B, ...] -> [T*B, ...]"""
    return x.flatten(0, 1)


def unfold(x: Tensor, num_steps: int) -> Tensor:
    """[T*B, ...] -> [T, B, ...]"""
    return x.unflatten(0, (num_steps, -1))


def global_mean_var(x: Tensor, dims: list[int] | tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, biased variance and count of ``x`` over ``dims`` across all torch.distributed processes
    (this process only when torch.distributed is not initialised), in float64.

    Each process takes its two-pass mean and variance in float64 and the processes' sums of x and x^2 are
    added in float64: one process with batch B and N processes with B/N then agree to float64 rounding, so
    the statistics rounded to float32 are almost always bitwise equal (tests/test_distributed.py).
    Differentiable: the backward sums dL/dmean and dL/dvar over processes (the adjoint of the all-reduce)
    and forms dx = (dL/dmean + 2 dL/dvar (x - mean)) / count in float32; no float64 copy of x is kept
    for it.  Returns float64 tensors shaped like ``x`` reduced over ``dims`` (kept dims dropped).
    """
    return _GlobalMoments.apply(x, tuple(dims))


def _all_reduce_sum(tensor: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


class _GlobalMoments(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, dims: tuple[int, ...]):
        local_var, local_mean = torch.var_mean(x.double(), dim=dims, correction=0)
        local_count = x.numel() / max(local_mean.numel(), 1)
        mean64, size = local_mean.reshape(-1), local_mean.numel()
        moments = _all_reduce_sum(torch.cat([mean64 * local_count, (local_var.reshape(-1) + mean64 * mean64) * local_count,
                                             mean64.new_full((1,), local_count)]))
        count = moments[-1]
        mean = moments[:size] / count
        var = (moments[size:2 * size] / count - mean * mean).clamp_min(0)
        mean, var = mean.reshape(local_mean.shape), var.reshape(local_mean.shape)
        ctx.dims = dims
        ctx.save_for_backward(x, mean, count)
        ctx.mark_non_differentiable(count)
        return mean, var, count

    @staticmethod
    def backward(ctx, grad_mean: Tensor, grad_var: Tensor, _):
        x, mean, count = ctx.saved_tensors
        grads = _all_reduce_sum(torch.stack([grad_mean, grad_var]).double())  # every process's loss reads them
        shape = [1 if d in ctx.dims or d - x.dim() in ctx.dims else -1 for d in range(x.dim())]
        g_mean, g_var, mean = (t.float().view(shape) for t in (grads[0] / count, grads[1] / count, mean))
        return (g_mean + 2 * g_var * (x.float() - mean)).to(x.dtype), None


class SeqToANN(nn.Sequential):
    """Apply stateless modules (conv, BN, linear, pooling) to [T, B, ...] in one call on [T*B, ...]."""

    def forward(self, x: Tensor) -> Tensor:
        return unfold(super().forward(fold(x)), x.shape[0])


class TDBatchNorm(nn.Module):
    """Threshold-dependent BN (tdBN) [published: Zheng et al. AAAI 2021]
    (docs/methods.md section "Batch normalisation"):
    y = scale * gamma_c * x_hat + beta_c with per-channel statistics over the folded (T*B, H, W).

    ``scale`` = alpha * V_th stays a separate constant (MPD-AGL's width reads mean(gamma),
    so it must not be folded into gamma).  scale = 1 is plain BN with gamma initialised to 1.
    Works on [N, C, H, W] (``dims=2``) and [N, C] (``dims=1``).

    ``sync = True`` (``--sync_bn``): in training the batch statistics are taken in float64 and all-reduced
    over processes (``global_mean_var``; differentiable), in one process too, so N processes with batch
    B/N normalise exactly as one process with batch B does (the float32 statistics are bitwise equal but
    for float64 values on a float32 rounding tie).  Works with gloo on CPU, unlike torch's SyncBatchNorm.
    """

    def __init__(self, num_features: int, scale: float = 1.0, dims: int = 2, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]
        self.norm = norm(num_features, eps=eps, momentum=momentum, affine=False)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.scale = float(scale)
        self.sync = False

    def forward(self, x: Tensor) -> Tensor:
        """y in x's dtype (bf16 stays bf16 under autocast: an fp32 affine after the normalisation would promote the
        activations, and the spiking layers and convolutions after it, to fp32), computed in fp32."""
        weight, norm = self.scale * self.weight, self.norm
        momentum = self._count_batch() if self.training else 0.0
        if self.sync and self.training:
            return self._synced_normalise(x, weight, momentum)
        return F.batch_norm(x, norm.running_mean, norm.running_var, weight, self.bias, self.training, momentum,
                            norm.eps)

    def _count_batch(self) -> float:
        """Count a training batch and return the running statistics' momentum (momentum None: the cumulative
        average, 1 / batches so far, as nn.BatchNorm)."""
        norm = self.norm
        norm.num_batches_tracked += 1
        return 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum

    def _synced_normalise(self, x: Tensor, weight: Tensor, momentum: float) -> Tensor:
        mean, var, n = global_mean_var(x, [0, *range(2, x.dim())])
        with torch.no_grad():
            self.norm.running_mean.mul_(1 - momentum).add_(momentum * mean.float())
            self.norm.running_var.mul_(1 - momentum).add_(momentum * (var * n / (n - 1)).float())
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean, var = mean.float().view(shape), var.float().view(shape)
        x_hat = (x.float() - mean) * torch.rsqrt(var + self.norm.eps)
        return torch.addcmul(self.bias.view(shape), x_hat, weight.view(shape)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, scale={self.scale}"

