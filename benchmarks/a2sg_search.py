"""Cost of A2SG's window search per training step (issue 17; docs/methods.md, "A2SG").

One ResNet-19 training step (forward, backward, SGD step, the surrogates' ``after_optimizer_step``) with
the A2SG surrogate in each mode, interleaved in one run, against the same step with a fixed window:

- ``fixed``: ``shape=ramp, adapt=none`` (statistics every 10 steps, none in the timed steps' majority);
- ``search_every_step``: the paper mode default, ``adapt=search`` with ``update_every=1``;
- ``search_every_10``: the search on every 10th step (``update_every=10``);
- ``reconstructed``: our earlier ``sgv_tgc`` controller (``a2sg_reconstructed``, K = 10).

It also times what a Bayesian search (``search=bayes``, not provided) would add per step: a scikit-learn
Gaussian-process fit and an expected-improvement pick over the same candidates after each of
``--bayes_evaluations`` sequential objective evaluations, for every (layer, timestep).

    OMP_NUM_THREADS=2 python benchmarks/a2sg_search.py                      # CPU, width 0.25, T=4, B=8
    python benchmarks/a2sg_search.py --device cuda --width 1 --batch 128 --autocast bf16

Writes a JSON file (``--output``, default benchmarks/results/a2sg_search.json).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from neuron import interleaved_timing, machine_info, print_table
from repro.models import call_model_built_hooks, create_model

MODES = {
    "fixed": ("a2sg", {"shape": "ramp", "adapt": "none"}),
    "search_every_step": ("a2sg", {"shape": "ramp", "adapt": "search"}),
    "search_every_10": ("a2sg", {"shape": "ramp", "adapt": "search", "update_every": 10}),
    "reconstructed": ("a2sg_reconstructed", {}),
}


def training_step(mode: str, args, device: torch.device):
    surrogate, options = MODES[mode]
    torch.manual_seed(args.seed)
    model = call_model_built_hooks(create_model("resnet19", num_classes=10, num_steps=args.steps, width=args.width,
                                                neuron="lif", surrogate=surrogate, surrogate_kwargs=options))
    model = model.to(device).train()  # the surrogates evaluate their searches together, as in the engine
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    hooked = [m for m in model.modules() if hasattr(m, "after_optimizer_step")]
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch, 3, 32, 32, generator=generator).to(device)
    targets = torch.randint(0, 10, (args.batch,), generator=generator).to(device)
    dtype = {"none": None, "bf16": torch.bfloat16}[args.autocast]
    count = [0]

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images)
        F.cross_entropy(logits.float().mean(0), targets).backward()
        optimizer.step()
        count[0] += 1
        for module in hooked:
            module.after_optimizer_step(count[0])
    return run, len(hooked)


def bayes_seconds_per_step(layers: int, steps: int, evaluations: int, candidates: int) -> float:
    """Host time of a GP-based search (scikit-learn) for every (layer, timestep) of one training step."""
    from scipy.stats import norm
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import Matern
    grid = np.log(np.logspace(np.log10(0.2), np.log10(2.0), candidates))[:, None]
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(layers * steps):
        tried = [int(i) for i in rng.choice(candidates, size=2, replace=False)]
        values = [float(rng.normal()) for _ in tried]
        for _ in range(evaluations - 2):
            gp = GaussianProcessRegressor(kernel=Matern(nu=2.5), normalize_y=True).fit(grid[tried], values)
            mean, std = gp.predict(grid, return_std=True)
            improvement = mean - max(values)
            z = improvement / np.maximum(std, 1e-9)
            expected = improvement * norm.cdf(z) + std * norm.pdf(z)
            tried.append(int(np.argmax(expected)))
            values.append(float(rng.normal()))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="T")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", default="none", choices=["none", "bf16"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bayes_evaluations", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "a2sg_search.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    tasks, layers = {}, 0
    for mode in MODES:
        tasks[mode], layers = training_step(mode, args, device)
    times = interleaved_timing(tasks, args.repeats, args.warmup, device, args.seed)
    fixed = statistics.median(times["fixed"])
    rows = [{"mode": mode, "median_ms": 1e3 * statistics.median(t), "x_fixed": statistics.median(t) / fixed}
            for mode, t in times.items()]
    bayes = bayes_seconds_per_step(layers, args.steps, args.bayes_evaluations, 12)
    rows.append({"mode": f"bayes ({args.bayes_evaluations} evaluations, host time only)",
                 "median_ms": 1e3 * bayes, "x_fixed": bayes / fixed})
    print_table(f"A2SG training step, ResNet-19 width {args.width}, T={args.steps}, B={args.batch}, "
                f"{layers} spiking layers, {args.device}", rows,
                [("mode", "mode", "s"), ("median_ms", "ms", ".1f"), ("x_fixed", "x fixed window", ".2f")])
    result = {"machine": machine_info(device), "args": vars(args), "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
