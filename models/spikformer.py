"""Spikformer (Zhou et al., ICLR 2023; github.com/ZK-Zhou/spikformer), time-first
[T, B, C, H, W] -> logits [T, B, K].  docs/models.md section "Spikformer".

SPS, spiking patch splitting [published; layout from the reference code]::

    x_i = SN(BN(conv3x3(x_{i-1})))   widths D/8, D/4, D/2, D (no conv bias),
          each stage optionally followed by MaxPool(3, 2, 1)   (``pool_stages``)
    x   = x_4 + SN(BN(conv3x3(x_4)))                          (relative position embedding)
    tokens [T, B, N, D], N = H*W / 4**len(pool_stages)

Block [published]:  x = x + SSA(x);  x = x + MLP(x)   (residuals add spikes: not binary)

SSA, spiking self-attention [published]::

    Q, K, V = SN(BN(Linear(x)))  each, split into ``heads`` heads
    A       = SN_attn(Q K^T V * scale)   no softmax; SN_attn fires at threshold 0.5
    SSA(x)  = SN(BN(Linear(A)))

MLP [published]:  SN(BN(Linear(D -> r D))) -> SN(BN(Linear(r D -> D))).
Head [published]: mean over tokens -> Linear(D -> K) at every step (the prediction is the mean over T).

Every BN normalises per channel over the folded T*B*N tokens ([reference code]; BN1d on
[T*B*N, D] here, identical statistics to the reference code's BN1d on [T*B, D, N]).

Presets [reference code]:
- ``cifar``: Spikformer-4-384, 12 heads, mlp_ratio 4, pool after stages 3 and 4 (32x32 -> 64 tokens),
  Q/K/V Linear with bias (``nn.Linear`` default in cifar10/model.py), scale 0.125.
- ``dvs``: Spikformer-2-256, 16 heads, pool after every stage (128x128 -> 64 tokens), Q/K/V without
  bias (cifar10dvs/model.py: Conv1d(bias=False)), scale 0.25 (the DVS code's ``self.scale``).
Any option given explicitly overrides the preset.

Not reproduced: the reference code's unused modules (``norm1``/``norm2`` LayerNorms of every
block, the DVS model's ``pos_embed`` and ``norm``), which are counted in its parameter total but
never used in forward; and the DVS ``drop_path`` (built but not applied in the reference forward).
Init [reference code]: Linear weights truncated-normal std 0.02, biases 0; convs PyTorch default.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn

from .layers import SeqToANN, TDBatchNorm
from .resnet import conv_bn, fed_by, time_first_input

PRESETS = {
    "cifar": dict(depth=4, dim=384, heads=12, mlp_ratio=4.0, pool_stages=(2, 3), qkv_bias=True, attn_scale=0.125),
    "dvs": dict(depth=2, dim=256, heads=16, mlp_ratio=4.0, pool_stages=(0, 1, 2, 3), qkv_bias=False,
                attn_scale=0.25),
}

# spikingjelly's MultiStepLIFNode(tau=2, detach_reset=True) as used by Spikformer [reference code]:
# u[t] = 0.5 * u[t-1] * (1 - s[t-1]) + 0.5 * I[t], fire on u >= 1, reset detached.
SPIKINGJELLY_LIF = dict(preset="reference", decay=0.5, decay_input=True, reset_detach=True, threshold=1.0)


class TokenLinearBN(nn.Module):
    """Linear + BN1d on tokens [T, B, N, D_in] -> [T, B, N, D_out], with T*B*N folded into one batch."""

    def __init__(self, in_features: int, out_features: int, bias: bool, bn_scale: float):
        super().__init__()
        self.layers = SeqToANN(nn.Linear(in_features, out_features, bias=bias),
                               TDBatchNorm(out_features, scale=bn_scale, dims=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(1, 2)).unflatten(1, x.shape[1:3])


class LinearBNNeuron(nn.Module):
    """SN(BN(Linear(x))) on tokens; the neuron is linked to the BN feeding it."""

    def __init__(self, in_features: int, out_features: int, make_neuron: Callable[[], nn.Module], bias: bool = True,
                 bn_scale: float = 1.0):
        super().__init__()
        self.linear_bn = TokenLinearBN(in_features, out_features, bias, bn_scale)
        self.neuron = fed_by(self.linear_bn.layers, make_neuron())

    def forward(self, x: Tensor) -> Tensor:
        return self.neuron(self.linear_bn(x))


class SpikingPatchSplitting(nn.Module):
    """SPS: four Conv3x3-BN-SN stages (D/8, D/4, D/2, D), max-pool 3x3/2 after the stages listed in
    ``pool_stages`` (0-based), then the relative position embedding added residually."""

    def __init__(self, in_channels: int, dim: int, pool_stages: Sequence[int], make_neuron: Callable[[], nn.Module],
                 bn_scale: float = 1.0):
        super().__init__()
        widths = [dim // 8, dim // 4, dim // 2, dim]
        self.stages = nn.ModuleList()
        self.neurons = nn.ModuleList()
        self.pools = nn.ModuleList()
        channels = in_channels
        for i, width in enumerate(widths):
            stage = conv_bn(channels, width, 3, 1, bn_scale)
            self.stages.append(stage)
            self.neurons.append(fed_by(stage, make_neuron()))
            self.pools.append(SeqToANN(nn.MaxPool2d(3, 2, 1)) if i in pool_stages else nn.Identity())
            channels = width
        self.rpe = conv_bn(dim, dim, 3, 1, bn_scale)
        self.rpe_neuron = fed_by(self.rpe, make_neuron())

    def forward(self, x: Tensor) -> Tensor:
        for stage, neuron, pool in zip(self.stages, self.neurons, self.pools):
            x = pool(neuron(stage(x)))
        x = x + self.rpe_neuron(self.rpe(x))
        return x.flatten(-2).transpose(-1, -2)  # [T, B, D, H, W] -> [T, B, N, D]


class SpikingSelfAttention(nn.Module):
    """SSA: A = SN_attn(Q K^T V * scale) with Q, K, V spike tensors per head, no softmax; then
    SN(BN(Linear(A))).  ``attn_neuron`` is built with threshold 0.5 by the model."""

    def __init__(self, dim: int, heads: int, make_neuron: Callable[[], nn.Module],
                 make_attn_neuron: Callable[[], nn.Module], qkv_bias: bool, attn_scale: float, bn_scale: float = 1.0):
        super().__init__()
        self.heads, self.attn_scale = heads, attn_scale
        self.q = LinearBNNeuron(dim, dim, make_neuron, qkv_bias, bn_scale)
        self.k = LinearBNNeuron(dim, dim, make_neuron, qkv_bias, bn_scale)
        self.v = LinearBNNeuron(dim, dim, make_neuron, qkv_bias, bn_scale)
        self.attn_neuron = make_attn_neuron()
        self.proj = LinearBNNeuron(dim, dim, make_neuron, True, bn_scale)

    def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Q K^T V * scale per head on [T, B, N, D] tensors -> [T, B, N, D] (heads concatenated)."""
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(2, 3) for t in (q, k, v))  # [T, B, h, N, d]
        out = (q @ k.transpose(-2, -1)) @ v * self.attn_scale
        return out.transpose(2, 3).flatten(-2)

    def forward(self, x: Tensor, tokens=None) -> Tensor:
        """``tokens``: with packed tokens of padded sequences (``PackedTokens``, models/spikformer_text.py),
        Q K^T V is taken within each sequence, padding left out."""
        q, k, v = self.q(x), self.k(x), self.v(x)
        if tokens is None:
            mixed = self.attention(q, k, v)
        else:
            mixed = tokens.pack(self.attention(tokens.unpack(q), tokens.unpack(k), tokens.unpack(v)))
        return self.proj(self.attn_neuron(mixed))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, attn_scale={self.attn_scale}"


