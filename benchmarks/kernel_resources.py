"""Compile the LIF Triton kernels for a GPU architecture without a GPU, and report what the hardware would run.

For every (kernel, T, dtype, surrogate) asked for: registers per thread, spilled bytes (local memory),
and in the PTX the count of fused multiply-adds (``fma``; the LIF arithmetic must have none: it follows
``dynamics.charge`` rounding by rounding), approximate divisions (``div.full``/``div.approx``; the surrogate
vocabulary uses IEEE ``div.rn``) and global load/store instructions (vectorised: pointers and N are
compiled as 16-byte aligned / multiples of 16, as a launch on such tensors specialises them).  The sigmoid
surrogate's FMAs are inside libdevice's ``expf`` (the CUDA math library's exp, as torch's on CUDA).
Uses Triton's own ``ptxas``/``cuobjdump`` (shipped in the triton wheel); no CUDA device or driver is needed.

    python benchmarks/kernel_resources.py                        # T = 4, 32; fp32, bf16; atan, sigmoid; sm_90
    python benchmarks/kernel_resources.py --steps 64 --arch 100  # another T / architecture
    python benchmarks/kernel_resources.py --surrogates a2sg --rows  # also A2SG's search steps (sampled rows out)

Compiling the backward at T = 32 takes about 10 s per variant on one CPU core (the time loop is unrolled).
Writes JSON (``--output``, default benchmarks/results/kernel_resources.json).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from repro.models import triton_lif
from repro.models.triton_surrogates import kernel_parameters, kernel_shape
from repro.surrogates import create_surrogate

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ROW_SCALARS = {"row_units": "i32", "row_inner": "i32", "row_every": "i32", "row_length": "i32"}


def compile_kernel(kernel, pointers: dict[str, str], scalars: dict[str, str], constants: dict, arch: int,
                   num_warps: int = 4):
    signature = {**pointers, **scalars, **{name: "constexpr" for name in constants}}
    # as a launch specialises them: pointers 16-byte aligned, N a multiple of 16 (enables vector loads)
    aligned = {(index,): [["tt.divisibility", 16]] for index, name in enumerate(signature)
               if name in pointers or name == "N"}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=aligned)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options={"enable_fp_fusion": False, "num_warps": num_warps})


def resources(compiled) -> dict:
    """Registers and spills (cuobjdump on the cubin) and instruction counts of the PTX."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(tool), "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", usage))
    ptx = compiled.asm["ptx"]
    return {"registers": int(fields["REG"]), "spill_bytes": int(fields["LOCAL"]) + int(fields["STACK"]),
            "fma": len(re.findall(r"\bfma\.", ptx)), "approx_div": len(re.findall(r"div\.(full|approx)", ptx)),
            "loads": ptx.count("ld.global"), "stores": ptx.count("st.global")}


def forward_kernel(steps: int, dtype: str, reset: str, arch: int, per_step: str | None = None, rows: bool = False):
    """The forward kernel over T steps, or (``per_step`` "layer" / "channel") one step of
    ``lif_forward_by_step`` (T = 1, membrane in and out in fp32, theta_{t-1} one value or one per channel);
    ``rows``: also writing the sampled rows of u (A2SG's search steps)."""
    pointers = {"x_ptr": f"*{dtype}", "lam_ptr": "*fp32", "out_ptr": f"*{dtype}", "mem_ptr": "*fp32",
                "thr_ptr": "*fp32", "fired_ptr": f"*{dtype}"}
    scalars = {"N": "i32", "inner": "i32", "channels": "i32", "theta": "fp32", **ROW_SCALARS}
    constants = dict(T=1 if per_step else steps, RESET=reset, DECAYED=True, DECAY_INPUT=False, FIRE_GE=True,
                     SPIKES=not per_step, KEEP=bool(per_step) or rows, ROWS=rows, RESUME=bool(per_step),
                     THRESHOLD_CHANNELS=per_step == "channel",
                     BLOCK=triton_lif.forward_block(TORCH_DTYPES[dtype]))
    return compile_kernel(triton_lif._forward_kernel, pointers, scalars, constants, arch)


