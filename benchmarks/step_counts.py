"""Count the kernel launches and the bytes of one training step per method recipe (issue 19; docs/performance.md).

A GPU's eager training step costs about one kernel launch per aten operation (host time, and a few microseconds
of device time however small the tensor) and, for the elementwise layers, the bytes they move.  This counts, for one
training step (forward, backward, SGD step with momentum, the surrogates' ``after_optimizer_step``) of each recipe's
model at its own T (``recipes/NAME.py``), against the ANN with the same layers (ReLU in place of the neurons):

- launches: the aten operations that compute (views, bare allocations and profiler marks excluded) plus the Triton
  kernel launches; SGD runs its multi-tensor (``foreach``) update, a GPU's default;
- operand bytes: per aten operation the bytes of its tensor inputs and outputs (an ``out=`` tensor once, as the
  result; an in-place operation's tensor as read and written), per Triton launch the bytes of its
  distinct tensor arguments.  A model of the memory traffic, not a measurement: a convolution's tiling, caches and
  an in-place operation's reuse are not seen, and both sides are counted alike;

and lists the operations the recipe adds.  Launches do not depend on the width, the batch or the image size
(A2SG's window search runs in passes within a per-device element budget: the CUDA budget is applied everywhere), but
for A2SG's padding of sampled rows shorter than others in their pass (fewer in larger models), so a small model
shows a GPU's launches; the bytes scale with the layers' sizes, and fixed costs (A2SG's sampled rows,
small tables) weigh more in a small model.  On a CPU run it with ``TRITON_INTERPRET=1``, so that the neurons take
the kernel paths a GPU takes:

    TRITON_INTERPRET=1 python benchmarks/step_counts.py                       # the four method recipes
    python benchmarks/step_counts.py --device cuda --width 1 --size 32 --batch 128

Writes a JSON file (``--output``, default benchmarks/results/step_counts.json) with every operation's counts.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves
from torch.utils._python_dispatch import TorchDispatchMode

from launch_sites import LAUNCH_SITES, launches_to
from neuron import machine_info, print_table, write_results
from train_step import build, recipe_config
from repro.models import triton_lif
from repro.surrogates import a2sg_search

RECIPES = ("ds_atgo_cifar10", "mpd_agl_cifar10", "a2sg_cifar100", "cf_cifar10")
ALLOCATIONS = ("aten.empty", "aten.empty_like", "aten.new_empty", "aten.empty_strided", "aten.new_empty_strided")


def tensor_bytes(values) -> int:
    return sum(t.numel() * t.element_size() for t in values if isinstance(t, torch.Tensor))


class StepCounts(TorchDispatchMode):
    """Launches and operand bytes by operation name (``launches``, ``bytes``): the aten operations that compute (not
    views, not bare allocations), and within ``kernels()`` the spiking-layer Triton kernels as ``triton.<name>`` (the
    Triton interpreter's own tensor operations inside a launch are not counted)."""

    def __init__(self):
        super().__init__()
        self.launches: collections.Counter = collections.Counter()
        self.bytes: collections.Counter = collections.Counter()
        self.inside_kernel = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func.overloadpacket)
        if not (self.inside_kernel or func.is_view or name in ALLOCATIONS or name.startswith("profiler.")):
            self.launches[name] += 1
            inputs = {key: value for key, value in kwargs.items() if key != "out"}  # an out= tensor is the result
            self.bytes[name] += tensor_bytes(tree_leaves((args, inputs, out)))
        return out

    @contextlib.contextmanager
    def kernels(self):
        """Within the block, every launch of the spiking-layer kernels is counted (``triton.<kernel name>``)."""
        def count(site, kernel, grid, args, kwargs):
            name = f"triton.{LAUNCH_SITES[site][1]}"
            distinct = {t.data_ptr(): t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)}
            self.launches[name] += 1
            self.bytes[name] += tensor_bytes(distinct.values())
            self.inside_kernel = True
            try:
                return kernel[grid](*args, **kwargs)
            finally:
                self.inside_kernel = False
        with launches_to(count):
            yield self


