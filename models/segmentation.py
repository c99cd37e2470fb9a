"""Spiking semantic segmentation on segmentation-models-pytorch (smp) 0.6.0 decoders
[reconstructed; docs/models.md section "Spiking segmentation"].

- **Encoder**: our spiking ResNet-18 (``resnet18`` with the ImageNet stem, SEW-ADD blocks by default),
  registered in smp through its custom-encoder contract as ``spiking_resnet18``.  It returns the
  depth + 1 feature maps smp expects (input, /2 stem spikes, /4, /8, /16, /32 stage outputs).  T, the
  neuron and the surrogate live in the registered ``params`` (smp never forwards extra model kwargs
  to registered encoders), so each distinct configuration is registered under its own name.
- **Decoder**: smp's Unet or FPN decoder, made spiking: every ``nn.ReLU`` becomes one of our multi-step
  neurons, linked to the norm layer before it.  smp runs on 4-D tensors, so the whole smp network runs
  on the folded batch [T*B, C, H, W] and each neuron unfolds to [T, B, ...], integrates over time and
  folds back.  Decoder norms (BatchNorm2d for Unet, GroupNorm for FPN) see the folded batch, so BN
  statistics span (T, B, H, W) as tdBN.
- **Readout**: smp's segmentation head (a conv, plus bilinear x4 for FPN) gives logits per step;
  the model returns their mean over T, [B, classes, H, W].  H and W must be multiples of 32.
- Weights: always ``encoder_weights=None`` (no hub download, works with ``HF_HUB_OFFLINE=1``).
  ``load_classification_weights`` copies a ``resnet18`` classification checkpoint into the encoder.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, NamedTuple

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import Tensor, nn

from . import neuron_factory
from .layers import fold, unfold
from .resnet import resnet18, time_first_input

ENCODER_NAME = "spiking_resnet18"
OUTPUT_STRIDE = 32


class SpikingResNetEncoder(nn.Module, EncoderMixin):
    """smp encoder made of the parts of our ``resnet18`` (ImageNet stem: conv7x7/2 + BN + SN, max-pool
    3x3/2; four stages of two BasicBlocks).  Parameter names equal those of the classification model
    (``stem.*``, ``layers.*``), so its checkpoints load directly (``load_classification_weights``).

    Input: the folded time-major batch [T*B, C, H, W] (step t of sample b at row t*B + b).
    Output: [input, stem spikes /2, stage 1 /4, stage 2 /8, stage 3 /16, stage 4 /32] (first
    ``depth + 1``), each folded [T*B, C_i, H_i, W_i].  SEW-ADD stage outputs are integer-valued.
    """

    def __init__(self, depth: int = 5, output_stride: int = OUTPUT_STRIDE, num_steps: int = 4, in_channels: int = 3,
                 block: str = "sew_add", width: float = 1.0, bn_scale: float = 1.0, neuron: str = "lif",
                 surrogate: str = "atan", neuron_kwargs: dict | None = None, surrogate_kwargs: dict | None = None):
        nn.Module.__init__(self)
        EncoderMixin.__init__(self)
        if not 1 <= depth <= 5:
            raise ValueError(f"encoder depth must be in 1..5, got {depth}")
        if output_stride != OUTPUT_STRIDE:
            raise ValueError(f"{ENCODER_NAME} supports only output_stride={OUTPUT_STRIDE} (no dilated stages), "
                             f"got {output_stride}")
        make_neuron = neuron_factory(neuron, surrogate, neuron_kwargs, surrogate_kwargs, num_steps)
        backbone = resnet18(make_neuron, 1, num_steps, in_channels, "imagenet", block, width, bn_scale)
        self.num_steps = num_steps
        self.stem, self.stem_neuron, self.stem_pool = backbone.stem, backbone.stem_neuron, backbone.stem_pool
        self.layers = backbone.layers
        self.stage_bounds = stage_bounds(self.layers)
        stem_channels = backbone.stem[0].out_channels
        stage_channels = [self.layers[end - 1].conv2[0].out_channels for _, end in self.stage_bounds]
        self._depth = depth
        self._in_channels = in_channels
        self._out_channels = [in_channels, stem_channels, *stage_channels]
        self._output_stride = output_stride

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """smp calls this with the model's ``in_channels``; ours are fixed by the registered params."""
        if in_channels != self._in_channels:
            raise ValueError(f"encoder was registered with in_channels={self._in_channels}, model asks for "
                             f"{in_channels}; build it through spiking_unet/spiking_fpn(in_channels=...)")

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.shape[0] % self.num_steps:
            raise ValueError(f"encoder expects the folded batch [T*B, C, H, W] with T={self.num_steps}, "
                             f"got {x.shape[0]} rows")
        features = [x]
        h = self.stem_neuron(self.stem(unfold(x, self.num_steps)))
        features.append(fold(h))
        h = self.stem_pool(h)
        for start, end in self.stage_bounds[: self._depth - 1]:
            h = self.layers[start:end](h)
            features.append(fold(h))
        return features[: self._depth + 1]


