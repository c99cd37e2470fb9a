"""Surrogate gradients.  ``create_surrogate(name, **kw)`` builds one by name; every object
works as ``spike_grad=`` of a stock ``snntorch.Leaky`` and as the surrogate of our neurons."""
from ..registry import Registry
from .a2sg import A2SG, a2sg_reconstructed
from .base import FixedSurrogate, SpikeFunction, Surrogate
from .classic import atan, fast_sigmoid, rectangular, sigmoid, triangle
from .learnable import learnable
from .mpd_agl import mpd_agl
from .tgo import tgo

SURROGATES = Registry("surrogate")
SURROGATES.register()(learnable)  # TLSG, surrogates/learnable.py
for _factory in (rectangular, triangle, sigmoid, atan, fast_sigmoid, tgo, mpd_agl):
    SURROGATES.register()(_factory)
SURROGATES.register("a2sg")(A2SG)  # the class is the factory: its signature lists every option
SURROGATES.register()(a2sg_reconstructed)


def create_surrogate(name: str, **kwargs) -> Surrogate:
    """Build a fresh surrogate (one per spiking layer: adaptive ones keep per-layer state)."""
    return SURROGATES.create(name, **kwargs)


__all__ = [
    "A2SG", "SURROGATES", "a2sg_reconstructed", "FixedSurrogate", "SpikeFunction", "Surrogate", "create_surrogate",
    "atan", "fast_sigmoid", "learnable", "rectangular", "sigmoid", "triangle", "tgo", "mpd_agl",
]
