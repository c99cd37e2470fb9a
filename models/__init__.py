"""Spiking neurons and models.  ``create_neuron(name, **kw)`` and ``create_model(name, **kw)``
build them by name; every model takes ``neuron=`` / ``surrogate=`` names (plus their options)
so any method plugs into any model."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..registry import Registry
from ..surrogates import create_surrogate
from .adaptive_threshold import AdaptiveThresholdLIF, freeze_running_thresholds
from .circulate_firing import CFNeuron, circulate_firing
from .layers import SeqToANN, TDBatchNorm, fold, unfold
from .neurons import LIF, SpikingNeuron, lif, plif
from .resnet import SpikingResNet, resnet18, resnet19
from .spikformer import SPIKINGJELLY_LIF, Spikformer, spikformer
from .spikformer_text import SPIKEBERT_LIF, SpikformerText
from .vgg import SpikingVGG, vgg13, vggsnn

NEURONS = Registry("neuron")
NEURONS.register()(lif)
NEURONS.register()(plif)
NEURONS.register()(circulate_firing)
NEURONS.register("adaptive_threshold")(AdaptiveThresholdLIF)

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
            bn_scale: float = 1.0, width: float = 1.0, neuron: str = "lif", surrogate: str = "atan",
            neuron_kwargs: dict | None = None, surrogate_kwargs: dict | None = None) -> SpikingVGG:
    make = neuron_factory(neuron, surrogate, neuron_kwargs, surrogate_kwargs, num_steps)
    return vggsnn(make, num_classes, num_steps, in_channels, input_size, bn_scale, width)


@MODELS.register("vgg13")
def _vgg13(num_classes: int = 200, num_steps: int = 4, in_channels: int = 3, input_size: int = 64,
           bn_scale: float = 1.0, width: float = 1.0, neuron: str = "lif", surrogate: str = "atan",
           neuron_kwargs: dict | None = None, surrogate_kwargs: dict | None = None) -> SpikingVGG:
    make = neuron_factory(neuron, surrogate, neuron_kwargs, surrogate_kwargs, num_steps)
    return vgg13(make, num_classes, num_steps, in_channels, input_size, bn_scale, width)


@MODELS.register("spikformer")
def _spikformer(num_classes: int = 10, num_steps: int = 4, in_channels: int = 3, preset: str = "cifar",
                depth: int | None = None, dim: int | None = None, heads: int | None = None,
                mlp_ratio: float | None = None, pool_stages: tuple | None = None, qkv_bias: bool | None = None,
                attn_scale: float | None = None, attn_threshold: float = 0.5, attn_threshold_option: str = "threshold",
                bn_scale: float = 1.0, neuron: str = "lif", surrogate: str = "sigmoid",
                neuron_kwargs: dict | None = None, surrogate_kwargs: dict | None = None) -> Spikformer:
    """Spikformer (models/spikformer.py; presets ``cifar`` 4-384 and ``dvs`` 2-256, None = preset value).
    With ``neuron="lif"`` the LIF options not given default to spikingjelly's LIF (``SPIKINGJELLY_LIF``);
    the surrogate defaults to sigmoid (alpha = 4).  The neuron after Q K^T V gets its threshold option
    ``attn_threshold_option`` (``theta`` for circulate_firing) set to ``attn_threshold``."""
    make, make_attn = spikformer_neurons(neuron, surrogate, neuron_kwargs, surrogate_kwargs, num_steps,
                                         SPIKINGJELLY_LIF, attn_threshold, attn_threshold_option)
    return spikformer(make, make_attn, num_classes, in_channels, num_steps, preset, bn_scale, depth=depth, dim=dim,
                      heads=heads, mlp_ratio=mlp_ratio, pool_stages=pool_stages, qkv_bias=qkv_bias,
                      attn_scale=attn_scale)


@MODELS.register("spikformer_text")
def _spikformer_text(num_classes: int = 2, num_steps: int = 32, in_channels: int = 28996, depth: int = 6,
                     dim: int = 768, heads: int = 8, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                     attn_scale: float = 0.125, max_length: int = 64, position: bool = True,
                     attn_threshold: float = 0.5, attn_threshold_option: str = "threshold", bn_scale: float = 1.0,
                     neuron: str = "lif", surrogate: str = "atan", neuron_kwargs: dict | None = None,
                     surrogate_kwargs: dict | None = None) -> SpikformerText:
    """Spiking text Transformer (models/spikformer_text.py) on token ids; ``in_channels`` is the vocabulary
    size (the engine passes the text dataset's ``in_channels``; 28996 = bert-base-cased).  Defaults: the
    SpikeBERT reference code's config; with ``neuron="lif"`` the LIF options not given default to its
    spikingjelly LIF (``SPIKEBERT_LIF``: tau = 10), surrogate atan (alpha = 2).  The attention neuron's
    threshold option as in ``spikformer``."""
    make, make_attn = spikformer_neurons(neuron, surrogate, neuron_kwargs, surrogate_kwargs, num_steps,
                                         SPIKEBERT_LIF, attn_threshold, attn_threshold_option)
    return SpikformerText(make, make_attn, in_channels, num_classes, num_steps, depth, dim, heads, mlp_ratio,
                          qkv_bias, attn_scale, max_length, position, bn_scale)


def spikformer_neurons(neuron: str, surrogate: str, neuron_kwargs: dict | None, surrogate_kwargs: dict | None,
                       num_steps: int, lif_defaults: dict, attn_threshold: float, attn_threshold_option: str
                       ) -> tuple[Callable[[], nn.Module], Callable[[], nn.Module]]:
    """Neuron factories of a Spikformer: every SN, and the one after Q K^T V with its threshold option
    ``attn_threshold_option`` set to ``attn_threshold``; ``lif_defaults`` fill the LIF options not given."""
    if neuron == "lif":
        neuron_kwargs = {**lif_defaults, **(neuron_kwargs or {})}
    make = neuron_factory(neuron, surrogate, neuron_kwargs, surrogate_kwargs, num_steps)
    try:
        make_attn = neuron_factory(neuron, surrogate, {**(neuron_kwargs or {}), attn_threshold_option: attn_threshold},
                                   surrogate_kwargs, num_steps)
    except ValueError as error:
        raise ValueError(f"{error}; the attention neuron's threshold goes to the neuron option named by the model "
                         f"option attn_threshold_option (now {attn_threshold_option!r})") from error
    return make, make_attn


@MODELS.register("spiking_unet")
def _spiking_unet(num_classes: int = 21, num_steps: int = 4, in_channels: int = 3, block: str = "sew_add",
                  width: float = 1.0, bn_scale: float = 1.0, decoder_channels: tuple = (256, 128, 64, 32, 16),
                  neuron: str = "lif", surrogate: str = "atan", neuron_kwargs: dict | None = None,
                  surrogate_kwargs: dict | None = None) -> nn.Module:
    """smp Unet on a spiking ResNet-18 encoder, spiking decoder (models/segmentation.py; imports smp)."""
    from .segmentation import spiking_unet

    make = neuron_factory(neuron, surrogate, neuron_kwargs, surrogate_kwargs, num_steps)
    encoder = dict(block=block, width=width, bn_scale=bn_scale, neuron=neuron, surrogate=surrogate,
                   neuron_kwargs=neuron_kwargs, surrogate_kwargs=surrogate_kwargs)
    return spiking_unet(num_classes, num_steps, in_channels, encoder, make, decoder_channels)


@MODELS.register("spiking_fpn")
def _spiking_fpn(num_classes: int = 21, num_steps: int = 4, in_channels: int = 3, block: str = "sew_add",
                 width: float = 1.0, bn_scale: float = 1.0, pyramid_channels: int = 256,
                 segmentation_channels: int = 128, dropout: float = 0.2, neuron: str = "lif", surrogate: str = "atan",
                 neuron_kwargs: dict | None = None, surrogate_kwargs: dict | None = None) -> nn.Module:
    """smp FPN on a spiking ResNet-18 encoder, spiking decoder (models/segmentation.py; imports smp)."""
    from .segmentation import spiking_fpn

    make = neuron_factory(neuron, surrogate, neuron_kwargs, surrogate_kwargs, num_steps)
    encoder = dict(block=block, width=width, bn_scale=bn_scale, neuron=neuron, surrogate=surrogate,
                   neuron_kwargs=neuron_kwargs, surrogate_kwargs=surrogate_kwargs)
    return spiking_fpn(num_classes, num_steps, in_channels, encoder, make, pyramid_channels, segmentation_channels,
                       dropout)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model, e.g. ``create_model("resnet19", num_classes=100, num_steps=2,
    neuron="plif", surrogate="triangle", surrogate_kwargs={"width": 1.0})``."""
    return MODELS.create(name, **kwargs)


def call_model_built_hooks(model: nn.Module) -> nn.Module:
    """Call ``on_model_built(model)`` of every module that defines it (what the engine does once before building the
    optimiser: A2SG's surrogates share their window searches, TLSG ties ``shared_t``); returns the model."""
    for module in list(model.modules()):
        if hasattr(module, "on_model_built"):
            module.on_model_built(model)
    return model


def spiking_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every spiking neuron in a model, in forward-definition order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SpikingNeuron)]

__all__ = [
    "CFNeuron", "circulate_firing", "AdaptiveThresholdLIF", "freeze_running_thresholds", "LIF", "MODELS", "SpikingVGG", "resnet18", "vgg13", "vggsnn", "NEURONS", "SeqToANN", "SpikingNeuron", "SpikingResNet", "Spikformer", "SpikformerText", "TDBatchNorm", "call_model_built_hooks", "create_model", "create_neuron",
    "fold", "lif", "neuron_factory", "plif", "resnet19", "spiking_layers", "spikformer", "unfold",
]