def stage_bounds(layers: nn.Sequential) -> list[tuple[int, int]]:
    """(start, end) block indices of each stage: a stage starts at every block with a strided conv1
    (the first stage at block 0)."""
    starts = [0] + [i for i, b in enumerate(layers) if i and b.conv1[0].stride != (1, 1)]
    return list(zip(starts, starts[1:] + [len(layers)]))


def register_encoder(**params) -> str:
    """Register ``SpikingResNetEncoder`` with these constructor params in smp's encoder table and
    return its name: ``spiking_resnet18`` for the defaults, ``spiking_resnet18-<hash>`` otherwise."""
    defaults = dict(num_steps=4, in_channels=3, block="sew_add", width=1.0, bn_scale=1.0, neuron="lif",
                    surrogate="atan", neuron_kwargs=None, surrogate_kwargs=None)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown encoder option(s) {unknown}; valid: {sorted(defaults)}")
    params = dict(defaults, **params)
    name = ENCODER_NAME
    if params != defaults:
        digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=repr).encode()).hexdigest()[:12]
        name = f"{ENCODER_NAME}-{digest}"
    smp.encoders.encoders[name] = {"encoder": SpikingResNetEncoder, "params": params, "pretrained_settings": {}}
    return name


class TimeFoldedNeuron(nn.Module):
    """A multi-step neuron inside a network that runs on the folded batch: [T*B, ...] -> unfold to
    [T, B, ...] -> neuron -> fold back."""

    def __init__(self, neuron: nn.Module, num_steps: int):
        super().__init__()
        self.neuron, self.num_steps = neuron, num_steps

    def forward(self, x: Tensor) -> Tensor:
        return fold(self.neuron(unfold(x, self.num_steps)))


NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


def replace_relus(module: nn.Module, make_neuron: Callable[[], nn.Module], num_steps: int) -> int:
    """Replace every ``nn.ReLU`` below ``module`` by a ``TimeFoldedNeuron``; a neuron whose preceding
    sibling is a norm layer is linked to it (``set_input_norm``).  Returns how many were replaced."""
    count = 0
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if isinstance(child, nn.ReLU):
                neuron = make_neuron()
                if i and isinstance(children[i - 1][1], NORMS):
                    before = children[i - 2][1] if i > 1 else None
                    neuron.set_input_norm(children[i - 1][1],
                                          before if isinstance(before, (nn.Conv2d, nn.Linear)) else None)
                setattr(parent, name, TimeFoldedNeuron(neuron, num_steps))
                count += 1
    return count


