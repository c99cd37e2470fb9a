"""Independent plain-PyTorch references shared by the tests (written from the specs, not from the suite)."""
import math

import torch


def normal_cdf(z: float) -> float:
    """Phi(z) of the standard normal."""
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


class RectSpike(torch.autograd.Function):
    """The reference codes' spike function: forward x >= 0; backward (1/k) 1[|x| < k/2], k a plain number."""

    @staticmethod
    def forward(ctx, x, width):
        ctx.save_for_backward(x)
        ctx.width = width
        return (x >= 0).float()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() < ctx.width / 2).float() / ctx.width, None
