"""Surrogate gradients.  ``create_surrogate(name, **kw)`` builds one by name; every object
works as ``spike_grad=`` of a stock ``snntorch.Leaky`` and as the surrogate of our neurons."""
from ..registry import Registry
from .base import FixedSurrogate, SpikeFunction, Surrogate
from .classic import atan, fast_sigmoid, rectangular, sigmoid, triangle

SURROGATES = Registry("surrogate")
for _factory in (rectangular, triangle, sigmoid, atan, fast_sigmoid):
    SURROGATES.register()(_factory)


def create_surrogate(name: str, **kwargs) -> Surrogate:
    """Build a fresh surrogate (one per spiking layer: adaptive ones keep per-layer state)."""
    return SURROGATES.create(name, **kwargs)


__all__ = [
    "SURROGATES", "FixedSurrogate", "SpikeFunction", "Surrogate", "create_surrogate",
    "atan", "fast_sigmoid", "rectangular", "sigmoid", "triangle",
]
