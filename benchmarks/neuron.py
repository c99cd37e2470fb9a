"""Benchmark one spiking layer, forward + backward, on [T, B, C, H, W] (issue 8; docs/performance.md).

Rows (same input, same upstream gradient, measured interleaved in one run):

- ``ann_relu``: ReLU on the same tensor (the floor: one elementwise op each way);
- ``ours_fused`` / ``ours_loop``: our ``LIF`` with the ``snntorch`` preset (zero reset, detached,
  strict ``>``, fixed decay 0.5, ATan alpha = 2), fused path vs the reference loop;
- ``ours_fused_fp16``: ``ours_fused`` with ``saved_precision="fp16"`` (the margins u - theta kept in half
  precision: half the saved bytes, gradients to about 2e-4);
- ``ours_fused_plif`` / ``ours_loop_plif``: our PLIF with the ``reference`` preset (attached reset,
  ``>=``, learnable sigmoid decay, as MPD-AGL / DS-ATGO), fused vs reference loop;
- ``ours_fused_cf`` / ``ours_loop_cf``: our circulate-firing neuron (signed, D = 4, tau 2, attached reset,
  sigmoid surrogate alpha = 4), fused path (``models/fused_cf.py``) vs the reference loop;
- ``ours_fused_cf_tlsg`` / ``ours_loop_cf_tlsg``: the same with its default learnable TLSG surrogate (k[t]
  per timestep, learned: the fused backward also returns dL/dk);
- ``ours_fused_a2sg``: PLIF-style ``reference`` LIF with A2SG's paper mode (ramp, window search every step:
  each call is a statistics step, the backward hands dL/ds and dL/du to the search);
  ``ours_fused_a2sg_k10``: ``update_every=10``, measured between statistics steps (no callbacks);
  ``ours_fused_tlsg``: the ``reference`` LIF with the learned TLSG (k[t]); ``ours_fused_cf_rec``: the CF TLSG
  layer recording its pre-fire potentials (as under the ``pnb`` loss; no gradient reaches them here);
  ``ours_fused_ds_atgo``: DS-ATGO's adaptive-threshold LIF (layer statistics of u[t] every step, TGO surrogate,
  training mode: one forward kernel launch per step with torch's statistics between them);
- ``ours_torch_*``: the same fused layers with the Triton kernels off (``triton=False``), so on CUDA the
  kernels' gain over the fused path's torch code (``a2sg``, ``tlsg``, ``cf``, ``cf_tlsg``, ``ds_atgo``);
- ``snntorch_leaky``: stock ``snntorch.Leaky(beta=0.5, reset_mechanism="zero")`` (ATan) stepped over T;
- with ``--compile``: ``ours_compiled``, the ``ours_loop`` layer after ``layer.compile()`` (inductor fuses
  the traced reference loop; compilation happens in the warm-up run and is not timed);
- ``spikingjelly_auto`` / ``spikingjelly_torch``: spikingjelly 2.0 ``LIFNode(tau=2, decay_input=False,
  v_reset=0, detach_reset=True, step_mode="m")`` with its built-in ATan (on CPU its automatic choice:
  a fused torch op with a hand-written backward) and with a Python ATan subclass (which forces its
  autograd reference loop).  Skipped if spikingjelly is not installed (``pip install -e ".[benchmarks]"``).

``--dtypes fp32 bf16`` runs every table with fp32 and with bf16 input (and upstream gradient); the
bf16 rows also give ``x fp32``, their time over the same layer's with fp32 input at the same T.
``x sj`` is the time over ``spikingjelly_auto``'s.

Time: median (and min) over ``--repeats`` interleaved runs after ``--warmup`` runs.  Memory: bytes of
the tensors the layer saves for backward (unique storages, through
``repro.diagnostics.saved_tensor_bytes``); on CUDA also the peak allocated memory of fwd + bwd.

    OMP_NUM_THREADS=2 python benchmarks/neuron.py                     # CPU defaults: B=32, T=4 and 10
    python benchmarks/neuron.py --device cuda --batch 128 --steps 4 10 32
    python benchmarks/neuron.py --device cuda --batch 128 --steps 4 32 --dtypes fp32 bf16   # the issue's layer table
    python benchmarks/neuron.py --batch 8 --channels 64 --size 16     # quicker
    bash benchmarks/gpu_check.sh kernels                              # A2SG / TLSG / CF / DS-ATGO kernel rows

Writes a JSON file (``--output``, default benchmarks/results/neuron.json).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from repro.diagnostics import saved_tensor_bytes
from repro.models import LIF, AdaptiveThresholdLIF, CFNeuron, plif
from repro.surrogates import create_surrogate


class StandIn(nn.Module):
    """A layer that stands in for our neurons inside our models: models call ``set_input_norm`` on every
    neuron (MPD-AGL, A2SG read the feeding layers); stock neurons and ReLU need nothing from it."""

    def set_input_norm(self, module, input_layer=None) -> None:
        pass


class SnnTorchLoop(StandIn):
    """Stock ``snntorch.Leaky`` stepped over T inside one forward (state from zero every call)."""

    def __init__(self, beta: float = 0.5, threshold: float = 1.0):
        super().__init__()
        import snntorch as snn

        self.leaky = snn.Leaky(beta=beta, threshold=threshold, reset_mechanism="zero")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            spk, mem = self.leaky(x[t], mem)
            out.append(spk)
        return torch.stack(out)


class SpikingJellyLIF(StandIn):
    """spikingjelly 2.0 multi-step ``LIFNode`` (hard reset to 0, detached reset, no input decay),
    reset before every forward.  ``reference=True`` passes an ATan subclass defined here, which
    spikingjelly does not map to its fused op, so it runs its autograd reference loop."""

    def __init__(self, tau: float = 2.0, threshold: float = 1.0, reference: bool = False):
        super().__init__()
        from spikingjelly.activation_based import neuron, surrogate

        atan = type("PythonATan", (surrogate.ATan,), {})() if reference else surrogate.ATan()
        self.node = neuron.LIFNode(tau=tau, decay_input=False, v_threshold=threshold, v_reset=0.0,
                                   surrogate_function=atan, detach_reset=True, step_mode="m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.node.reset()
        return self.node(x)


class ReLUFloor(StandIn, nn.ReLU):
    """The ANN floor in place of a neuron."""


def spikingjelly_available() -> bool:
    try:
        import spikingjelly.activation_based.neuron  # noqa: F401
    except ImportError:
        return False
    return True


def without_kernels(neuron: nn.Module) -> nn.Module:
    """The neuron on its fused path's torch code (``models/fused.py``, ``models/fused_cf.py`` read ``triton``)."""
    neuron.triton = False
    return neuron


