"""Spiking ResNets, time-first [T, B, C, H, W] -> logits [T, B, K].

ResNet-19, SEW-ADD [reference code, MPD-AGL and DS-ATGO] (docs/methods.md section "Backbones")::

    stem   conv3x3 3->128 + BN + SN
    B1-B3  BasicBlock 128, B4 128->256 s2 (+downsample), B5-B6 256,
    B7     256->512 s2 (+downsample), B8 512
    head   global avg-pool -> Linear 512->256 (no bias) + BN1d + SN -> Linear 256->K (no bias)

BasicBlock ``sew_add``: out = SN(BN(conv2(SN(BN(conv1(x)))))) + identity, no SN after the add
(the residual stream is integer-valued); identity = x or SN(BN(conv1x1(x))).
``block="spiking"``: out = SN(BN(conv2(...)) + identity) with identity = x or BN(conv1x1(x)).
20 spiking layers in ResNet-19.  Convs: Kaiming-normal (fan_out, ReLU gain).
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from .layers import SeqToANN, TDBatchNorm, scale_channels

BLOCKS = ("sew_add", "spiking")


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int, bn_scale: float) -> SeqToANN:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
    return SeqToANN(conv, TDBatchNorm(out_channels, scale=bn_scale))


def fed_by(norm_layer: SeqToANN, neuron: nn.Module) -> nn.Module:
    """Record which BN (the last module of ``norm_layer``) and which conv / linear (its first) feed
    ``neuron``, and return the neuron."""
    first = norm_layer[0]
    neuron.set_input_norm(norm_layer[-1], first if isinstance(first, (nn.Conv2d, nn.Linear)) else None)
    return neuron


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, make_neuron: Callable[[], nn.Module],
                 block: str = "sew_add", bn_scale: float = 1.0):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; choose one of: {', '.join(BLOCKS)}")
        self.block = block
        self.conv1 = conv_bn(in_channels, out_channels, 3, stride, bn_scale)
        self.neuron1 = fed_by(self.conv1, make_neuron())
        self.conv2 = conv_bn(out_channels, out_channels, 3, 1, bn_scale)
        self.neuron2 = fed_by(self.conv2, make_neuron())
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = conv_bn(in_channels, out_channels, 1, stride, bn_scale)
            if block == "sew_add":
                self.downsample_neuron = fed_by(self.downsample, make_neuron())

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        if self.downsample is not None:
            identity = self.downsample(x)
            if self.block == "sew_add":
                identity = self.downsample_neuron(identity)
        out = self.conv2(self.neuron1(self.conv1(x)))
        if self.block == "sew_add":
            return self.neuron2(out) + identity
        return self.neuron2(out + identity)


class SpikingResNet(nn.Module):
    """Stem -> stages of BasicBlocks -> head, with one neuron factory for every spiking layer.

    Args:
        stages: (channels, blocks, first stride) per stage.
        stem_channels, stem_kernel, stem_stride, stem_pool: the stem (ImageNet: 64, 7, 2, True).
        head_hidden: width of the hidden FC + BN1d + SN of the head (ResNet-19: 256); 0 for none.
        classifier_bias: bias of the last Linear (ResNet-19: none; ResNet-18: torchvision's, with bias).
        num_steps: T; static [B, C, H, W] input is repeated T times (direct encoding).
        make_neuron: zero-argument callable returning a fresh multi-step neuron.
    """

    def __init__(self, stages, make_neuron: Callable[[], nn.Module], num_classes: int = 10, in_channels: int = 3,
                 stem_channels: int = 128, stem_kernel: int = 3, stem_stride: int = 1, stem_pool: bool = False,
                 head_hidden: int = 256, num_steps: int = 4, block: str = "sew_add", bn_scale: float = 1.0,
                 classifier_bias: bool = False):
        super().__init__()
        self.num_steps = num_steps
        self.in_channels = in_channels
        self.stem = conv_bn(in_channels, stem_channels, stem_kernel, stem_stride, bn_scale)
        self.stem_neuron = fed_by(self.stem, make_neuron())
        self.stem_pool = SeqToANN(nn.MaxPool2d(3, 2, 1)) if stem_pool else nn.Identity()
        layers, channels = [], stem_channels
        for out_channels, blocks, stride in stages:
            for i in range(blocks):
                layers.append(BasicBlock(channels, out_channels, stride if i == 0 else 1, make_neuron, block, bn_scale))
                channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.pool = SeqToANN(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if head_hidden:
            self.head_hidden = SeqToANN(nn.Linear(channels, head_hidden, bias=False), TDBatchNorm(head_hidden, bn_scale, dims=1))
            self.head_neuron = fed_by(self.head_hidden, make_neuron())
            channels = head_hidden
        else:
            self.head_hidden = None
        self.classifier = SeqToANN(nn.Linear(channels, num_classes, bias=classifier_bias))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = time_first_input(x, self.num_steps, self.in_channels)
        x = self.stem_pool(self.stem_neuron(self.stem(x)))
        x = self.pool(self.layers(x))
        if self.head_hidden is not None:
            x = self.head_neuron(self.head_hidden(x))
        return self.classifier(x)


def time_first_input(x: Tensor, num_steps: int, in_channels: int) -> Tensor:
    """Accept static images [B, C, H, W] (repeated T times: direct encoding) or frames
    [T, B, C, H, W]; anything else is an error that says what is expected."""
    if x.dim() == 4 and x.shape[1] == in_channels:
        return x.unsqueeze(0).expand(num_steps, *x.shape)
    if x.dim() == 5 and x.shape[2] == in_channels:
        if x.shape[0] != num_steps:
            raise ValueError(f"model built for T={num_steps} got {x.shape[0]} timesteps (input {tuple(x.shape)}, "
                             "expected [T, B, C, H, W]); set num_steps to match the data")
        return x
    raise ValueError(f"expected input [T, B, C, H, W] (or static [B, C, H, W]) with C={in_channels}, "
                     f"got shape {tuple(x.shape)}")


def resnet19(make_neuron: Callable[[], nn.Module], num_classes: int = 10, num_steps: int = 4, in_channels: int = 3,
             block: str = "sew_add", width: float = 1.0, bn_scale: float = 1.0) -> SpikingResNet:
    """ResNet-19 (module docstring).  ``width`` scales every channel count (1.0 = the paper's
    128/256/512 with a 256-unit head, about 12.6M parameters); smaller widths are for CPU runs."""
    c = scale_channels((128, 256, 512, 256), width)
    return SpikingResNet([(c[0], 3, 1), (c[1], 3, 2), (c[2], 2, 2)], make_neuron, num_classes, in_channels,
                         stem_channels=c[0], head_hidden=c[3], num_steps=num_steps, block=block, bn_scale=bn_scale)


def resnet18(make_neuron: Callable[[], nn.Module], num_classes: int = 1000, num_steps: int = 4, in_channels: int = 3,
             stem: str = "imagenet", block: str = "sew_add", width: float = 1.0, bn_scale: float = 1.0) -> SpikingResNet:
    """Spiking ResNet-18 [reconstructed; docs/methods.md section "Backbones"]: stages 64/128/256/512 x 2
    BasicBlocks, strides 1/2/2/2, head GAP -> Linear(512 -> K).  ``stem="imagenet"``: conv7x7/2 + BN + SN +
    max-pool 3x3/2 (224x224 input); ``stem="cifar"``: conv3x3/1, no pool (the TET/ASGL CIFAR variant).
    ``block="sew_add"`` (default, as ResNet-19) or ``"spiking"`` (SN after the add, plain spiking ResNet)."""
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
    c = scale_channels((64, 128, 256, 512), width)
    imagenet = stem == "imagenet"
    return SpikingResNet([(c[0], 2, 1), (c[1], 2, 2), (c[2], 2, 2), (c[3], 2, 2)], make_neuron, num_classes,
                         in_channels, stem_channels=c[0], stem_kernel=7 if imagenet else 3,
                         stem_stride=2 if imagenet else 1, stem_pool=imagenet, head_hidden=0, num_steps=num_steps,
                         block=block, bn_scale=bn_scale, classifier_bias=True)
