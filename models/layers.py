"""Stateless layers over time-first tensors: run once on the folded ``[T*B, ...]`` batch."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def fold(x: Tensor) -> Tensor:
    """[T, B, ...] -> [T*B, ...]"""
    return x.flatten(0, 1)


def unfold(x: Tensor, num_steps: int) -> Tensor:
    """[T*B, ...] -> [T, B, ...]"""
    return x.unflatten(0, (num_steps, -1))


def global_mean_var(x: Tensor, dims: list[int] | tuple[int, ...], dtype: torch.dtype = torch.float32,
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, biased variance and count of ``x`` over ``dims`` across all torch.distributed processes
    (this process only when torch.distributed is not initialised).

    Each process takes its exact (two-pass) mean and variance in ``dtype``; the moments are combined in
    float64 (Chan et al.), so the result carries ``dtype`` rounding only, like the statistics of the
    whole batch in one process.  Differentiable (the all-reduce is torch.distributed.nn's); float64 results.
    """
    from torch.distributed.nn.functional import all_reduce

    local_var, local_mean = torch.var_mean(x.to(dtype), dim=dims, correction=0)
    local_count = x.numel() / max(local_mean.numel(), 1)
    mean64 = local_mean.double().reshape(-1)
    moments = torch.cat([mean64 * local_count, (local_var.double().reshape(-1) + mean64 * mean64) * local_count,
                         mean64.new_full((1,), local_count)])
    if dist.is_available() and dist.is_initialized():
        moments = all_reduce(moments) if x.requires_grad else _all_reduce_no_grad(moments)
    size = mean64.numel()
    count = moments[-1]
    mean = moments[:size] / count
    var = (moments[size:2 * size] / count - mean * mean).clamp_min(0)
    return mean.reshape(local_mean.shape), var.reshape(local_mean.shape), count


def _all_reduce_no_grad(tensor: Tensor) -> Tensor:
    dist.all_reduce(tensor)
    return tensor


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

    ``sync = True``: in training under torch.distributed, the batch statistics are all-reduced over
    processes (``global_mean_var``; differentiable), so N processes with batch B/N match one
    process with batch B.  Works with gloo on CPU, unlike torch's SyncBatchNorm.
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
        shape = (1, -1) + (1,) * (x.dim() - 2)
        synced = self.sync and self.training and dist.is_available() and dist.is_initialized() \
            and dist.get_world_size() > 1
        x_hat = self._synced_normalise(x, shape) if synced else self.norm(x)
        return x_hat * (self.scale * self.weight).view(shape) + self.bias.view(shape)

    def _synced_normalise(self, x: Tensor, shape: tuple) -> Tensor:
        mean, var, n = global_mean_var(x, [0, *range(2, x.dim())])
        with torch.no_grad():
            momentum = self.norm.momentum
            self.norm.running_mean.mul_(1 - momentum).add_(momentum * mean.float())
            self.norm.running_var.mul_(1 - momentum).add_(momentum * (var * n / (n - 1)).float())
            self.norm.num_batches_tracked += 1
        mean, var = mean.float().view(shape), var.float().view(shape)
        return ((x.float() - mean) * torch.rsqrt(var + self.norm.eps)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, scale={self.scale}"

