"""Energy estimate of a spiking network from measured input rates (docs/diagnostics.md section "Energy")
[reconstructed; the usual convention].

    E_SNN = E_MAC * FLOPs_enc * (T if enc_times_T else 1)  +  E_AC * sum_l SOP_l
    SOP_l = fr_in,l * T * FLOPs_l          (Conv / Linear, per image)
    E_ANN = E_MAC * sum_l FLOPs_l          (the same layers as a non-spiking network, one pass)

- FLOPs_l: the MACs of layer l for one image and one timestep, counted from the shapes of every
  call of a forward hook: Conv ``out.numel() * C_in/groups * prod(kernel)``, Linear
  ``out.numel() * in_features``, divided by (images x T).  Every layer is assumed to run at every
  timestep (true for the suite's models: T is folded into the batch).
- fr_in,l = sum |x| / numel of the layer's input, summed per call as MACs_call * mean|x_call|, so
  integer SEW-ADD sums and signed / multi-level spikes count |value| events.
- The encoder (by default the first Conv/Linear called, whose input is the analog image) costs
  MACs: FLOPs_enc counted once, or T times with ``enc_times_T``.
- BN (folded), pooling, biases, residual additions and the neurons are free.
- Matrix products between activations (``@`` / ``matmul`` / ``bmm``; Spikformer's Q K^T V), if
  ``count_matmul``: MACs = out.numel() * K, and the AC count is the exact number of non-zero products
  weighted by |value|, sum_k (sum_i |a_ik|) (sum_j |b_kj|) [reconstructed].  The ANN does the same
  products as MACs.
- E_MAC = 4.6 pJ, E_AC = 0.9 pJ (32-bit float, 45 nm; Horowitz, ISSCC 2014) [published].

The meter accumulates device tensors in hooks (no host sync while running); ``report`` reads them once.
Input kinds are recorded per layer (``binary``, ``integer`` = SEW sums or signed / multi-level
spikes, ``real``), so a layer counted as ACs with a real-valued input (e.g. the classifier after
average pooling, whose input is a rate) is visible in the report.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
PJ_TO_MJ = 1e-9
MATMUL_FUNCTIONS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm)


def layer_macs(module: nn.Module, output: Tensor) -> int:
    """Multiply-accumulates of one call of a Conv or Linear layer (all samples of the call)."""
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def matmul_events(a: Tensor, b: Tensor) -> Tensor:
    """sum over batch, i, j, k of |a_ik| |b_kj| = sum_k (sum_i |a_ik|) (sum_j |b_kj|): the products of
    a @ b that are non-zero, weighted by |value| (so integer and signed operands count |value| events)."""
    a = a.detach().abs().double()
    b = b.detach().abs().double()
    a_cols = a if a.dim() == 1 else a.sum(-2)
    b_rows = b if b.dim() == 1 else b.sum(-1)
    return (a_cols * b_rows).sum()


class _LayerCounts:
    """Accumulators of one layer; tensors stay on the device until ``report``."""

    def __init__(self, kind: str, order: int):
        self.kind, self.order = kind, order
        self.macs = 0
        self.events: Tensor | float = 0.0   # sum over calls of MACs * mean|x| (matmul: exact products)
        self.abs_sum: Tensor | float = 0.0
        self.numel = 0
        self.integer: Tensor | bool = True
        self.binary: Tensor | bool = True

    def add(self, x: Tensor, macs: int, events: Tensor) -> None:
        x = x.detach()
        self.macs += macs
        self.events = self.events + events
        self.abs_sum = self.abs_sum + x.abs().sum(dtype=torch.float64)
        self.numel += x.numel()
        integer = (x == x.round()).all()
        self.integer = integer & self.integer
        self.binary = integer & (x >= 0).all() & (x <= 1).all() & self.binary


class _MatmulMode(TorchFunctionMode):
    def __init__(self, meter: "EnergyMeter"):
        super().__init__()
        self.meter = meter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if func in MATMUL_FUNCTIONS and len(args) >= 2 and all(isinstance(t, Tensor) for t in args[:2]):
            self.meter.record_matmul(args[0], args[1], output)
        return output


class EnergyMeter:
    """Context manager: ``with EnergyMeter(model) as meter: model(x); meter.report(images, T)``.

    Args:
        model: any model; every ``nn.Conv1d/2d/3d`` and ``nn.Linear`` is hooked.
        count_matmul: also count matrix products between activations (see module docstring).
    """

    def __init__(self, model: nn.Module, count_matmul: bool = True):
        self.model = model
        self.count_matmul = count_matmul
        self.layers: dict[str, _LayerCounts] = {}
        self._handles = []
        self._mode: _MatmulMode | None = None
        self._matmul_index = 0

    def __enter__(self) -> "EnergyMeter":
        for name, module in self.model.named_modules():
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                self._handles.append(module.register_forward_hook(self._hook(name)))
        if self.count_matmul:
            self._handles.append(self.model.register_forward_pre_hook(self._start_forward))
            self._mode = _MatmulMode(self)
            self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)
            self._mode = None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _counts(self, name: str, kind: str) -> _LayerCounts:
        if name not in self.layers:
            self.layers[name] = _LayerCounts(kind, len(self.layers))
        return self.layers[name]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            x = inputs[0]
            macs = layer_macs(module, output)
            events = macs * x.detach().abs().mean(dtype=torch.float64)
            self._counts(name, "linear" if isinstance(module, nn.Linear) else "conv").add(x, macs, events)
        return hook

    def _start_forward(self, module, inputs) -> None:
        self._matmul_index = 0

    def record_matmul(self, a: Tensor, b: Tensor, output: Tensor) -> None:
        """One activation-activation product, named ``matmul#i`` by its order within the forward."""
        name = f"matmul#{self._matmul_index}"
        self._matmul_index += 1
        macs = output.numel() * a.shape[-1]
        counts = self._counts(name, "matmul")
        counts.add(a, macs, matmul_events(a, b))
        counts.add(b, 0, torch.zeros((), dtype=torch.float64, device=b.device))  # rate and kind over both operands

    def report(self, images: int, num_steps: int, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ,
               enc_times_T: bool = False, encoder_layers: list[str] | None = None) -> dict:
        """Per-image energy (JSON-serialisable).

        Args:
            images: samples seen while the meter was on.
            num_steps: T.
            e_mac_pj, e_ac_pj: energy per MAC / AC in pJ.
            enc_times_T: count the encoder's MACs T times instead of once.
            encoder_layers: names of the layers computed as MACs; default: the first Conv/Linear called.
        """
        if images < 1 or num_steps < 1:
            raise ValueError(f"images and num_steps must be >= 1, got {images} and {num_steps}")
        if not self.layers:
            raise ValueError("the energy meter saw no Conv/Linear call; run the model inside `with EnergyMeter(model)`")
        if encoder_layers is None:
            encoder_layers = [min((n for n, c in self.layers.items() if c.kind != "matmul"),
                                  key=lambda n: self.layers[n].order)]
        unknown = sorted(set(encoder_layers) - set(self.layers))
        if unknown:
            raise ValueError(f"encoder_layers {unknown} were not called; layers seen: {sorted(self.layers)}")
        rows, snn_pj, ann_pj, total_sops = [], 0.0, 0.0, 0.0
        for name, c in sorted(self.layers.items(), key=lambda item: item[1].order):
            flops = c.macs / (images * num_steps)
            rate = float(c.abs_sum) / max(c.numel, 1)
            ann_pj += flops * e_mac_pj
            kind = "binary" if bool(c.binary) else "integer" if bool(c.integer) else "real"
            row = {"name": name, "kind": c.kind, "input": kind, "flops_per_step": flops, "input_rate": rate}
            if name in encoder_layers:
                macs = flops * (num_steps if enc_times_T else 1)
                row.update(role="MAC", macs=macs, sops=0.0, energy_mj=macs * e_mac_pj * PJ_TO_MJ)
            else:
                sops = float(c.events) / images
                total_sops += sops
                row.update(role="AC", macs=0.0, sops=sops, energy_mj=sops * e_ac_pj * PJ_TO_MJ)
            snn_pj += row["energy_mj"] / PJ_TO_MJ
            rows.append(row)
        return {
            "layers": rows, "images": images, "num_steps": num_steps, "e_mac_pj": e_mac_pj, "e_ac_pj": e_ac_pj,
            "enc_times_T": enc_times_T, "encoder_layers": list(encoder_layers), "total_sops": total_sops,
            "snn_energy_mj": snn_pj * PJ_TO_MJ, "ann_energy_mj": ann_pj * PJ_TO_MJ,
            "ann_over_snn": ann_pj / snn_pj if snn_pj > 0 else None,
        }