def backward_kernel(steps: int, dtype: str, reset: str, surrogate: str, arch: int, chunk: int, rows: bool = False):
    """The backward kernel of a fixed-threshold LIF with ``surrogate`` at its default parameters (one value per
    step); ``rows``: also writing the sampled rows of dL/ds and dL/du (A2SG's search steps)."""
    module = create_surrogate(surrogate)
    shape = module.shape
    names, switches = kernel_parameters(shape, [module.call_params(torch.zeros(()))])
    pointers = {"x_ptr": f"*{dtype}", "g_ptr": f"*{dtype}", "lam_ptr": "*fp32", "thr_ptr": "*fp32",
                "param_ptr": "*fp32", "gx_ptr": f"*{dtype}", "partial_ptr": "*fp32", "k_partial_ptr": "*fp32",
                "gs_ptr": "*fp32", "gu_ptr": "*fp32"}
    scalars = {"N": "i32", "inner": "i32", "channels": "i32", "theta": "fp32", **ROW_SCALARS}
    constants = dict(T=steps, CHUNK=chunk, RESET=reset, DECAYED=True, DETACH=False, DECAY_INPUT=False, FIRE_GE=True,
                     STEP_THRESHOLDS=False, THRESHOLD_CHANNELS=False, SHAPE=kernel_shape(shape),
                     N_PARAMS=len(names), PARAM_CHANNELS=False, SWITCHES=switches, LEARNED_K=False, WANT_DECAY=True,
                     STORE_SPIKE_GRADS=rows, STORE_MEMBRANE_GRADS=rows, ROWS=rows,
                     BLOCK=triton_lif.backward_block(steps))
    return compile_kernel(triton_lif._backward_kernel, pointers, scalars, constants, arch)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(TORCH_DTYPES))
    parser.add_argument("--surrogates", nargs="+", default=["atan", "sigmoid"])
    parser.add_argument("--reset", default="zero", choices=triton_lif.RESETS)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (H100/H200: 90)")
    parser.add_argument("--chunk", type=int, default=triton_lif.CHUNK, help="steps replayed into registers at once")
    parser.add_argument("--rows", action="store_true",
                        help="also the kernels of a window-search step (A2SG): sampled rows of u, dL/ds, dL/du out")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "kernel_resources.json"))
    args = parser.parse_args(argv)
    rows = []
    for steps in args.steps:
        for dtype in args.dtypes:
            variants = [("forward", "-", lambda: forward_kernel(steps, dtype, args.reset, args.arch))]
            if steps == args.steps[0]:  # lif_forward_by_step (DS-ATGO): T = 1 per launch, whatever T
                variants += [(f"forward_step_{scope}", "-", lambda scope=scope: forward_kernel(
                    1, dtype, args.reset, args.arch, per_step=scope)) for scope in ("layer", "channel")]
            variants += [("backward", name, lambda name=name: backward_kernel(steps, dtype, args.reset, name, args.arch,
                                                                        args.chunk))
                         for name in args.surrogates]
            if args.rows:
                variants += [("forward_rows", "-", lambda: forward_kernel(steps, dtype, args.reset, args.arch,
                                                                          rows=True))]
                variants += [("backward_rows", name, lambda name=name: backward_kernel(
                    steps, dtype, args.reset, name, args.arch, args.chunk, rows=True)) for name in args.surrogates]
            for kernel, surrogate, build in variants:
                start = time.perf_counter()
                compiled = build()
                row = {"kernel": kernel, "T": 1 if kernel.startswith("forward_step") else steps, "dtype": dtype,
                       "surrogate": surrogate, "arch": args.arch, "compile_s": time.perf_counter() - start,
                       **resources(compiled)}
                rows.append(row)
                print("  ".join(f"{key}={value:.1f}" if isinstance(value, float) else f"{key}={value}"
                                for key, value in row.items()), flush=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"triton": triton.__version__, "rows": rows}, indent=2))
    print(f"wrote {output}")
    return rows


if __name__ == "__main__":
    main()