def count_step(variant: str, steps: int, args, device: torch.device) -> tuple[StepCounts, int]:
    """The counts of the second training step of ``variant`` (the first sizes lazily built state), and the number of
    spiking layers."""
    torch.manual_seed(args.seed)
    model = build(variant, steps, args).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)  # a GPU's default
    hooked = [module for module in model.modules() if hasattr(module, "after_optimizer_step")]
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(device)
    targets = torch.randint(0, 10, (args.batch,), generator=generator).to(device)
    autocast = {"none": None, "bf16": torch.bfloat16}[args.autocast]

    def training_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            logits = model(images)
        F.cross_entropy(logits.float().mean(0), targets).backward()
        optimizer.step()
        for module in hooked:
            module.after_optimizer_step(0)
    training_step()
    with StepCounts() as counts, counts.kernels():
        training_step()
    return counts, sum(hasattr(module, "surrogate") for module in model.modules())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--device", default="cpu", help="cpu (with TRITON_INTERPRET=1 for the kernel paths) | cuda")
    parser.add_argument("--autocast", default="bf16", choices=["none", "bf16"])
    parser.add_argument("--width", type=float, default=0.25, help="ResNet-19 channel multiplier")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=16, help="image height = width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "step_counts.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if not triton_lif.triton_available(device):
        print(f"the kernels do not run on {device}: counting the torch paths (TRITON_INTERPRET=1 for the kernels)")
    a2sg_search.EVALUATION_ELEMENTS[device.type] = a2sg_search.EVALUATION_ELEMENTS["cuda"]  # a GPU's passes
    info = machine_info(device)
    rows, anns = [], {}
    for name in args.recipes:
        steps = recipe_config(name).num_steps
        if steps not in anns:
            anns[steps] = count_step("ann_relu", steps, args, device)[0]
        ann, (ours, layers) = anns[steps], count_step(f"recipe:{name}", steps, args, device)
        launches, ann_launches = sum(ours.launches.values()), sum(ann.launches.values())
        megabytes, ann_megabytes = sum(ours.bytes.values()) / 2 ** 20, sum(ann.bytes.values()) / 2 ** 20
        added = ours.launches - ann.launches
        rows.append({"recipe": name, "steps": steps, "spiking_layers": layers, "ann_launches": ann_launches,
                     "launches": launches, "triton_launches": sum(n for op, n in ours.launches.items()
                                                                  if op.startswith("triton.")),
                     "launches_x_ann": launches / ann_launches, "added_per_layer": (launches - ann_launches) / layers,
                     "ann_MB": ann_megabytes, "MB": megabytes, "MB_x_ann": megabytes / ann_megabytes,
                     "most_added": ", ".join(f"{op.removeprefix('aten.')} {n}" for op, n in added.most_common(5)),
                     "launches_by_operation": dict(ours.launches), "bytes_by_operation": dict(ours.bytes),
                     "ann_launches_by_operation": dict(ann.launches), "ann_bytes_by_operation": dict(ann.bytes)})
    print_table("One training step: kernel launches (aten operations + Triton kernels) and operand MB, against the ANN "
                "at the same T", rows,
                [("recipe", "recipe", ""), ("steps", "T", "d"), ("spiking_layers", "layers", "d"),
                 ("ann_launches", "ANN launches", "d"), ("launches", "launches", "d"),
                 ("triton_launches", "Triton", "d"), ("launches_x_ann", "x ANN", ".2f"),
                 ("added_per_layer", "added per layer", ".1f"), ("ann_MB", "ANN MB", ".1f"), ("MB", "MB", ".1f"),
                 ("MB_x_ann", "MB x ANN", ".2f"), ("most_added", "most added launches", "")])
    return write_results({"machine": info, "args": vars(args), "rows": rows}, info, args.output)


if __name__ == "__main__":
    main()
