"""Benchmark one ResNet-19 training step (forward, backward, SGD step) (issue 8; docs/performance.md).

Variants, all built by the same ResNet-19 builder (``repro.models.resnet19``, docs/methods.md "Backbones") and
measured interleaved in one run for every (T, B):

- ``ours_fused`` / ``ours_loop``: ``create_model("resnet19", neuron=NEURON)`` (``--neuron``: ``lif``, the
  snnTorch preset, or ``plif``, the reference preset), the fused path vs the reference loop;
- ``snntorch``: stock ``snntorch.Leaky(beta=0.5, reset_mechanism="zero")`` stepped over T in every layer;
- ``spikingjelly``: spikingjelly 2.0 multi-step ``LIFNode`` (its automatic CPU choice), if installed;
- ``ann_relu``: the same layers with ReLU in place of the neurons, i.e. the ANN run on T*B images
  (direct encoding repeats each image T times), the floor;
- with ``--compile``: ``ours_compiled`` and ``ann_compiled``, the same models after ``model.compile(dynamic=False)``
  (inductor; our neurons then trace their reference loop, whose elementwise steps inductor fuses).
  Their first step, which compiles (minutes on a small CPU), is timed apart (``first step s``) with the graph
  breaks dynamo counted in it; ``--compile_backend eager`` traces without inductor (graph breaks in seconds).

``--recipes NAME...`` gives the per-method table instead: for every recipe (``recipes/NAME.py``) its own
model options, neuron and surrogate at its own T (``recipe:NAME``; ``recipe_compiled:NAME`` with
``--compile``), against ``ann_relu`` (and ``ann_compiled``) and ``spikingjelly`` at the same T, one table
per T; the step calls the surrogates' ``after_optimizer_step`` as the engine does (A2SG's controller
steps, TLSG clamping).  ``x ANN compiled`` is the time over the compiled ANN's.

Throughput = B / step time (images per second; every variant processes each image T times).
Memory: bytes of the distinct storages the forward graph saves for backward (the stored activations);
on CUDA also the peak allocated memory of a step.  Loss: CE of the T-averaged logits.

    OMP_NUM_THREADS=1 python benchmarks/train_step.py                  # T = 2, 4, 8 at B = 4; B = 2, 8 at T = 4
    python benchmarks/train_step.py --steps 4 --batches 32 --repeats 5
    python benchmarks/train_step.py --device cuda --batch 128 --batches 64 256 --autocast bf16
    python benchmarks/train_step.py --device cuda --batch 128 --batches --autocast bf16 --compile \
        --recipes ds_atgo_cifar10 mpd_agl_cifar10 a2sg_cifar100 cf_cifar10     # the per-method table

Writes a JSON file (``--output``, default benchmarks/results/train_step.json).
"""
from __future__ import annotations

import argparse
import runpy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

from neuron import (ReLUFloor, SnnTorchLoop, SpikingJellyLIF, interleaved_timing, machine_info, print_table,
                    spikingjelly_available, synchronize, write_results)
from repro.diagnostics import saved_tensor_bytes
from repro.models import call_model_built_hooks, create_model, resnet19

VARIANTS = ("ann_relu", "ours_fused", "ours_loop", "snntorch", "spikingjelly")
COMPILED = ("ann_compiled", "ours_compiled")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def recipe_config(name: str):
    """The ``config`` of ``recipes/NAME.py`` (the recipe's ``main`` does not run)."""
    path = RECIPES / f"{name}.py"
    if not path.exists():
        raise SystemExit(f"no recipe {path}; choose from {sorted(p.stem for p in RECIPES.glob('*.py'))}")
    return runpy.run_path(str(path))["config"]


def is_compiled(variant: str) -> bool:
    return variant in COMPILED or variant.startswith("recipe_compiled")


def build(variant: str, steps: int, args) -> nn.Module:
    """ResNet-19 (CIFAR-10 head) with the variant's neurons, or a recipe's model (``recipe:NAME``)."""
    if variant.startswith("recipe"):
        config = recipe_config(variant.split(":", 1)[1])
        model = call_model_built_hooks(create_model(
            config.model, num_classes=10, num_steps=config.num_steps, neuron=config.neuron,
            surrogate=config.surrogate, neuron_kwargs=config.neuron_options,
            surrogate_kwargs=config.surrogate_options, **{**config.model_options, "width": args.width}))
    elif variant.startswith("ours"):
        model = create_model("resnet19", num_classes=10, num_steps=steps, width=args.width, neuron=args.neuron,
                             surrogate="atan", neuron_kwargs={"fused": variant == "ours_fused"})
    else:
        make = {"ann": ReLUFloor, "snntorch": SnnTorchLoop, "spikingjelly": SpikingJellyLIF}[variant.split("_")[0]]
        model = resnet19(make, num_classes=10, num_steps=steps, width=args.width)
    if is_compiled(variant):
        model.compile(backend=args.compile_backend, dynamic=False)  # as the engine: in place, static shapes
    return model


