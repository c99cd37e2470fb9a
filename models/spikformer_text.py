"""Spiking text Transformer: token ids [B, N] -> logits [T, B, K], built from the Spikformer blocks of
models/spikformer.py.  docs/methods.md, "Circulate-firing recipes" (the text Spikformer of SpikeBERT,
Lv et al., and CPG-PE, Lv et al. NeurIPS 2024) [reconstructed]::

    e_i  = E[id_i] + P[i]                    token and (optional) learned position embedding
    x_i  = SN(BN(Linear(e_i)))               token encoder, the same input at every step t = 1..T
    x    = Block_depth(... Block_1(x))       Spikformer blocks: x + SSA(x), then x + MLP(x)
    y[t] = Linear(mean_i x_i[t])             mean over the real tokens, logits at every step

Padding (id 0) is left out exactly: the real tokens of the batch are packed into one sequence of M
tokens ([T, 1, M, D]; :class:`PackedTokens`), so every per-token layer, every BN statistic and every
neuron sees only real tokens (firing rates and energy count no padding), and attention unpacks them to
[T, B, N, D] with zeros at the padding, so Q K^T V sums over the real tokens of the same sentence only.
Hence the logits do not depend on how much padding follows a sentence (tested), in training and in eval.

Where the SpikeBERT reference code (github.com/Lvchangze/SpikeBERT, model/new_spikformer.py) differs
[reference code]: it binarises the embedding with a Heaviside step (no encoder layer), normalises with
LayerNorm instead of BN, has no position embedding (its blocks are then blind to word order) and
averages over padding too.  Ours keeps the vision Spikformer's BN blocks, adds the Linear-BN-SN token
encoder (the text analogue of SPS's first stage: the real-valued embedding enters one weight layer, the
blocks get spikes), a learned position embedding (``position=False`` drops it) and the padding mask.
The config of the reference code: depth 6, dim 768, T = 32, LIF tau = 10 (decay 0.9, hard reset,
reset detached), theta = 1, attention neuron at theta / 2, scale 0.125, Q/K/V Linear with bias, 8 heads.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .layers import SeqToANN
from .spikformer import (SPIKINGJELLY_LIF, LinearBNNeuron, SpikformerBlock, SpikingMLP, SpikingSelfAttention,
                         check_options)

PAD_ID = 0
# SpikeBERT's spikingjelly LIFNode(tau=10, detach_reset=True) [reference code]: decay 1 - 1/tau = 0.9
SPIKEBERT_LIF = {**SPIKINGJELLY_LIF, "decay": 0.9}


class PackedTokens:
    """The real tokens of a padded batch of token ids, ``mask`` [B, N] (True = real token), kept packed.

    ``pack``: [T, B, N, ...] -> [T, 1, M, ...] with M = mask.sum(); ``unpack`` is its inverse with zeros
    at the padding; ``mean``: packed [T, 1, M, D] -> per-sentence mean over its real tokens [T, B, D]."""

    def __init__(self, mask: Tensor):
        self.mask = mask
        self.lengths = mask.sum(1)

    def pack(self, x: Tensor) -> Tensor:
        return x[:, self.mask].unsqueeze(1)

    def unpack(self, x: Tensor) -> Tensor:
        out = x.new_zeros(x.shape[0], *self.mask.shape, *x.shape[3:])
        out[:, self.mask] = x[:, 0]
        return out

    def mean(self, x: Tensor) -> Tensor:
        return self.unpack(x).sum(2) / self.lengths.clamp_min(1).unsqueeze(-1).to(x.dtype)


class SpikformerText(nn.Module):
    """Token embedding -> token encoder -> ``depth`` Spikformer blocks -> token mean -> Linear.

    Args:
        make_neuron: zero-argument callable returning a fresh multi-step neuron (every SN but one).
        make_attn_neuron: the same for the neuron after Q K^T V (threshold theta / 2).
        vocab_size: the embedding's number of token ids (id 0 is padding).
        num_classes, num_steps: K and T.
        depth, dim, heads, mlp_ratio, qkv_bias, attn_scale: as in models/spikformer.py.
        max_length: longest sentence (size of the position embedding).
        position: add a learned position embedding.
    """

    def __init__(self, make_neuron: Callable[[], nn.Module], make_attn_neuron: Callable[[], nn.Module],
                 vocab_size: int, num_classes: int = 2, num_steps: int = 32, depth: int = 6, dim: int = 768,
                 heads: int = 8, mlp_ratio: float = 4.0, qkv_bias: bool = True, attn_scale: float = 0.125,
                 max_length: int = 64, position: bool = True, bn_scale: float = 1.0):
        super().__init__()
        check_options(depth, dim, heads, mlp_ratio, (), attn_scale)
        if vocab_size < 2 or max_length < 1:
            raise ValueError(f"vocab_size must be >= 2 and max_length >= 1, got {vocab_size} and {max_length}")
        self.num_steps, self.max_length = num_steps, max_length
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.position = nn.Embedding(max_length, dim) if position else None
        self.encoder = LinearBNNeuron(dim, dim, make_neuron, True, bn_scale)
        self.blocks = nn.ModuleList(
            SpikformerBlock(SpikingSelfAttention(dim, heads, make_neuron, make_attn_neuron, qkv_bias, attn_scale,
                                                 bn_scale),
                            SpikingMLP(dim, int(dim * mlp_ratio), make_neuron, bn_scale))
            for _ in range(depth))
        self.head = SeqToANN(nn.Linear(dim, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.dim() != 2 or ids.dtype.is_floating_point:
            raise ValueError(f"spikformer_text takes integer token ids [B, N], got {ids.dtype} {tuple(ids.shape)}")
        tokens = PackedTokens(ids != PAD_ID)
        x = self.embedding(ids[tokens.mask])  # [M, D]
        if self.position is not None:
            if tokens.lengths.max() > self.max_length:
                raise ValueError(f"a sentence has {tokens.lengths.max().item()} tokens, more than max_length = "
                                 f"{self.max_length}; raise --model.max_length or truncate the data")
            positions = tokens.mask.cumsum(1) - 1  # index among the sentence's real tokens
            x = x + self.position(positions[tokens.mask])
        x = self.encoder(x.expand(self.num_steps, 1, *x.shape))  # spikes [T, 1, M, D]
        for block in self.blocks:
            x = block(x, tokens)
        return self.head(tokens.mean(x))


__all__ = ["PAD_ID", "SPIKEBERT_LIF", "PackedTokens", "SpikformerText"]