class SpikingSegmentation(nn.Module):
    """An smp segmentation network built on ``SpikingResNetEncoder``, with a spiking decoder.

    forward: [B, C, H, W] (repeated T times: direct encoding) or frames [T, B, C, H, W], H and W
    multiples of 32 -> logits averaged over T, [B, classes, H, W].
    """

    def __init__(self, network: nn.Module, make_neuron: Callable[[], nn.Module], num_steps: int, in_channels: int):
        super().__init__()
        if not isinstance(network.encoder, SpikingResNetEncoder):
            raise ValueError("network must use a spiking_resnet18 encoder (see register_encoder)")
        self.network, self.num_steps, self.in_channels = network, num_steps, in_channels
        if replace_relus(network.decoder, make_neuron, num_steps) == 0:
            raise RuntimeError("found no ReLU to replace in the smp decoder; check the installed smp version (0.6.0)")

    @property
    def encoder(self) -> SpikingResNetEncoder:
        return self.network.encoder

    def load_pretrained(self, source: str | Path | dict) -> "LoadReport":
        """Fine-tuning: initialise the encoder from a resnet18 classification checkpoint."""
        return load_classification_weights(self, source)

    def forward(self, x: Tensor) -> Tensor:
        x = time_first_input(x, self.num_steps, self.in_channels)
        height, width = x.shape[-2:]
        if height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
            padded = [-(-size // OUTPUT_STRIDE) * OUTPUT_STRIDE for size in (height, width)]
            raise ValueError(f"segmentation input height and width must be multiples of {OUTPUT_STRIDE}, got "
                             f"{height}x{width}; pad or resize to {padded[0]}x{padded[1]}")
        return unfold(self.network(fold(x)), self.num_steps).mean(0)


def spiking_unet(num_classes: int, num_steps: int, in_channels: int, encoder_params: dict,
                 make_neuron: Callable[[], nn.Module],
                 decoder_channels: tuple = (256, 128, 64, 32, 16)) -> SpikingSegmentation:
    """smp ``Unet`` (nearest upsampling, Conv-BN-ReLU decoder blocks, ReLU -> SN) on the spiking encoder."""
    encoder = register_encoder(num_steps=num_steps, in_channels=in_channels, **encoder_params)
    network = smp.Unet(encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes,
                       decoder_channels=tuple(decoder_channels))
    return SpikingSegmentation(network, make_neuron, num_steps, in_channels)


def spiking_fpn(num_classes: int, num_steps: int, in_channels: int, encoder_params: dict,
                make_neuron: Callable[[], nn.Module], pyramid_channels: int = 256, segmentation_channels: int = 128,
                dropout: float = 0.2) -> SpikingSegmentation:
    """smp ``FPN`` (Conv-GroupNorm(32)-ReLU segmentation blocks, ReLU -> SN; ``segmentation_channels``
    must be a multiple of 32) on the spiking encoder."""
    if segmentation_channels % 32:
        raise ValueError(f"segmentation_channels must be a multiple of 32 (FPN uses GroupNorm(32)), "
                         f"got {segmentation_channels}")
    encoder = register_encoder(num_steps=num_steps, in_channels=in_channels, **encoder_params)
    network = smp.FPN(encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes,
                      decoder_pyramid_channels=pyramid_channels, decoder_segmentation_channels=segmentation_channels,
                      decoder_dropout=dropout)
    return SpikingSegmentation(network, make_neuron, num_steps, in_channels)


class LoadReport(NamedTuple):
    missing_keys: list[str]  # encoder entries the checkpoint did not provide (left as initialised)
    unexpected_keys: list[str]  # checkpoint entries with no place in the encoder (e.g. the classifier)


def load_classification_weights(model: nn.Module, source: str | Path | dict) -> LoadReport:
    """Copy the weights of a ``resnet18`` classification model (ImageNet stem, same width and block)
    into the encoder of ``model`` (a ``SpikingSegmentation`` or the encoder itself).

    ``source``: a path to ``checkpoint.pt`` / ``best_model.pt`` written by the engine (a dict with key
    "model"), such a dict, or a plain state_dict.  Matching names are copied; the classifier and any
    other extra entries are reported as unexpected, encoder entries absent from the checkpoint as missing.
    """
    state = torch.load(source, map_location="cpu", weights_only=True) if isinstance(source, (str, Path)) else source
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    encoder = model if isinstance(model, SpikingResNetEncoder) else model.encoder
    own = encoder.state_dict()
    matched = {k: v for k, v in state.items() if k in own}
    if not matched:
        raise ValueError("no entry of the checkpoint matches the encoder (expected names like 'stem.0.weight', "
                         "'layers.0.conv1.0.weight'): use the checkpoint of a resnet18 classification model")
    wrong = [f"{k}: checkpoint {tuple(v.shape)}, encoder {tuple(own[k].shape)}"
             for k, v in matched.items() if v.shape != own[k].shape]
    if wrong:
        raise ValueError("checkpoint shapes differ from the encoder (train the classifier with model=resnet18, "
                         "stem='imagenet' and the same width and in_channels): " + "; ".join(wrong))
    encoder.load_state_dict(matched, strict=False)
    return LoadReport(sorted(set(own) - set(matched)), sorted(set(state) - set(own)))


register_encoder()  # ``smp.Unet("spiking_resnet18", encoder_weights=None)`` works once this module is imported

__all__ = ["ENCODER_NAME", "LoadReport", "SpikingResNetEncoder", "SpikingSegmentation", "TimeFoldedNeuron",
           "load_classification_weights", "register_encoder", "replace_relus", "spiking_fpn", "spiking_unet"]