def benchmark_config(steps: int, batch: int, variants: list[str], args, device: torch.device) -> list[dict]:
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(batch, 3, 32, 32, generator=generator).to(device)
    targets = torch.randint(0, 10, (batch,), generator=generator).to(device)
    if any(is_compiled(variant) for variant in variants):
        torch._dynamo.reset()  # fresh caches per (T, B): the shared forward code would hit dynamo's recompile limit
    models, optimizers = {}, {}
    for variant in variants:
        torch.manual_seed(args.seed)
        models[variant] = build(variant, steps, args).to(device).train()
        optimizers[variant] = torch.optim.SGD(models[variant].parameters(), lr=0.01, momentum=0.9)

    autocast_dtype = {"none": None, "bf16": torch.bfloat16}[args.autocast]

    def forward(variant: str) -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return models[variant](images)

    def train_step(variant: str):
        optimizer = optimizers[variant]

        hooked = [m for m in models[variant].modules() if hasattr(m, "after_optimizer_step")]

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(forward(variant).float().mean(0), targets)
            loss.backward()
            optimizer.step()
            for module in hooked:
                module.after_optimizer_step(0)
        return run

    rows = []
    for variant in variants:
        row = {"variant": variant, "steps": steps, "batch": batch, "saved_MB": None}
        if not is_compiled(variant):  # saved-tensor hooks do not see inside compiled graphs
            logits, saved = saved_tensor_bytes(lambda: forward(variant))
            row["saved_MB"] = saved / 2 ** 20
            del logits
        else:  # the first step compiles
            breaks, started = sum(counters["graph_break"].values()), time.perf_counter()
            train_step(variant)()
            synchronize(device)
            row["first_step_s"] = time.perf_counter() - started
            row["graph_breaks"] = sum(counters["graph_break"].values()) - breaks
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            train_step(variant)()
            synchronize(device)
            row["peak_MB"] = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
        rows.append(row)
    times = interleaved_timing({v: train_step(v) for v in variants}, args.repeats, args.warmup, device, args.seed)
    floor = statistics.median(times["ann_relu"])
    fused = statistics.median(times["ours_fused"]) if "ours_fused" in times else None
    compiled_floor = statistics.median(times["ann_compiled"]) if "ann_compiled" in times else None
    floor_saved = rows[variants.index("ann_relu")]["saved_MB"]
    for row in rows:
        median = statistics.median(times[row["variant"]])
        row.update(median_s=median, min_s=min(times[row["variant"]]), images_per_s=batch / median,
                   x_ann=median / floor, x_fused=median / fused if fused else None,
                   x_ann_compiled=median / compiled_floor if compiled_floor else None,
                   saved_x_ann=None if row["saved_MB"] is None else row["saved_MB"] / floor_saved)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8], help="T values (at --batch)")
    parser.add_argument("--batch", type=int, default=4, help="B for the T sweep")
    parser.add_argument("--batches", type=int, nargs="*", default=[2, 8], help="further B values (at T = --base_steps)")
    parser.add_argument("--base_steps", type=int, default=4, help="T for the batch sweep")
    parser.add_argument("--width", type=float, default=1.0, help="ResNet-19 channel multiplier (1.0 = 128/256/512)")
    parser.add_argument("--neuron", default="lif", choices=["lif", "plif"], help="our neuron for ours_*")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="subset of " + ", ".join(VARIANTS))
    parser.add_argument("--compile", action="store_true", help="add the compiled variants " + ", ".join(COMPILED))
    parser.add_argument("--compile_backend", default="inductor",
                        help="torch.compile backend of the compiled variants (eager: dynamo's tracing only)")
    parser.add_argument("--recipes", nargs="*", default=None,
                        help="per-method table: these recipes (recipes/NAME.py) at their own T, with the ANN floors")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", default="none", choices=["none", "bf16"],
                        help="mixed precision of the forward (torch.autocast; our neurons keep fp32 state)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "train_step.json"))
    args = parser.parse_args(argv)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {VARIANTS}")
    variants = [v for v in VARIANTS if v in args.variants or v == "ann_relu"]
    variants += list(COMPILED) if args.compile else []
    if "spikingjelly" in variants and not spikingjelly_available():
        print("spikingjelly is not installed: skipping it (pip install -e '.[benchmarks]')")
        variants.remove("spikingjelly")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(device)
    configs = [(t, args.batch, variants) for t in args.steps]
    configs += [(args.base_steps, b, variants) for b in args.batches if (args.base_steps, b, variants) not in configs]
    if args.recipes:  # one table per recipe T: the ANN floors, spikingjelly and the recipes with that T
        floors = [v for v in variants if v in ("ann_relu", "ann_compiled", "spikingjelly")]
        by_steps: dict[int, list[str]] = {}
        for name in args.recipes:
            by_steps.setdefault(recipe_config(name).num_steps, []).extend(
                [f"recipe:{name}"] + ([f"recipe_compiled:{name}"] if args.compile else []))
        configs = [(steps, args.batch, floors + recipes) for steps, recipes in sorted(by_steps.items())]
    results = {"machine": info, "args": vars(args), "rows": []}
    columns = [("variant", "variant", "s"), ("median_s", "median s", ".3f"), ("min_s", "min s", ".3f"),
               ("images_per_s", "img/s", ".2f"), ("x_ann", "x ANN", ".3f"), ("x_fused", "x ours_fused", ".2f"),
               ("x_ann_compiled", "x ANN compiled", ".2f"),
               ("saved_MB", "saved MB", ".0f"), ("saved_x_ann", "saved x ANN", ".2f")]
    if device.type == "cuda":
        columns.append(("peak_MB", "peak MB", ".0f"))
    if args.compile:
        columns += [("first_step_s", "first step s", ".1f"), ("graph_breaks", "graph breaks", "d")]
    for steps, batch, config_variants in configs:
        rows = benchmark_config(steps, batch, config_variants, args, device)
        results["rows"].extend(rows)
        write_results(results, info, args.output, complete=False)
        model = "recipe models" if args.recipes else f"ResNet-19 (neuron {args.neuron})"
        print_table(f"{model}, width {args.width}, training step, T={steps}, B={batch}, "
                    f"{device}, autocast {args.autocast}, {args.repeats} interleaved runs "
                    f"({info['torch_threads']} threads)", rows, columns)
    return write_results(results, info, args.output)


if __name__ == "__main__":
    main()
