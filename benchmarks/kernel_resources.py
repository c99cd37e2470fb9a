"""Compile the spiking-layer Triton kernels for a GPU architecture without a GPU; report what the hardware would run.

Every kernel is compiled from a real call of its launch site (``triton_lif.lif_forward``, ``lif_forward_by_step``,
``lif_backward``, ``triton_cf.cf_forward``, ``cf_backward``): there a launch goes through Triton's own JIT
``warmup`` for the target architecture (``compile_offline``), which specialises the arguments (dtypes, 16-byte
alignment, integer values) as a launch on the device does, compiles, and runs nothing.
Uses Triton's own ``ptxas``/``cuobjdump`` (shipped in the triton wheel); no CUDA device or driver is needed.

For each compiled kernel: registers per thread, spilled bytes (local memory), and in the PTX the count of fused
multiply-adds (``fma``; the LIF and circulate-firing arithmetic must have none: it follows ``dynamics.charge`` /
``fused_cf.integrate`` rounding by rounding), approximate divisions (``div.full``/``div.approx``; the surrogate
vocabulary uses IEEE ``div.rn``) and global load/store instructions.  The sigmoid surrogate's FMAs are inside
libdevice's ``expf`` (the CUDA math library's exp, as torch's on CUDA).

``--recipes`` compiles what the method recipes launch: a subprocess runs a training step of each recipe's model
(its neuron, surrogate and loss; width 1/16, 8 x 8 images, B = 2; fp32 and under bf16 autocast) with the kernels in
the Triton interpreter (``TRITON_INTERPRET=1``) and records every launch (a second step launched nothing new for
DS-ATGO and A2SG); each distinct launch is then compiled.  Launches that differ only in their integer and float
arguments (the layers' sizes) and compile to the same resources share a row; ``kernels`` counts the distinct compiled
kernels in it.  The integers of these small layers specialise as at that size, not at full scale.

    python benchmarks/kernel_resources.py                        # LIF, T = 4, 32; fp32, bf16; atan, sigmoid; sm_90
    python benchmarks/kernel_resources.py --steps 64 --arch 100  # another T / architecture
    python benchmarks/kernel_resources.py --surrogates a2sg --rows  # also A2SG's search steps (sampled rows out)
    python benchmarks/kernel_resources.py --recipes ds_atgo_cifar10 mpd_agl_cifar10 a2sg_cifar100 cf_cifar10

Compiling the backward at T = 32 takes about 10 s per variant on one CPU core (the time loop is unrolled).
Writes JSON (``--output``, default benchmarks/results/kernel_resources.json).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import triton
from torch import Tensor
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import MockTensor

from launch_sites import LAUNCH_SITES, launches_to

from repro.models import triton_lif, triton_surrogates
from repro.surrogates import create_surrogate

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STEP_SHAPE = (2, 4, 64)  # [B, C, N] of the LIF layers compiled by T: 512 neurons per step
ROWS = (1, 512, 2, 256)  # (units, inner, every, length) of a search step's sample: every second neuron


class OfflineTarget:
    """The active Triton driver while compiling offline: a target architecture, no device."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return ("offline", self.target.arch)  # a key of its own in the kernels' per-device caches

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


def compile_offline(kernel, args, kwargs: dict, arch: int):
    """``kernel`` compiled for ``arch`` by its JIT's ``warmup`` with the launch's arguments (nothing runs)."""
    previous = driver._active  # None where no driver was made yet (reset_active would make one: it needs a GPU)
    driver.set_active(OfflineTarget(arch))
    try:
        return kernel.warmup(*args, grid=(1,), **kwargs)
    finally:
        driver._active = previous


def compiled_by(call: Callable, arch: int):
    """The kernel of ``call``'s last launch, compiled for ``arch`` (no launch runs: the launch sites' outputs stay
    unwritten)."""
    launches = []
    with launches_to(lambda site, kernel, grid, args, kwargs: launches.append((kernel, args, kwargs))):
        call()
    return compile_offline(*launches[-1], arch)


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


# ----------------------------------------------------------------------------- the LIF kernels by T, dtype, surrogate
def call_forward(steps: int, dtype: str, reset: str, per_step: str | None = None, rows: bool = False) -> None:
    """``lif_forward`` over T steps, or (``per_step`` "layer" / "channel") ``lif_forward_by_step`` with theta_t one
    value or one per channel (DS-ATGO; T = 1 per launch, compiled at its resumed step); ``rows``: also writing the
    sampled rows of u (A2SG's search steps)."""
    x, decay = torch.zeros(steps, *STEP_SHAPE, dtype=TORCH_DTYPES[dtype]), torch.tensor(0.5)
    switches = (1.0, reset, True, False, True)  # theta, reset, decayed reset, decay_input, fire on >=
    if per_step:
        theta = 1.0 if per_step == "layer" else torch.ones(STEP_SHAPE[1], 1)  # [C, 1]: per channel
        triton_lif.lif_forward_by_step(x, decay, *switches, lambda u, step: theta)
        return
    membrane = torch.empty(triton_lif.kept_shape(x, ROWS)) if rows else None
    triton_lif.lif_forward(x, decay, *switches, membrane=membrane, rows=ROWS if rows else None)


