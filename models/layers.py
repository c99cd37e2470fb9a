"""Stateless layers over time-first tensors: run once on the folded ``[T*B, ...]`` batch."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def fold(x: Tensor) -> Tensor:
    """[T, B, ...] -> [T*B, ...]"""
    return x.flatten(0, 1)


def unfold(x: Tensor, num_steps: int) -> Tensor:
    """[T*B, ...] -> [T, B, ...]"""
    return x.unflatten(0, (num_steps, -1))


class SeqToANN(nn.Sequential):
    """Apply stateless modules (conv, BN, linear, pooling) to [T, B, ...] in one call on [T*B, ...]."""

    def forward(self, x: Tensor) -> Tensor:
        return unfold(super().forward(fold(x)), x.shape[0])


class TDBatchNorm(nn.Module):
    """Threshold-dependent BN (tdBN) [published: Zheng et al. AAAI 2021], common.md section 3:
    y = scale * gamma_c * x_hat + beta_c with per-channel statistics over the folded (T*B, H, W).

    ``scale`` = alpha * V_th stays a separate constant (MPD-AGL's width reads mean(gamma),
    so it must not be folded into gamma).  scale = 1 is plain BN with gamma initialised to 1.
    Works on [N, C, H, W] (``dims=2``) and [N, C] (``dims=1``).
    """

    def __init__(self, num_features: int, scale: float = 1.0, dims: int = 2, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]
        self.norm = norm(num_features, eps=eps, momentum=momentum, affine=False)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.norm(x) * (self.scale * self.weight).view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, scale={self.scale}"

