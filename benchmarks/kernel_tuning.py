"""Sweep the launch configuration of the spiking-layer Triton kernels (issue 19; docs/performance.md, "GPU kernels").

The kernels' block sizes and warp counts (``triton_lif.forward_block`` / ``backward_block``, 4 warps, a replay chunk
of ``CHUNK`` = 32 steps) were chosen offline from registers and spills, not from timings.  This times each kernel
alone on one layer [T, B, C, H, W] (default 128 x 128 x 32 x 32, the layer table's) for every configuration asked:

- ``lif_forward`` / ``lif_backward`` (``models/triton_lif.py``): the ``ours_fused`` layer of ``neuron.py``
  (snnTorch preset, ATan; ``--preset reference``: attached reset, ``>=``, learnable decay, whose backward also
  reduces dL/dlambda);
- ``cf_forward`` / ``cf_backward`` (``models/triton_cf.py``): ``ours_fused_cf`` (signed, D = 4, sigmoid).

Effective bandwidth = the bytes the kernel cannot avoid moving (forward: read I, write the spikes; backward: read I and
dL/ds, write dL/dI; in the input's dtype) over its median time; ``x copy`` is that over the bandwidth of a device
copy of the same tensor (``clone``: read + write), so 1.0 means the kernel runs at copy speed.  ``*`` marks the
kernels' defaults.  Every configuration's outputs are compared with the default's (``same``: bitwise equal; the
forward's spikes and the backward's dL/dI do not depend on the launch configuration).

    python benchmarks/kernel_tuning.py --device cuda                              # LIF and CF, T = 4 and 32
    python benchmarks/kernel_tuning.py --device cuda --kernels lif --steps 32 --dtypes bf16 \\
        --backward_blocks 128 256 512 --warps 2 4 8 --chunks 8 16 32            # a wider sweep
    TRITON_INTERPRET=1 python benchmarks/kernel_tuning.py --batch 2 --channels 4 --size 4 --steps 3 \\
        --chunks 2 32                                                            # on a CPU (tests)

Writes a JSON file (``--output``, default benchmarks/results/kernel_tuning.json).  The backward kernels at T = 32
take seconds to compile per configuration (benchmarks/kernel_resources.py), so wide sweeps take minutes.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path
from typing import Callable

import torch

from neuron import DTYPES, interleaved_timing, machine_info, print_table, synchronize, write_results
from repro.models import LIF, CFNeuron, fused_cf, triton_cf, triton_lif
from repro.models.triton_surrogates import kernel_inputs
from repro.surrogates import create_surrogate

KERNELS = {"lif": ("lif_forward", "lif_backward"), "cf": ("cf_forward", "cf_backward")}


def layer_kernels(kind: str, x: torch.Tensor, grad: torch.Tensor, preset: str) -> dict[str, Callable]:
    """``{kernel name: run(block, num_warps, chunk) -> outputs}`` for the layer ``kind`` on input ``x`` and upstream
    gradient ``grad``, with the arguments the layer's fused path passes."""
    if kind == "lif":
        neuron = LIF(decay=0.5, surrogate=create_surrogate("atan"), preset=preset).to(x.device)
        flags = (neuron.reset, neuron.reset_decayed)
        surrogate = neuron.surrogate
        shape, params, switches = kernel_inputs(surrogate.shape, [surrogate.call_params(x[0])] * x.shape[0],
                                                x[0].shape, x.device)
        want_decay, decay = neuron.decay_raw.requires_grad, neuron.decay.detach()
        return {
            "lif_forward": lambda block, warps, chunk: triton_lif.lif_forward(
                x, decay, neuron.threshold, *flags, neuron.decay_input, neuron.fire_ge, block=block,
                num_warps=warps),
            "lif_backward": lambda block, warps, chunk: triton_lif.lif_backward(
                x, grad, decay, neuron.threshold, None, shape, params, *flags, neuron.reset_detach,
                neuron.decay_input, neuron.fire_ge, want_decay, switches=switches, block=block, chunk=chunk,
                num_warps=warps)[0]}
    neuron = CFNeuron(surrogate="sigmoid").to(x.device)
    config, levels, decay = neuron.step_config(), neuron.levels.float(), neuron.decay.detach()
    shape, params, switches = fused_cf.kernel_tables(neuron.surrogate, None, x)
    return {
        "cf_forward": lambda block, warps, chunk: triton_cf.cf_forward(
            x, decay, levels, config.mode, config.reset_unit, config.scale, block=block, num_warps=warps)[0],
        "cf_backward": lambda block, warps, chunk: triton_cf.cf_backward(
            x, grad, decay, levels, config.mode, config.reset_unit, config.scale, config.reset_detach, shape,
            params, switches=switches, block=block, chunk=chunk, num_warps=warps)[0]}


def configurations(kernel: str, steps: int, dtype: torch.dtype, args) -> list[tuple[int, int, int]]:
    """(block, warps, chunk) to time, the kernel's default first; the chunk only matters to a backward with
    T > chunk."""
    backward = kernel.endswith("backward")
    default = (triton_lif.backward_block(steps) if backward else triton_lif.forward_block(dtype), 4, triton_lif.CHUNK)
    blocks = args.backward_blocks if backward else args.forward_blocks
    chunks = sorted({min(chunk, triton_lif.CHUNK) for chunk in args.chunks if chunk < steps} | {triton_lif.CHUNK}) \
        if backward else [triton_lif.CHUNK]
    swept = [(block, warps, chunk) for block, warps, chunk in itertools.product(blocks, args.warps, chunks)]
    return [default] + [config for config in swept if config != default]