def call_backward(steps: int, dtype: str, reset: str, surrogate: str, chunk: int, rows: bool = False) -> None:
    """``lif_backward`` of a fixed-threshold LIF with ``surrogate`` at its default parameters (one row per step),
    learnable decay; ``rows``: also writing the sampled rows of dL/ds and dL/du (A2SG's search steps)."""
    x = torch.zeros(steps, *STEP_SHAPE, dtype=TORCH_DTYPES[dtype])
    module = create_surrogate(surrogate)
    shape, table, switches = triton_surrogates.kernel_inputs(
        module.shape, [module.call_params(torch.zeros(()))] * steps, x[0].shape, x.device)
    outputs = {name: torch.empty(triton_lif.kept_shape(x, ROWS)) for name in ("spike_grads", "membrane_grads")}
    triton_lif.lif_backward(x, torch.zeros_like(x), torch.tensor(0.5), 1.0, None, shape, table, reset, True, False,
                            False, True, True, switches=switches, chunk=chunk, rows=ROWS if rows else None,
                            **(outputs if rows else {}))


class Variant(NamedTuple):
    """A kernel to compile: what the table calls it, and how to compile it."""

    kernel: str
    steps: int
    dtype: str
    surrogate: str
    compile: Callable  # () -> the CompiledKernel
    used_by: tuple[str, ...] = ()  # the recipes (and dtypes) that launch it
    alike: str = ""  # the launch but for its integer and float arguments (the layers' sizes)


def lif_variants(args) -> list[Variant]:
    """Each LIF variant asked for, compiled from a call of its launch site."""
    def variant(kernel, steps, dtype, surrogate, call):
        return Variant(kernel, steps, dtype, surrogate, lambda: compiled_by(call, args.arch))
    variants = []
    for steps in args.steps:
        for dtype in args.dtypes:
            variants.append(variant("forward", steps, dtype, "-",
                                    lambda s=steps, d=dtype: call_forward(s, d, args.reset)))
            if steps == args.steps[0]:  # lif_forward_by_step (DS-ATGO): T = 1 per launch, whatever T
                variants += [variant(f"forward_step_{scope}", 1, dtype, "-",
                                     lambda d=dtype, scope=scope: call_forward(2, d, args.reset, per_step=scope))
                             for scope in ("layer", "channel")]
            variants += [variant("backward", steps, dtype, name,
                                 lambda s=steps, d=dtype, name=name: call_backward(s, d, args.reset, name, args.chunk))
                         for name in args.surrogates]
            if args.rows:
                variants.append(variant("forward_rows", steps, dtype, "-",
                                        lambda s=steps, d=dtype: call_forward(s, d, args.reset, rows=True)))
                variants += [variant("backward_rows", steps, dtype, name, lambda s=steps, d=dtype, name=name:
                                     call_backward(s, d, args.reset, name, args.chunk, rows=True))
                             for name in args.surrogates]
    return variants


# ----------------------------------------------------------------------------- the kernels the recipes launch
DERIVATIVE_NAMES: dict[int, str] = {}  # id of a compiled derivative -> triton_lif.shape_name of its torch function


def describe(value):
    """A launch argument as JSON: a tensor by its dtype and its address modulo 16 (what the JIT specialises on),
    a compiled surrogate derivative by the name of the torch function it was compiled from."""
    if isinstance(value, Tensor):
        return {"tensor": str(value.dtype).removeprefix("torch."), "offset": value.data_ptr() % 16}
    if isinstance(value, tuple):
        return {"tuple": [describe(item) for item in value]}
    if id(value) in DERIVATIVE_NAMES:
        return {"shape": DERIVATIVE_NAMES[id(value)]}
    return value


def rebuild(value):
    """The launch argument ``describe`` wrote, for the JIT: a tensor as a ``MockTensor`` at that offset."""
    if not isinstance(value, dict):
        return value
    if "tensor" in value:
        mock = MockTensor(getattr(torch, value["tensor"]))
        mock.data_ptr = lambda offset=value["offset"]: offset
        return mock
    if "tuple" in value:
        return tuple(rebuild(item) for item in value["tuple"])
    return triton_surrogates.kernel_shape(triton_lif.shape_of(value["shape"]))


