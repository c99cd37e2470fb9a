"""Spiking VGGs (docs/methods.md section "Backbones"), time-first [T, B, C, H, W] -> logits [T, B, K];
every conv is 3x3, stride 1, padding 1, no bias, followed by BN + SN; "A" is a 2x2 average pool (no neuron).

- ``vggsnn`` [reference code, TET / MPD-AGL]: input 2x48x48 event frames, T=10,
  64-128-A-256-256-A-512-512-A-512-512-A -> flatten 512*3*3 = 4608 -> Linear(4608 -> 10, bias).
  8 spiking layers.
- ``vgg13`` [reconstructed] (Tiny-ImageNet): 3x64x64,
  64-64-A-128-128-A-256-256-A-512-512-A-512-512-A -> 512*2*2 = 2048 -> Linear(2048 -> 200).
  Results with it are a deviation from the (unknown) paper setup.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn

from .layers import SeqToANN, scale_channels
from .resnet import conv_bn, fed_by, time_first_input

VGGSNN_LAYERS = (64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A")
VGG13_LAYERS = (64, 64, "A", 128, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A")


class SpikingVGG(nn.Module):
    """Conv-BN-SN stack given as a list of channel counts and "A" (average pool 2), then a Linear
    classifier on the flattened features of every step.  ``width`` scales every channel count."""

    def __init__(self, layers: Sequence, make_neuron: Callable[[], nn.Module], num_classes: int, in_channels: int,
                 input_size: int, num_steps: int, bn_scale: float = 1.0, width: float = 1.0):
        super().__init__()
        self.num_steps, self.in_channels = num_steps, in_channels
        blocks, channels, size = [], in_channels, input_size
        for item in layers:
            if item == "A":
                blocks.append(SeqToANN(nn.AvgPool2d(2)))
                size //= 2
            else:
                out_channels, = scale_channels((item,), width)
                conv = conv_bn(channels, out_channels, 3, 1, bn_scale)
                blocks += [conv, fed_by(conv, make_neuron())]
                channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.classifier = SeqToANN(nn.Flatten(), nn.Linear(channels * size * size, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(time_first_input(x, self.num_steps, self.in_channels)))


def vggsnn(make_neuron: Callable[[], nn.Module], num_classes: int = 10, num_steps: int = 10, in_channels: int = 2,
           input_size: int = 48, bn_scale: float = 1.0, width: float = 1.0) -> SpikingVGG:
    return SpikingVGG(VGGSNN_LAYERS, make_neuron, num_classes, in_channels, input_size, num_steps, bn_scale, width)


def vgg13(make_neuron: Callable[[], nn.Module], num_classes: int = 200, num_steps: int = 4, in_channels: int = 3,
          input_size: int = 64, bn_scale: float = 1.0, width: float = 1.0) -> SpikingVGG:
    return SpikingVGG(VGG13_LAYERS, make_neuron, num_classes, in_channels, input_size, num_steps, bn_scale, width)