def repeated(call: Callable[[], object], times: int) -> Callable[[], None]:
    """``call`` run ``times`` times in a row (one timed sample: the host's synchronisation is amortised)."""
    def run() -> None:
        for _ in range(times):
            call()
    return run


def tune(steps: int, dtype_name: str, args, device: torch.device) -> list[dict]:
    dtype = DTYPES[dtype_name]
    shape = (steps, args.batch, args.channels, args.size, args.size)
    generator = torch.Generator().manual_seed(args.seed)
    x = (torch.randn(shape, generator=generator) * 0.8 + 0.6).to(device, dtype)
    grad = torch.randn(shape, generator=generator).to(device, dtype)
    tensor_bytes = x.numel() * x.element_size()
    copy = interleaved_timing({"copy": repeated(x.clone, args.inner)}, args.repeats, args.warmup, device, args.seed)
    copy_bandwidth = 2 * tensor_bytes * args.inner / statistics.median(copy["copy"])
    rows = []
    for kind in args.kernels:
        for kernel, run in layer_kernels(kind, x, grad, args.preset).items():
            configs = configurations(kernel, steps, dtype, args)
            reference, tasks = None, {}
            for config in configs:
                row = {"kernel": kernel, "steps": steps, "dtype": dtype_name, "block": config[0],
                       "warps": config[1], "chunk": config[2] if kernel.endswith("backward") else None,
                       "default": "*" if config == configs[0] else ""}
                try:
                    output = run(*config)
                    synchronize(device)
                except Exception as error:  # e.g. out of shared memory or registers: recorded, the sweep goes on
                    row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
                    rows.append(row)
                    continue
                reference = output if reference is None else reference
                row["same"] = bool(torch.equal(output, reference))
                tasks[config] = (row, repeated(lambda run=run, config=config: run(*config), args.inner))
                rows.append(row)
            times = interleaved_timing({config: task for config, (_, task) in tasks.items()}, args.repeats,
                                       args.warmup, device, args.seed)
            moved = (3 if kernel.endswith("backward") else 2) * tensor_bytes
            for config, (row, _) in tasks.items():
                seconds = statistics.median(times[config]) / args.inner
                row.update(ms=seconds * 1e3, GB_s=moved / seconds / 1e9, x_copy=moved / seconds / copy_bandwidth)
    for row in rows:
        row["copy_GB_s"] = copy_bandwidth / 1e9
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu with TRITON_INTERPRET=1 (tests only)")
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    parser.add_argument("--preset", default="snntorch", choices=["snntorch", "reference"], help="the LIF's preset")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 32], help="timesteps T")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=32, help="H = W")
    parser.add_argument("--forward_blocks", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--backward_blocks", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 32], help="backward replay chunks (< T only)")
    parser.add_argument("--inner", type=int, default=10, help="kernel calls per timed sample")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "kernel_tuning.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if not triton_lif.triton_available(device):
        raise SystemExit(f"the kernels do not run on {device}: use --device cuda on a GPU, or TRITON_INTERPRET=1")
    info = machine_info(device)
    rows = [row for steps in args.steps for dtype in args.dtypes for row in tune(steps, dtype, args, device)]
    print_table("Spiking-layer kernels alone, by launch configuration (* the default; x copy: effective bandwidth over "
                "a device copy's)",
                rows, [("kernel", "kernel", ""), ("steps", "T", "d"), ("dtype", "input", ""), ("block", "block", "d"),
                       ("warps", "warps", "d"), ("chunk", "chunk", "d"), ("default", "*", ""), ("ms", "ms", ".3f"),
                       ("GB_s", "GB/s", ".0f"), ("x_copy", "x copy", ".2f"), ("same", "same", ""),
                       ("error", "error", "")])
    best = fastest(rows)
    print_table("Fastest configuration per kernel, T and input dtype (x default: its time over the default's)", best,
                [("kernel", "kernel", ""), ("steps", "T", "d"), ("dtype", "input", ""), ("block", "block", "d"),
                 ("warps", "warps", "d"), ("chunk", "chunk", "d"), ("ms", "ms", ".3f"), ("x_copy", "x copy", ".2f"),
                 ("default_ms", "default ms", ".3f"), ("x_default", "x default", ".2f")])
    return write_results({"machine": info, "args": vars(args), "rows": rows, "fastest": best}, info, args.output)


def fastest(rows: list[dict]) -> list[dict]:
    """Per (kernel, T, dtype), the timed row with the least time, with the default's time beside it."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if "ms" in row:
            groups.setdefault((row["kernel"], row["steps"], row["dtype"]), []).append(row)
    best = []
    for group in groups.values():
        default = next((row for row in group if row["default"]), None)
        row = dict(min(group, key=lambda row: row["ms"]))
        row["default_ms"] = default["ms"] if default else None
        row["x_default"] = row["ms"] / default["ms"] if default else None
        best.append(row)
    return best


if __name__ == "__main__":
    main()
