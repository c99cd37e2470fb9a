"""Classification losses on per-step logits ``[T, B, K]`` (common.md section 9).

Every loss is computed in fp32; prediction is always the mean of the logits over T.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import Registry

LOSSES = Registry("loss")


class MeanLogitCE(nn.Module):
    """l = CE(mean_t O_t, y) [reference code: MPD-AGL, DS-ATGO]; with ``label_smoothing`` = eps the
    target is (1 - eps) onehot + eps / K [reference code: DS-ATGO, eps = 0.1]."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits.float().mean(0), target, label_smoothing=self.label_smoothing)


class TETLoss(nn.Module):
    """TET [published: Deng et al. ICLR 2022]:
    L = (1/T) sum_t [(1 - lam) CE(O_t, y) + lam MSE(O_t, phi)], lam = 1e-3, phi = 1.0,
    the MSE over all logits of the batch.  Results trained with it must be labelled TET."""

    def __init__(self, lam: float = 1e-3, phi: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"TET lam must be in [0, 1], got {lam}")
        self.lam, self.phi, self.label_smoothing = lam, phi, label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        steps = logits.shape[0]
        ce = F.cross_entropy(logits.flatten(0, 1), target.repeat(steps), label_smoothing=self.label_smoothing)
        mse = ((logits - self.phi) ** 2).mean()
        return (1 - self.lam) * ce + self.lam * mse


@LOSSES.register("ce")
def ce(label_smoothing: float = 0.0) -> MeanLogitCE:
    return MeanLogitCE(label_smoothing)


@LOSSES.register("ls_ce")
def ls_ce(label_smoothing: float = 0.1) -> MeanLogitCE:
    return MeanLogitCE(label_smoothing)


@LOSSES.register("tet")
def tet(lam: float = 1e-3, phi: float = 1.0, label_smoothing: float = 0.0) -> TETLoss:
    return TETLoss(lam, phi, label_smoothing)


def create_loss(name: str, **kwargs) -> nn.Module:
    return LOSSES.create(name, **kwargs)
