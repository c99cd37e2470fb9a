"""Cross-method ablation grid: (method arms or neurons x surrogates x losses) x seeds on any recipe.

    python recipes/ablate.py                                   # vanilla + the four methods, 3 seeds, digits
    python recipes/ablate.py --neurons lif plif --surrogates atan triangle --losses ce tet --seeds 1 2
    python recipes/ablate.py --base recipes/mpd_agl_cifar10.py --arms vanilla mpd_agl --epochs 150
    python recipes/ablate.py --base recipes/a2sg_cifar100.py --full_budget --arms a2sg_paper  # the A2SG paper's arms
    python recipes/ablate.py --smoke                           # seconds: two arms, one seed, tiny budget

Each run writes its own run directory under ``--output_dir``; a finished run (summary.json) is never
redone and a half-finished one resumes from its checkpoint, so re-running the same command completes a
grid.  Results: ``ablation.md`` and ``ablation.csv`` (mean +- std over seeds of final and best test
accuracy and firing rate) and ``ablation.png`` (bar plot).  All numbers are this suite's runs, not
published results.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
from pathlib import Path

from repro.config import Config, apply_smoke
from repro.grid import mean_std, run_grid
from repro.recipes import load_recipe

# The method arms, as changes to the base recipe [reconstructed for the embedded data: each method's
# neuron / surrogate / loss with its documented defaults; the vanilla arm is the base recipe's own setup].
# A2SG's arms are the paper's (docs/methods.md, "A2SG"): fixed TRI and BOX (window 0.5 theta
# [reconstructed]), ST-ASG (window search, TRI) and A2SG (window search, ramp), plus our earlier reconstruction.
ARMS = {
    "vanilla": {},
    "a2sg": {"surrogate": "a2sg", "surrogate_options": {}},
    "a2sg_fixed_tri": {"surrogate": "a2sg", "surrogate_options": {"shape": "triangle", "adapt": "none"}},
    "a2sg_fixed_box": {"surrogate": "a2sg", "surrogate_options": {"shape": "box", "adapt": "none"}},
    "a2sg_st_asg": {"surrogate": "a2sg", "surrogate_options": {"shape": "triangle"}},
    "a2sg_reconstructed": {"surrogate": "a2sg_reconstructed", "surrogate_options": {}},
    "ds_atgo": {"neuron": "adaptive_threshold", "neuron_options": {}, "surrogate": "tgo", "surrogate_options": {}},
    "mpd_agl": {"neuron": "plif", "neuron_options": {"decay": 0.2, "threshold": 0.5}, "surrogate": "mpd_agl",
                "surrogate_options": {}, "model_options_update": {"bn_scale": 0.5}},
    "circulate_firing": {"neuron": "circulate_firing", "neuron_options": {}, "surrogate": "learnable",
                         "surrogate_options": {}, "loss": "pnb", "loss_options": {}},
}
# Named groups of arms for --arms; the default is "methods"
ARM_GROUPS = {"methods": ["vanilla", "a2sg", "ds_atgo", "mpd_agl", "circulate_firing"],
              "a2sg_paper": ["a2sg_fixed_tri", "a2sg_fixed_box", "a2sg_st_asg", "a2sg"]}
# Budget of the default grid on embedded data: 5 arms x 3 seeds in under 20 minutes on 2 CPU cores.
EMBEDDED_BUDGET = {"epochs": 3, "model_options": {"width": 0.125}, "num_steps": 2, "batch_size": 32,
                   "limit_train_batches": 30}


def arm_config(base: Config, changes: dict) -> Config:
    changes = dict(changes)
    model_update = changes.pop("model_options_update", {})
    config = dataclasses.replace(base, **changes)
    return dataclasses.replace(config, model_options={**config.model_options, **model_update})


def grid(args, base: Config) -> dict[str, Config]:
    """Named configurations (without the seed)."""
    if args.neurons or args.surrogates or args.losses:
        combos = itertools.product(args.neurons or [base.neuron], args.surrogates or [base.surrogate],
                                   args.losses or [base.loss])
        return {f"{n}+{s}+{l}": arm_config(base, {"neuron": n, "surrogate": s, "loss": l,
                                                 **({"neuron_options": {}} if n != base.neuron else {}),
                                                 **({"surrogate_options": {}} if s != base.surrogate else {}),
                                                 **({"loss_options": {}} if l != base.loss else {})})
                for n, s, l in combos}
    arms = [arm for name in args.arms for arm in ARM_GROUPS.get(name, [name])]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; choose from: {', '.join([*ARMS, *ARM_GROUPS])}")
    return {name: arm_config(base, ARMS[name]) for name in arms}


def write_tables(rows: list[dict], output_dir: Path) -> str:
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    metrics = [("test_accuracy", "final test acc (%)"), ("best_test_accuracy", "best test acc (%)"),
               ("firing_rate", "firing rate")]
    header = ["arm", "neuron", "surrogate", "loss", "seeds"] + [label for _, label in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with (output_dir / "ablation.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arm", "neuron", "surrogate", "loss", "seeds"]
                        + [f"{key}_{stat}" for key, _ in metrics for stat in ("mean", "std")])
        for arm in arms:
            runs = [r for r in rows if r["arm"] == arm]
            stats = [mean_std([r[key] for r in runs]) for key, _ in metrics]
            first = runs[0]
            seeds = " ".join(str(r["seed"]) for r in runs)
            writer.writerow([arm, first["neuron"], first["surrogate"], first["loss"], seeds]
                            + [f"{v:.6g}" for pair in stats for v in pair])
            cells = [f"{m:.2f} ± {s:.2f}" if key != "firing_rate" else f"{m:.4f} ± {s:.4f}"
                     for (m, s), (key, _) in zip(stats, metrics)]
            lines.append("| " + " | ".join([arm, first["neuron"], first["surrogate"], first["loss"], seeds, *cells])
                         + " |")
    first = rows[0]
    table = "\n".join(lines) + (f"\n\nDataset `{first['dataset']}`, model `{first['model']}`, T={first['num_steps']}, "
                                f"{first['epochs']} epochs; mean ± std over seeds; our runs, not published numbers.\n")
    (output_dir / "ablation.md").write_text("# Ablation\n\n" + table)
    return table


def plot(rows: list[dict], output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in rows))
    stats = [mean_std([r["test_accuracy"] for r in rows if r["arm"] == arm]) for arm in arms]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(arms)), 4))
    ax.bar(arms, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=4, color="tab:blue")
    ax.set(ylabel="final test accuracy (%)", title=f"Ablation on {rows[0]['dataset']} (mean ± std over seeds)")
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", rotation=20)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(output_dir / "ablation.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(Path(__file__).with_name("quickstart.py")),
                        help="recipe whose `config` is the base of every run")
    parser.add_argument("--arms", nargs="+", default=["methods"],
                        help=f"arms: {', '.join(ARMS)}; or groups: " + "; ".join(f"{k} = {' '.join(v)}"
                                                                                for k, v in ARM_GROUPS.items()))
    parser.add_argument("--neurons", nargs="+", help="factorial grid instead of arms: neuron names")
    parser.add_argument("--surrogates", nargs="+", help="factorial grid: surrogate names")
    parser.add_argument("--losses", nargs="+", help="factorial grid: loss names")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2025, 2026, 2027])
    parser.add_argument("--epochs", type=int, help="override the budget's epochs")
    parser.add_argument("--output_dir", default="runs/ablation")
    parser.add_argument("--full_budget", action="store_true",
                        help="use the base recipe's own budget instead of the embedded-data budget")
    parser.add_argument("--smoke", action="store_true", help="two arms, one seed, a few batches")
    args = parser.parse_args(argv)

    base: Config = load_recipe(args.base).config
    if args.smoke:
        base = apply_smoke(base, base.dataset)
        args.arms, args.seeds = [arm for name in args.arms for arm in ARM_GROUPS.get(name, [name])][:2], args.seeds[:1]
    elif not args.full_budget:
        base = dataclasses.replace(base, **{**EMBEDDED_BUDGET,
                                            "model_options": {**base.model_options, **EMBEDDED_BUDGET["model_options"]}})
    if args.epochs:
        base = dataclasses.replace(base, epochs=args.epochs)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = run_grid(grid(args, base), args.seeds, output_dir)
    table = write_tables(rows, output_dir)
    plot(rows, output_dir)
    print(table)
    return table


if __name__ == "__main__":
    main()
