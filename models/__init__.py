"""Spiking neurons and models.  ``create_neuron(name, **kw)`` and ``create_model(name, **kw)``
build them by name; every model takes ``neuron=`` / ``surrogate=`` names (plus their options)
so any method plugs into any model."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..registry import Registry
from ..surrogates import create_surrogate
from .layers import SeqToANN, TDBatchNorm, fold, unfold
from .neurons import LIF, SpikingNeuron, lif, plif
from .resnet import SpikingResNet, resnet18, resnet19
from .vgg import SpikingVGG, vgg13, vggsnn

NEURONS = Registry("neuron")
NEURONS.register()(lif)
NEURONS.register()(plif)

MODELS = Registry("model")


def create_neuron(name: str, surrogate: str = "atan", surrogate_kwargs: dict | None = None, **kwargs) -> nn.Module:
    """Build one neuron with a fresh surrogate of its own (adaptive surrogates keep per-layer state)."""
    return NEURONS.create(name, surrogate=create_surrogate(surrogate, **(surrogate_kwargs or {})), **kwargs)


def neuron_factory(neuron: str = "lif", surrogate: str = "atan", neuron_kwargs: dict | None = None,
                   surrogate_kwargs: dict | None = None, num_steps: int | None = None) -> Callable[[], nn.Module]:
    """A zero-argument callable that builds a fresh neuron per spiking layer.  Names and options
    are checked now, so a typo fails before the model is built."""
    NEURONS.get(neuron)
    kwargs = dict(neuron_kwargs or {}, num_steps=num_steps)

    def make() -> nn.Module:
        return create_neuron(neuron, surrogate, surrogate_kwargs, **kwargs)

    make()  # validate options once
    return make


@MODELS.register("resnet19")
def _resnet19(num_classes: int = 10, num_steps: int = 4, in_channels: int = 3, block: str = "sew_add",
              width: float = 1.0, bn_scale: float = 1.0, neuron: str = "lif", surrogate: str = "atan",
              neuron_kwargs: dict | None = None, surrogate_kwargs: dict | None = None) -> SpikingResNet:
    make = neuron_factory(neuron, surrogate, neuron_kwargs, surrogate_kwargs, num_steps)
    return resnet19(make, num_classes, num_steps, in_channels, block, width, bn_scale)


@MODELS.register("resnet18")
def _resnet18(num_classes: int = 1000, num_steps: int = 4, in_channels: int = 3, stem: str = "imagenet",
              block: str = "sew_add", width: float = 1.0, bn_scale: float = 1.0, neuron: str = "lif",
              surrogate: str = "atan", neuron_kwargs: dict | None = None,
              surrogate_kwargs: dict | None = None) -> SpikingResNet:
    make = neuron_factory(neuron, surrogate, neuron_kwargs, surrogate_kwargs, num_steps)
    return resnet18(make, num_classes, num_steps, in_channels, stem, block, width, bn_scale)


@MODELS.register("vggsnn")
def _vggsnn(num_classes: int = 10, num_steps: int = 10, in_channels: int = 2, input_size: int = 48,
            bn_scale: float = 1.0, neuron: str = "lif", surrogate: str = "atan", neuron_kwargs: dict | None = None,
            surrogate_kwargs: dict | None = None) -> SpikingVGG:
    make = neuron_factory(neuron, surrogate, neuron_kwargs, surrogate_kwargs, num_steps)
    return vggsnn(make, num_classes, num_steps, in_channels, input_size, bn_scale)


@MODELS.register("vgg13")
def _vgg13(num_classes: int = 200, num_steps: int = 4, in_channels: int = 3, input_size: int = 64,
           bn_scale: float = 1.0, neuron: str = "lif", surrogate: str = "atan", neuron_kwargs: dict | None = None,
           surrogate_kwargs: dict | None = None) -> SpikingVGG:
    make = neuron_factory(neuron, surrogate, neuron_kwargs, surrogate_kwargs, num_steps)
    return vgg13(make, num_classes, num_steps, in_channels, input_size, bn_scale)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model, e.g. ``create_model("resnet19", num_classes=100, num_steps=2,
    neuron="plif", surrogate="triangle", surrogate_kwargs={"width": 1.0})``."""
    return MODELS.create(name, **kwargs)


def spiking_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every spiking neuron in a model, in forward-definition order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SpikingNeuron)]

__all__ = [
    "LIF", "MODELS", "SpikingVGG", "resnet18", "vgg13", "vggsnn", "NEURONS", "SeqToANN", "SpikingNeuron", "SpikingResNet", "TDBatchNorm", "create_model", "create_neuron",
    "fold", "lif", "neuron_factory", "plif", "resnet19", "spiking_layers", "unfold",
]