class SpikingMLP(nn.Sequential):
    """SN(BN(Linear(D -> hidden))) -> SN(BN(Linear(hidden -> D)))."""

    def __init__(self, dim: int, hidden: int, make_neuron: Callable[[], nn.Module], bn_scale: float = 1.0):
        super().__init__(LinearBNNeuron(dim, hidden, make_neuron, True, bn_scale),
                         LinearBNNeuron(hidden, dim, make_neuron, True, bn_scale))


class SpikformerBlock(nn.Module):
    """x = x + SSA(x); x = x + MLP(x)."""

    def __init__(self, attention: SpikingSelfAttention, mlp: SpikingMLP):
        super().__init__()
        self.attention, self.mlp = attention, mlp

    def forward(self, x: Tensor, tokens=None) -> Tensor:
        x = x + self.attention(x, tokens)
        return x + self.mlp(x)


class Spikformer(nn.Module):
    """SPS -> ``depth`` blocks -> token mean -> Linear, logits at every step [T, B, K].

    Args:
        make_neuron: zero-argument callable returning a fresh multi-step neuron (every SN but one).
        make_attn_neuron: the same for the neuron after Q K^T V (threshold 0.5 in Spikformer).
        depth, dim, heads, mlp_ratio: blocks, embedding width D, attention heads, MLP width ratio.
        pool_stages: 0-based SPS stages followed by MaxPool(3, 2, 1).
        qkv_bias: bias of the Q/K/V Linear layers.  attn_scale: the constant multiplying Q K^T V.
        num_steps: T; static [B, C, H, W] input is repeated T times (direct encoding).
    """

    def __init__(self, make_neuron: Callable[[], nn.Module], make_attn_neuron: Callable[[], nn.Module],
                 num_classes: int = 10, in_channels: int = 3, num_steps: int = 4, depth: int = 4, dim: int = 384,
                 heads: int = 12, mlp_ratio: float = 4.0, pool_stages: Sequence[int] = (2, 3), qkv_bias: bool = True,
                 attn_scale: float = 0.125, bn_scale: float = 1.0):
        super().__init__()
        check_options(depth, dim, heads, mlp_ratio, pool_stages, attn_scale)
        self.num_steps, self.in_channels = num_steps, in_channels
        self.patch_splitting = SpikingPatchSplitting(in_channels, dim, tuple(pool_stages), make_neuron, bn_scale)
        self.blocks = nn.Sequential(*(
            SpikformerBlock(SpikingSelfAttention(dim, heads, make_neuron, make_attn_neuron, qkv_bias, attn_scale,
                                                 bn_scale),
                            SpikingMLP(dim, int(dim * mlp_ratio), make_neuron, bn_scale))
            for _ in range(depth)))
        self.head = SeqToANN(nn.Linear(dim, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_splitting(time_first_input(x, self.num_steps, self.in_channels))
        return self.head(self.blocks(x).mean(2))


def check_options(depth: int, dim: int, heads: int, mlp_ratio: float, pool_stages: Sequence[int],
                  attn_scale: float) -> None:
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if dim < 8 or dim % 8:
        raise ValueError(f"dim must be a positive multiple of 8 (SPS widths D/8, D/4, D/2, D), got {dim}")
    if heads < 1 or dim % heads:
        raise ValueError(f"dim {dim} must be divisible by heads, got heads={heads}")
    if not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
    if not set(pool_stages) <= {0, 1, 2, 3}:
        raise ValueError(f"pool_stages lists 0-based SPS stages from {{0, 1, 2, 3}}, got {tuple(pool_stages)}")
    if not attn_scale > 0:
        raise ValueError(f"attn_scale must be > 0, got {attn_scale}")


def spikformer(make_neuron: Callable[[], nn.Module], make_attn_neuron: Callable[[], nn.Module],
               num_classes: int = 10, in_channels: int = 3, num_steps: int = 4, preset: str = "cifar",
               bn_scale: float = 1.0, **options) -> Spikformer:
    """Spikformer from a preset (``cifar``: 4-384; ``dvs``: 2-256 for 128x128 event frames) with any of
    ``depth, dim, heads, mlp_ratio, pool_stages, qkv_bias, attn_scale`` overriding it (None = preset)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown spikformer preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    unknown = sorted(set(options) - set(PRESETS[preset]))
    if unknown:
        raise ValueError(f"unknown spikformer option(s) {unknown}; valid: {sorted(PRESETS[preset])}")
    config = dict(PRESETS[preset], **{k: v for k, v in options.items() if v is not None})
    return Spikformer(make_neuron, make_attn_neuron, num_classes, in_channels, num_steps, bn_scale=bn_scale, **config)


__all__ = ["PRESETS", "SPIKINGJELLY_LIF", "LinearBNNeuron", "Spikformer", "SpikformerBlock", "SpikingMLP",
           "SpikingSelfAttention", "spikformer"]