def recording(neuron: nn.Module) -> nn.Module:
    """The neuron recording its pre-fire potentials (what the balanced loss of the CF recipes reads)."""
    neuron.record_potentials = True
    return neuron


def compiled(module: nn.Module) -> nn.Module:
    module.compile()  # in place
    return module


def layer_factories(include_spikingjelly: bool = True, include_compiled: bool = False, steps: int | None = None
                    ) -> dict[str, Callable[[], nn.Module]]:
    """Name -> zero-argument constructor of every benchmarked layer (``steps``: T, which the TLSG needs)."""
    factories = {
        "ann_relu": ReLUFloor,
        "ours_fused": lambda: LIF(decay=0.5, surrogate=create_surrogate("atan"), preset="snntorch", fused=True),
        "ours_loop": lambda: LIF(decay=0.5, surrogate=create_surrogate("atan"), preset="snntorch", fused=False),
        "ours_fused_fp16": lambda: LIF(decay=0.5, surrogate=create_surrogate("atan"), preset="snntorch",
                                       saved_precision="fp16"),
        "ours_fused_plif": lambda: plif(decay=0.5, surrogate=create_surrogate("atan"), fused=True),
        "ours_loop_plif": lambda: plif(decay=0.5, surrogate=create_surrogate("atan"), fused=False),
        "ours_fused_cf": lambda: CFNeuron(surrogate="sigmoid", fused=True),
        "ours_loop_cf": lambda: CFNeuron(surrogate="sigmoid", fused=False),
        "ours_fused_cf_tlsg": lambda: CFNeuron(surrogate="learnable", num_steps=steps, fused=True),
        "ours_loop_cf_tlsg": lambda: CFNeuron(surrogate="learnable", num_steps=steps, fused=False),
        "ours_fused_a2sg": lambda: LIF(surrogate=create_surrogate("a2sg"), preset="reference"),
        "ours_torch_a2sg": lambda: LIF(surrogate=create_surrogate("a2sg"), preset="reference", triton=False),
        "ours_fused_a2sg_k10": lambda: LIF(surrogate=create_surrogate("a2sg", update_every=10), preset="reference"),
        "ours_fused_tlsg": lambda: LIF(surrogate=create_surrogate("learnable", num_steps=steps), preset="reference"),
        "ours_torch_tlsg": lambda: LIF(surrogate=create_surrogate("learnable", num_steps=steps), preset="reference",
                                       triton=False),
        "ours_fused_ds_atgo": lambda: AdaptiveThresholdLIF(num_steps=steps, surrogate="tgo"),
        "ours_torch_ds_atgo": lambda: without_kernels(AdaptiveThresholdLIF(num_steps=steps, surrogate="tgo")),
        "ours_torch_cf": lambda: without_kernels(CFNeuron(surrogate="sigmoid", fused=True)),
        "ours_torch_cf_tlsg": lambda: without_kernels(CFNeuron(surrogate="learnable", num_steps=steps, fused=True)),
        "ours_fused_cf_rec": lambda: recording(CFNeuron(surrogate="learnable", num_steps=steps, fused=True)),
        "ours_torch_cf_rec": lambda: recording(without_kernels(CFNeuron(surrogate="learnable", num_steps=steps,
                                                                        fused=True))),
        "snntorch_leaky": SnnTorchLoop,
    }
    if include_compiled:
        factories["ours_compiled"] = lambda: compiled(factories["ours_loop"]())
    if include_spikingjelly and spikingjelly_available():
        factories["spikingjelly_auto"] = SpikingJellyLIF
        factories["spikingjelly_torch"] = lambda: SpikingJellyLIF(reference=True)
    return factories


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_timing(tasks: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device,
                       seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of every task, the tasks run in a shuffled order in every round, so that a change
    of machine load hits all of them alike."""
    order = list(tasks)
    rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in order}
    for round_index in range(warmup + repeats):
        rng.shuffle(order)
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            tasks[name]()
            synchronize(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def summarize(times: list[float]) -> dict:
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "runs": len(times)}


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}
    info["allocator_env"] = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = os.getloadavg()
    for package in ("snntorch", "spikingjelly"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    return info


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """rows: dicts; columns: (key, header, format)."""
    print(f"\n{title}")
    widths = [max(len(header), *(len(format(row[key], fmt)) if row.get(key) is not None else 1 for row in rows))
              for key, header, fmt in columns]
    print("  ".join(header.rjust(w) for (_, header, _), w in zip(columns, widths)))
    for row in rows:
        print("  ".join((format(row[key], fmt) if row.get(key) is not None else "-").rjust(w)
                        for (key, _, fmt), w in zip(columns, widths)))


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def write_results(results: dict, info: dict, output: str, complete: bool = True) -> dict:
    """Write ``results`` as JSON, with ``complete`` in it; a complete run also records the load average at the end
    and prints it with the start's.  Writing after each table (``complete=False``) keeps the finished tables of a
    run that is stopped (a device command's time limit)."""
    if complete and hasattr(os, "getloadavg"):
        info["load_average_end"] = os.getloadavg()
        print(f"\nload average start {info.get('load_average_start')}, end {info.get('load_average_end')}")
    results["complete"] = complete
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    if complete:
        print(f"wrote {path}")
    return results


def benchmark_steps(steps: int, args, device: torch.device, dtype: str = "fp32") -> list[dict]:
    shape = (steps, args.batch, args.channels, args.size, args.size)
    generator = torch.Generator().manual_seed(args.seed)
    inputs = (torch.randn(shape, generator=generator) * 0.8 + 0.6).to(device, DTYPES[dtype]).requires_grad_()
    upstream = torch.randn(shape, generator=generator).to(device, DTYPES[dtype])
    factories = layer_factories(not args.no_spikingjelly, args.compile, steps)
    layers = {name: make().to(device) for name, make in factories.items()}
    if args.only:
        layers = {name: layer for name, layer in layers.items() if name in args.only or name == "ann_relu"}

    def fwd_bwd(layer: nn.Module) -> Callable[[], None]:
        def run() -> None:
            inputs.grad = None
            layer(inputs).backward(upstream)
        return run

    rows = []
    for name, layer in layers.items():
        row = {"layer": name, "steps": steps, "dtype": dtype, "shape": list(shape), "saved_MB": None}
        if name != "ours_compiled":  # saved-tensor hooks do not see inside compiled graphs
            output, saved = saved_tensor_bytes(lambda: layer(inputs))
            row["saved_MB"] = saved / 2 ** 20
            row["firing_rate"] = float(output.detach().float().mean()) if name != "ann_relu" else None
            del output
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            fwd_bwd(layer)()
            synchronize(device)
            row["peak_MB"] = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
        rows.append(row)
    times = interleaved_timing({name: fwd_bwd(layer) for name, layer in layers.items()}, args.repeats,
                               args.warmup, device, args.seed)
    floor = statistics.median(times["ann_relu"])
    reference = {name: statistics.median(times[name]) for name in times}
    fused = reference["ours_fused"] if "ours_fused" in reference else None
    spikingjelly = reference.get("spikingjelly_auto")
    loop_saved = {row["layer"]: row["saved_MB"] for row in rows}
    for row in rows:
        row.update(summarize(times[row["layer"]]))
        median = reference[row["layer"]]
        row["x_ann"] = median / floor
        row["x_fused"] = median / fused if fused else None  # time relative to ours_fused
        row["x_sj"] = median / spikingjelly if spikingjelly else None
        if row["layer"].startswith("ours_fused"):
            loop = loop_saved.get(row["layer"].replace("fused", "loop").removesuffix("_fp16"))
            row["saved_vs_loop"] = row["saved_MB"] / loop if loop else None
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 10], help="timesteps T (one table each)")
    parser.add_argument("--batch", type=int, default=None, help="B (default 32 on CPU, 128 on CUDA)")
    parser.add_argument("--channels", type=int, default=128, help="C (ResNet-19 stage 1: 128)")
    parser.add_argument("--size", type=int, default=32, help="H = W (ResNet-19 stage 1: 32)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=sorted(DTYPES), help="input dtypes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or torch's)")
    parser.add_argument("--only", nargs="*", default=None, help="layer names to run (ann_relu always runs)")
    parser.add_argument("--no_spikingjelly", action="store_true", help="skip the spikingjelly rows")
    parser.add_argument("--compile", action="store_true", help="add ours_compiled (torch.compile of the loop)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "neuron.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = args.batch or (128 if device.type == "cuda" else 32)
    info = machine_info(device)
    results = {"machine": info, "args": vars(args), "tables": []}
    columns = [("layer", "layer", "s"), ("median_ms", "median ms", ".1f"), ("min_ms", "min ms", ".1f"),
               ("x_ann", "x ANN", ".2f"), ("x_fused", "x ours_fused", ".2f"), ("x_sj", "x sj", ".2f"),
               ("x_fp32", "x fp32", ".2f"), ("saved_MB", "saved MB", ".0f"),
               ("saved_vs_loop", "saved/loop", ".2f")]
    if device.type == "cuda":
        columns.append(("peak_MB", "peak MB", ".0f"))
    for steps in args.steps:
        fp32_medians = {}
        for dtype in args.dtypes:
            rows = benchmark_steps(steps, args, device, dtype)
            for row in rows:
                if dtype == "fp32":
                    fp32_medians[row["layer"]] = row["median_ms"]
                row["x_fp32"] = row["median_ms"] / fp32_medians[row["layer"]] if row["layer"] in fp32_medians else None
            results["tables"].append(rows)
            write_results(results, info, args.output, complete=False)
            print_table(f"T={steps}, {dtype} input {rows[0]['shape']} on {device}, fwd+bwd, {args.repeats} interleaved "
                        f"runs ({info['torch_threads']} threads)", rows, columns)
    return write_results(results, info, args.output)


if __name__ == "__main__":
    main()
