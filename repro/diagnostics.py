"""Diagnostics collected while a model runs.

``FiringRateMonitor``: per spiking layer, firing rate = sum |S| / (neurons x T x samples)
(|S| so multi-level and signed spikes count their events).  Counts accumulate as device
tensors in forward hooks, so collecting them needs no host-device synchronisation; read them
once with ``rates()``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .models import spiking_layers


class FiringRateMonitor:
    """Context manager: ``with FiringRateMonitor(model) as monitor: ...; monitor.rates()``."""

    def __init__(self, model: nn.Module):
        self.layers = spiking_layers(model)
        self.spikes: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self._handles = []

    def __enter__(self) -> "FiringRateMonitor":
        for name, module in self.layers:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module, inputs, output):
            total = output.detach().abs().sum(dtype=torch.float64)
            self.spikes[name] = self.spikes[name] + total if name in self.spikes else total
            self.counts[name] = self.counts.get(name, 0) + output.numel()
        return hook

    def totals(self) -> tuple[Tensor, Tensor]:
        """(spike sums, element counts) per layer as two tensors, for a cross-process reduce."""
        names = [n for n, _ in self.layers if n in self.spikes]
        if not names:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        spikes = torch.stack([self.spikes[n] for n in names])
        counts = torch.tensor([float(self.counts[n]) for n in names], dtype=torch.float64, device=spikes.device)
        return spikes, counts

    def rates(self, spikes: Tensor | None = None, counts: Tensor | None = None) -> dict[str, float]:
        """Per-layer firing rates; pass reduced ``totals()`` to combine processes."""
        if spikes is None:
            spikes, counts = self.totals()
        names = [n for n, _ in self.layers if n in self.spikes]
        return {n: float(r) for n, r in zip(names, (spikes / counts).tolist())}