def record_recipe_launches(recipes: list[str], dtypes: list[str]) -> list[dict]:
    """The distinct kernel launches of a training step of each recipe's model, each with the recipes and dtypes
    that made it (run with the kernels in the Triton interpreter: the launches run)."""
    from train_step import build, recipe_config

    from repro.losses import create_loss
    compile_derivative = triton_surrogates.kernel_shape

    def naming(shape):
        compiled = compile_derivative(shape)
        if compiled is not None:
            DERIVATIVE_NAMES[id(compiled)] = triton_lif.shape_name(shape)
        return compiled

    launches: dict[str, dict] = {}
    made_by = ""

    def record(site, kernel, grid, args, kwargs):
        launch = {"site": site, "args": [describe(arg) for arg in args],
                  "kwargs": {name: describe(value) for name, value in kwargs.items()}}
        users = launches.setdefault(json.dumps(launch, sort_keys=True), {**launch, "recipes": []})["recipes"]
        if made_by not in users:
            users.append(made_by)
        kernel[grid](*args, **kwargs)

    triton_surrogates.kernel_shape = naming  # its callers look it up in the module
    try:
        for recipe in recipes:
            config = recipe_config(recipe)
            for dtype in dtypes:
                made_by = f"{recipe} {dtype}"
                torch.manual_seed(0)
                model = build(f"recipe:{recipe}", None, argparse.Namespace(width=0.0625))
                loss_fn = create_loss(config.loss, **config.loss_options)
                if hasattr(loss_fn, "bind"):
                    loss_fn.bind(model)
                optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                images, targets = torch.randn(2, 3, 8, 8), torch.tensor([1, 7])
                with launches_to(record):
                    with torch.autocast("cpu", dtype=TORCH_DTYPES[dtype], enabled=dtype != "fp32"):
                        loss = loss_fn(model(images), targets)
                    loss.backward()
                    optimizer.step()
                    for module in model.modules():
                        if hasattr(module, "after_optimizer_step"):
                            module.after_optimizer_step(0)
    finally:
        triton_surrogates.kernel_shape = compile_derivative
    return list(launches.values())


def recipe_variants(args) -> list[Variant]:
    """Each distinct launch of the recipes' training steps, recorded in a subprocess with the kernels in the Triton
    interpreter."""
    with tempfile.TemporaryDirectory() as folder:
        recorded = Path(folder) / "launches.json"
        subprocess.run([sys.executable, __file__, "--record", str(recorded), "--recipes", *args.recipes,
                        "--dtypes", *args.dtypes], check=True, env={**os.environ, "TRITON_INTERPRET": "1"})
        launches = json.loads(recorded.read_text())
    dtype_names = {str(dtype).removeprefix("torch."): name for name, dtype in TORCH_DTYPES.items()}
    variants = []
    for launch in launches:
        module, name = LAUNCH_SITES[launch["site"]]
        constants, tensors = launch["kwargs"], [arg for arg in launch["args"] if isinstance(arg, dict)]
        shape = constants.get("SHAPE")
        kernel = launch["site"] + "".join(suffix for suffix, switch in (
            ("_step", constants.get("SPIKES") is False), ("_resumed", constants.get("RESUME")),
            ("_channel", constants.get("THRESHOLD_CHANNELS")), ("_rows", constants.get("ROWS"))) if switch)
        variants.append(Variant(
            kernel, constants["T"], dtype_names[tensors[0]["tensor"]], shape["shape"].split(":")[1] if shape else "-",
            lambda jit=getattr(module, name), launch=launch: compile_offline(
                jit, [rebuild(arg) for arg in launch["args"]],
                {key: rebuild(value) for key, value in launch["kwargs"].items()}, args.arch),
            tuple(launch["recipes"]), json.dumps([launch["site"], tensors, constants], sort_keys=True)))
    return variants


def format_row(row: dict) -> str:
    return "  ".join(f"{key}={value:.1f}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in row.items())


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
    parser.add_argument("--recipes", nargs="+", default=None,
                        help="compile the launches of these recipes' training steps instead of the LIF variants")
    parser.add_argument("--record", default=None, help=argparse.SUPPRESS)  # the recording subprocess's output
    parser.add_argument("--output", default=None, help="default: benchmarks/results/kernel_resources.json, or "
                        "kernel_resources_recipes.json with --recipes")
    args = parser.parse_args(argv)
    if args.record:
        Path(args.record).write_text(json.dumps(record_recipe_launches(args.recipes, args.dtypes)))
        return []
    rows, alike = [], {}
    for variant in recipe_variants(args) if args.recipes else lif_variants(args):
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as cache, triton.knobs.cache.scope():
            triton.knobs.cache.dir = cache  # not Triton's cache on disk (the JIT's own in memory still serves repeats)
            compiled = variant.compile()
        usage = resources(compiled)
        row = {"kernel": variant.kernel, "T": variant.steps, "dtype": variant.dtype, "surrogate": variant.surrogate,
               "arch": args.arch, "compile_s": time.perf_counter() - start, **usage}
        if variant.used_by:  # one row for the launches alike but for the layers' sizes, where resources agree too
            key = (variant.alike, json.dumps(usage))
            if key not in alike:
                alike[key] = ({**row, "kernels": 0, "used_by": []}, set())
                rows.append(alike[key][0])
            row, hashes = alike[key]
            hashes.add(compiled.hash)
            row["kernels"] = len(hashes)
            row["used_by"] += [user for user in variant.used_by if user not in row["used_by"]]
        else:
            print(format_row(row), flush=True)
            rows.append(row)
    for row in rows if args.recipes else []:
        print(format_row(row), flush=True)
    output = Path(args.output or Path(__file__).parent / "results" /
                  ("kernel_resources_recipes.json" if args.recipes else "kernel_resources.json"))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"triton": triton.__version__, "rows": rows}, indent=2))
    print(f"wrote {output}")
    return rows


if __name__ == "__main__":
    main()
