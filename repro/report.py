"""Diagnostics report of one or several runs: ``python -m repro.report RUN_DIR [RUN_DIR ...]``.

Reads each run directory written by ``repro.engine.train`` (config.json, metrics.jsonl,
summary.json, best_model.pt or checkpoint.pt), rebuilds the model as the engine does, runs
``repro.diagnostics.collect_diagnostics`` on the first test batches (and, on request, sharpness and
loss-landscape slices on fixed training batches), and writes ``report.md`` with PNG plots and one
``diagnostics_<run>.json`` per run into the output folder (default: ``RUN_DIR/report`` for one run,
``<parent of the first run>/comparison_report`` for several).  Several runs are shown side by side.

Every number in the report is a measurement of these runs, not a published number.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from .checkpoint import load_checkpoint  # noqa: E402
from .datasets import create_dataset  # noqa: E402
from .diagnostics import DEFAULT_MEASURES, collect_diagnostics  # noqa: E402
from .losses import create_loss  # noqa: E402
from .models import create_model  # noqa: E402
from .sharpness import model_landscape, model_sharpness  # noqa: E402
from .surrogates import A2SG  # noqa: E402
from .surrogates.a2sg_statistics import STATISTICS_DEFINITIONS  # noqa: E402

CHECKPOINTS = {"best": "best_model.pt", "last": "checkpoint.pt"}
DPI = 110


@dataclass
class Run:
    """A loaded run: its directory, label, config (dict), history rows, summary and model."""
    path: Path
    label: str
    config: dict
    history: list
    summary: dict
    model: torch.nn.Module
    checkpoint: str
    epoch: int


def build_model(config: dict, dataset) -> torch.nn.Module:
    """The model of a run, built exactly as ``repro.engine.train`` builds it."""
    return create_model(
        config["model"], num_classes=dataset.num_classes, in_channels=dataset.in_channels,
        num_steps=config["num_steps"], neuron=config["neuron"], surrogate=config["surrogate"],
        neuron_kwargs=config.get("neuron_options") or {}, surrogate_kwargs=config.get("surrogate_options") or {},
        **(config.get("model_options") or {}),
    )


def make_dataset(config: dict, split: str):
    return create_dataset(config["dataset"], split, root=config.get("data_root"), download=False,
                          **(config.get("dataset_options") or {}))


def load_run(run_dir: str | Path, checkpoint: str = "best", label: str | None = None,
             device: str = "cpu") -> Run:
    """Load config, history, summary and the weights (``best`` = best_model.pt, falling back to
    checkpoint.pt; ``last`` = checkpoint.pt)."""
    path = Path(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {tuple(CHECKPOINTS)}, got {checkpoint!r}")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a run directory (no config.json); pass the --output_dir of a run")
    config = json.loads(config_path.read_text())
    metrics = path / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    history = [json.loads(line) for line in lines if line.strip()]
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
    weights = path / CHECKPOINTS[checkpoint]
    if not weights.is_file() and checkpoint == "best":
        weights = path / CHECKPOINTS["last"]
    state = load_checkpoint(weights)
    model = build_model(config, make_dataset(config, "test"))
    model.load_state_dict(state["model"])
    return Run(path, label or path.name, config, history, summary, model.to(device), weights.name,
               int(state["epoch"]))


def fixed_batches(dataset, batch_size: int, count: int, seed: int = 0) -> list:
    """The first ``count`` batches in dataset order (random transforms seeded), so runs compare on
    the same samples."""
    torch.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    batches = []
    for batch in loader:
        if len(batches) >= count:
            break
        batches.append(tuple(batch))
    return batches


def run_loss(config: dict, model: torch.nn.Module):
    """The run's training loss (bound to the model if it needs it)."""
    loss = create_loss(config.get("loss", "ce"), **(config.get("loss_options") or {}))
    if hasattr(loss, "bind"):
        loss.bind(model)
    return loss


def measure(run: Run, args: argparse.Namespace) -> dict:
    """All diagnostics of one run (JSON-serialisable)."""
    device = next(run.model.parameters()).device
    batch_size = args.batch_size or run.config.get("eval_batch_size", 64)
    test_batches = fixed_batches(make_dataset(run.config, "test"), batch_size, args.batches, args.seed)
    result = collect_diagnostics(
        run.model, test_batches, measures=DEFAULT_MEASURES, mode=args.mode, window_rule=args.window_rule,
        window_fraction=args.window_fraction, histogram_bins=args.histogram_bins,
        histogram_range=tuple(args.histogram_range),
        energy_options={"enc_times_T": args.enc_times_T, "e_mac_pj": args.e_mac_pj, "e_ac_pj": args.e_ac_pj})
    if args.sharpness or args.landscape:
        train_batches = fixed_batches(make_dataset(run.config, "train"), args.sharpness_batch_size,
                                      args.sharpness_batches, args.seed)
        train_batches = [tuple(t.to(device) for t in batch) for batch in train_batches]
        loss = run_loss(run.config, run.model)
        if args.sharpness:
            result["sharpness"] = model_sharpness(run.model, train_batches, loss, iterations=args.sharpness_iterations,
                                                  seed=args.seed, trace_samples=args.trace_samples)
        if args.landscape:
            result["landscape"] = model_landscape(run.model, train_batches, loss, dims=args.landscape,
                                                  points=args.landscape_points, seed=args.seed)
    result["checkpoint"], result["checkpoint_epoch"] = run.checkpoint, run.epoch
    return result


# ------------------------------------------------------------------------------------------ plots
def _colors(count: int) -> list:
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(count)]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_training_curves(runs: list[Run], path: Path) -> Path | None:
    """Loss, accuracy and firing rate per epoch, one colour per run (train solid, test dashed)."""
    panels = [("loss", "train_loss", "test_loss", "loss"), ("accuracy", "train_accuracy", "test_accuracy",
                                                                "top-1 accuracy (%)"),
              ("firing rate (test)", None, "firing_rate", "mean firing rate (spikes / neuron / step)")]
    if not any(run.history for run in runs):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for run, color in zip(runs, _colors(len(runs))):
        epochs = [row["epoch"] for row in run.history]
        for ax, (_, train_key, test_key, _) in zip(axes, panels):
            if train_key and all(train_key in row for row in run.history):
                ax.plot(epochs, [row[train_key] for row in run.history], "o-", color=color, label=f"{run.label} train")
            if all(test_key in row for row in run.history):
                ax.plot(epochs, [row[test_key] for row in run.history], "s--", color=color, label=f"{run.label} test")
    for ax, (title, _, _, ylabel) in zip(axes, panels):
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, path)


def plot_layer_bars(values: dict[str, dict[str, float | None]], path: Path, title: str, ylabel: str) -> Path | None:
    """Grouped bars: one group per layer, one bar per run (None = n/a, drawn as no bar)."""
    layers = list(dict.fromkeys(layer for per_run in values.values() for layer in per_run))
    if not layers or all(v is None for per_run in values.values() for v in per_run.values()):
        return None
    width = 0.8 / len(values)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.45 * len(layers) * max(1, len(values) ** 0.5)), 4.8))
    positions = np.arange(len(layers))
    for index, ((label, per_run), color) in enumerate(zip(values.items(), _colors(len(values)))):
        heights = [per_run.get(layer) for layer in layers]
        heights = [np.nan if h is None else h for h in heights]
        ax.bar(positions + (index - (len(values) - 1) / 2) * width, heights, width, label=label, color=color)
    ax.set_xticks(positions, layers, rotation=90, fontsize=7)
    ax.set(xlabel="spiking layer (forward order)", ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_step_heatmaps(values: dict[str, dict[str, list | None]], path: Path, title: str,
                       colorbar_label: str) -> Path | None:
    """Per run, a layer x timestep heatmap (blank rows = n/a)."""
    values = {label: per_run for label, per_run in values.items() if per_run}
    if not values:
        return None
    fig, axes = plt.subplots(1, len(values), figsize=(max(4.5, 2 + 0.6 * _max_steps(values)) * len(values),
                                                      max(4.0, 0.22 * max(len(v) for v in values.values()) + 1.5)),
                             squeeze=False)
    for ax, (label, per_run) in zip(axes[0], values.items()):
        layers = list(per_run)
        steps = _max_steps({label: per_run})
        grid = np.full((len(layers), steps), np.nan)
        for row, layer in enumerate(layers):
            if per_run[layer] is not None:
                grid[row, :len(per_run[layer])] = per_run[layer]
        image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xticks(range(steps), [str(t + 1) for t in range(steps)])
        ax.set_yticks(range(len(layers)), layers, fontsize=6)
        ax.set(xlabel="timestep t", title=f"{title}\n{label}")
        fig.colorbar(image, ax=ax, label=colorbar_label)
    return _save(fig, path)


def _max_steps(values: dict) -> int:
    return max((len(v) for per_run in values.values() for v in per_run.values() if v is not None), default=1)


def _spread(items: list, count: int) -> list:
    """At most ``count`` items, evenly spaced, keeping the first and the last."""
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def plot_histograms(histograms: dict, path: Path, title: str, max_layers: int = 6, max_steps: int = 4) -> Path | None:
    """Membrane-potential histograms (fraction of neurons per bin) for evenly spaced layers and steps,
    with the part inside the gradient window shaded and the mean threshold marked."""
    layers = _spread(list(histograms.get("layers", {})), max_layers)
    if not layers:
        return None
    low, high = histograms["range"]
    edges = np.linspace(low, high, histograms["bins"] + 1)
    steps = _spread(list(range(len(histograms["layers"][layers[0]]["all"]))), max_steps)
    fig, axes = plt.subplots(len(layers), len(steps), figsize=(3.4 * len(steps), 2.3 * len(layers)), squeeze=False)
    for row, layer in enumerate(layers):
        data = histograms["layers"][layer]
        for col, t in enumerate(steps):
            ax = axes[row][col]
            counts = np.asarray(data["all"][t])
            total = counts.sum() + data["below"][t] + data["above"][t]
            ax.stairs(counts / max(total, 1), edges, fill=True, color="0.75", label="all neurons")
            if data["window_observed"]:
                ax.stairs(np.asarray(data["window"][t]) / max(total, 1), edges, fill=True, color="tab:orange",
                          alpha=0.85, label="inside gradient window")
            if data["threshold"][t] is not None:
                ax.axvline(data["threshold"][t], color="tab:red", ls="--", lw=1, label="threshold (mean)")
            outside = (data["below"][t] + data["above"][t]) / max(total, 1)
            ax.set_title(f"{layer}, t={t + 1}" + (f" ({100 * outside:.1f}% off-range)" if outside else ""),
                         fontsize=7)
            ax.tick_params(labelsize=7)
            if row == len(layers) - 1:
                ax.set_xlabel("membrane potential u (pre-fire)", fontsize=8)
            if col == 0:
                ax.set_ylabel("fraction of neurons", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.86, 0.96))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_surrogate_parameters(values: dict[str, dict[str, dict[str, list]]], path: Path) -> Path | None:
    """Mean per-call surrogate parameters per layer (lines per run and timestep), only the ones that
    vary across layers, steps or runs (constants are listed in the text)."""
    names = sorted({p for per_run in values.values() for layer in per_run.values() for p in layer})
    varying = [p for p in names if len({round(v, 9) for per_run in values.values() for layer in per_run.values()
                                         for v in layer.get(p, []) if v is not None}) > 1]
    if not varying:
        return None
    fig, axes = plt.subplots(1, len(varying), figsize=(7 * len(varying), 4.2), squeeze=False)
    for ax, param in zip(axes[0], varying):
        for (label, per_run), color in zip(values.items(), _colors(len(values))):
            layers = [layer for layer in per_run if param in per_run[layer]]
            steps = max((len(per_run[layer][param]) for layer in layers), default=0)
            for t, style in zip(range(steps), ["o-", "s--", "^:", "d-.", "v-", "x--", "*:", "p-."] * 4):
                ax.plot(range(len(layers)), [per_run[layer][param][t] if t < len(per_run[layer][param]) else np.nan
                                              for layer in layers], style, color=color, ms=3,
                        label=f"{label}, t={t + 1}")
        ax.set(xlabel="spiking layer index (forward order)", ylabel=f"{param} (mean per call)",
               title=f"surrogate parameter {param!r} per layer and timestep")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def state_trajectories(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """{state name: (epochs, mean over layers and steps)} from the ``diagnostics/epoch_*.json`` snapshots that
    ``--diagnostics_every`` writes; the name is the last part of the entry (``w_t``, ``running_thr``, ``k``,
    ``sgv_ema``, ``decay``, ...).  States that never change are left out."""
    series: dict[str, dict[int, list[float]]] = {}
    for path in sorted((run_dir / "diagnostics").glob("epoch_*.json")):
        epoch = int(path.stem.split("_")[1])
        for name, value in json.loads(path.read_text()).get("method_state", {}).items():
            values = np.asarray(value, dtype=float).ravel() if value is not None else np.empty(0)
            if values.size:
                series.setdefault(name.rsplit(".", 1)[-1], {}).setdefault(epoch, []).append(float(values.mean()))
    return {kind: (sorted(by_epoch), [float(np.mean(by_epoch[e])) for e in sorted(by_epoch)])
            for kind, by_epoch in series.items()
            if len(by_epoch) > 1 and np.ptp([np.mean(v) for v in by_epoch.values()]) > 0}


def plot_state_trajectories(trajectories: dict[str, dict], path: Path) -> Path | None:
    """One panel per state (mean over layers and timesteps) against the epoch, one line per run."""
    kinds = sorted({kind for per_run in trajectories.values() for kind in per_run})
    if not kinds:
        return None
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for (label, per_run), color in zip(trajectories.items(), _colors(len(trajectories))):
            if kind in per_run:
                ax.plot(*per_run[kind], "o-", color=color, label=label)
        ax.set(title=kind, xlabel="epoch", ylabel=f"{kind} (mean over layers, steps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Method state over training (diagnostics snapshots)")
    return _save(fig, path)


def plot_landscape(landscapes: dict[str, dict], path: Path) -> Path | None:
    """1-D: loss vs step size, one line per run; 2-D: one contour plot per run."""
    landscapes = {k: v for k, v in landscapes.items() if v}
    if not landscapes:
        return None
    if all(v["dims"] == 1 for v in landscapes.values()):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for (label, data), color in zip(landscapes.items(), _colors(len(landscapes))):
            ax.plot(data["coordinates"], data["loss"], "o-", ms=3, color=color, label=label)
        ax.set(xlabel="step along a filter-normalised random direction (alpha)", ylabel="training loss",
               title="1-D loss landscape (BN eval mode)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return _save(fig, path)
    fig, axes = plt.subplots(1, len(landscapes), figsize=(5.2 * len(landscapes), 4.5), squeeze=False)
    for ax, (label, data) in zip(axes[0], landscapes.items()):
        if data["dims"] != 2:
            ax.set_axis_off()
            continue
        axis = np.asarray(data["coordinates"])
        contour = ax.contour(axis, axis, np.asarray(data["loss"]), levels=15, cmap="viridis")
        ax.clabel(contour, fontsize=6)
        ax.set(xlabel="direction 1 (alpha)", ylabel="direction 2 (beta)", title=f"2-D loss landscape\n{label}")
        fig.colorbar(contour, ax=ax, label="training loss")
    return _save(fig, path)


# --------------------------------------------------------------------------------------- markdown
def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def _format(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _compact(value, limit: int = 8) -> str:
    if isinstance(value, list):
        flat = np.asarray(value, dtype=float).ravel().tolist() if value else []
        shown = ", ".join(_format(v, 4) for v in flat[:limit])
        return f"[{shown}{', ...' if len(flat) > limit else ''}] ({len(flat)} values)"
    return _format(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_format(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return lines + [""]


def _image(path: Path | None, out_dir: Path, alt: str) -> str:
    return f"![{alt}]({path.relative_to(out_dir).as_posix()})" if path else f"_({alt}: nothing to plot)_"


def write_report(runs: list[Run], results: dict[str, dict], out_dir: Path, args: argparse.Namespace) -> Path:
    """Plots and ``report.md`` for the runs; returns the path of the Markdown file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for run in runs:
        (out_dir / f"diagnostics_{_slug(run.label)}.json").write_text(json.dumps(results[run.label], indent=1))
    lines = ["# Diagnostics report", "",
             "All numbers are measurements of these runs (this suite), **not published numbers**.", ""]
    rows = []
    for run in runs:
        c, s = run.config, run.summary
        rows.append([run.label, c["model"], c["neuron"], c["surrogate"], c.get("loss", "ce"), c["dataset"],
                     c["num_steps"], s.get("epochs", len(run.history)), s.get("test_accuracy"),
                     s.get("best_test_accuracy"), f"{run.checkpoint} (epoch {run.epoch})"])
    lines += ["## Runs", ""] + _table(["run", "model", "neuron", "surrogate", "loss", "dataset", "T", "epochs",
                                       "final test acc (%)", "best test acc (%)", "weights measured"], rows)
    for run in runs:
        options = {k: run.config.get(k) for k in ("model_options", "neuron_options", "surrogate_options",
                                                   "loss_options") if run.config.get(k)}
        if options:
            lines.append(f"- `{run.label}` options: `{json.dumps(options)}`")
    first = results[runs[0].label]
    lines += ["", f"Measured on the first {first['batches']} test batches ({first['images']} images per run, "
              f"T = {first['num_steps']}), BN in **{first['mode']}** mode, buffers restored after every batch. "
              f"Gradient window: rule `{args.window_rule}` (compact shapes: h(x) > 0; smooth shapes: "
              f"h(x) >= {args.window_fraction} x h(0)) [reconstructed].", ""]

    lines += ["## Training curves", "", _image(plot_training_curves(runs, out_dir / "training_curves.png"), out_dir,
                                               "training curves"), ""]

    rates = {run.label: results[run.label]["firing_rate"] for run in runs}
    lines += ["## Firing rate", "", "Firing rate = sum |S| / (neurons x T x images), per spiking layer.", "",
              _image(plot_layer_bars(rates, out_dir / "firing_rate.png", "Firing rate per layer (test batches)",
                                     "firing rate (spikes / neuron / step)"), out_dir, "firing rate per layer"), "",
              _image(plot_step_heatmaps({r.label: results[r.label]["firing_rate_per_step"] for r in runs},
                                        out_dir / "firing_rate_per_step.png", "Firing rate per layer and timestep",
                                        "firing rate"), out_dir, "firing rate per timestep"), ""]
    lines += _table(["run", "mean over layers", "min layer", "max layer"],
                    [[label, float(np.mean(list(v.values()))), min(v.values()), max(v.values())]
                     for label, v in rates.items() if v])

    occupancy = {run.label: {k: (v["proportion"] if v else None) for k, v in results[run.label]["window"].items()}
                 for run in runs}
    lines += ["## Gradient-window occupancy", "",
              "Proportion of membrane potentials inside the surrogate's gradient window, with each layer's own "
              "per-call threshold and window; n/a where the surrogate does not report its calls.", "",
              _image(plot_layer_bars(occupancy, out_dir / "window_occupancy.png",
                                     "Proportion inside the gradient window per layer", "proportion inside window"),
                     out_dir, "window occupancy per layer"), "",
              _image(plot_step_heatmaps({r.label: {k: (v["per_step"] if v else None)
                                                   for k, v in results[r.label]["window"].items()} for r in runs},
                                        out_dir / "window_occupancy_per_step.png",
                                        "Proportion inside the window per layer and timestep", "proportion"),
                     out_dir, "window occupancy per timestep"), ""]
    lines += _table(["run", "mean over layers", "layers n/a"],
                    [[label, float(np.mean([x for x in v.values() if x is not None])) if any(
                        x is not None for x in v.values()) else None, sum(x is None for x in v.values())]
                     for label, v in occupancy.items()])

    lines += ["## Membrane-potential histograms", "",
              "Grey: all pre-fire potentials u; orange: the part inside the gradient window; red dashed: the mean "
              "threshold at that step.  Evenly spaced layers and timesteps.", ""]
    images = [(run.label, plot_histograms(results[run.label].get("histograms", {}),
                                          out_dir / f"histograms_{_slug(run.label)}.png",
                                          f"Membrane potentials: {run.label}")) for run in runs]
    if len(images) == 1:
        lines += [_image(images[0][1], out_dir, f"histograms {images[0][0]}"), ""]
    else:
        lines += _table([label for label, _ in images], [[_image(p, out_dir, f"histograms {label}")
                                                          for label, p in images]])

    parameters = {run.label: results[run.label].get("surrogate_parameters", {}) for run in runs}
    lines += ["## Surrogate parameters and method state", "",
              _image(plot_surrogate_parameters(parameters, out_dir / "surrogate_parameters.png"), out_dir,
                     "surrogate parameters (all constant)"), ""]
    for run in runs:
        state = results[run.label].get("method_state", {})
        lines += [f"<details><summary>State of <code>{run.label}</code> ({len(state)} entries: buffers and "
                  "parameters of neurons, surrogates and controllers)</summary>", ""]
        lines += _table(["name", "value"], [[f"`{k}`", _compact(v)] for k, v in state.items()])
        lines += ["</details>", ""]

    lines += a2sg_statistics_section(runs)
    trajectories = {run.label: state_trajectories(run.path) for run in runs}
    if any(trajectories.values()):
        lines += ["## Method state over training", "",
                  "Adaptive windows, thresholds, learnable sharpness, decays and controller statistics from the "
                  "`diagnostics/epoch_*.json` snapshots written with `--diagnostics_every N` (states that never "
                  "change are omitted).", "",
                  _image(plot_state_trajectories(trajectories, out_dir / "method_state.png"), out_dir,
                         "method state over training"), ""]
    lines += _energy_section(runs, results)
    if any("sharpness" in results[r.label] for r in runs):
        lines += ["## Sharpness", "", "Top Hessian eigenvalue of the training loss by power iteration on "
                  "Hessian-vector products (BN eval mode, buffers frozen, fixed training batches).", ""]
        sharpness = {r.label: results[r.label]["sharpness"] for r in runs if "sharpness" in results[r.label]}
        lines += _table(["run", "top eigenvalue", "largest-magnitude eigenvalue", "HVP iterations", "batches",
                         "Hessian trace (Hutchinson)"],
                        [[label, s["eigenvalue"], s["dominant"], s["iterations"], s["batches"],
                          (s.get("trace") or {}).get("trace")] for label, s in sharpness.items()])
    landscapes = {r.label: results[r.label].get("landscape") for r in runs}
    if any(landscapes.values()):
        lines += ["## Loss landscape", "", "Filter-normalised random directions (Li et al. 2018), biases and BN "
                  "parameters not perturbed.", "", _image(plot_landscape(landscapes, out_dir / "loss_landscape.png"),
                                                          out_dir, "loss landscape"), ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def a2sg_statistics_section(runs: list[Run]) -> list[str]:
    """Per A2SG layer of each run: the SGV / TGC in force (EMA over statistics steps, with the definitions the
    run used) and the windows w_t (units of theta)."""
    lines = []
    for run in runs:
        layers = [(name, m) for name, m in run.model.named_modules() if isinstance(m, A2SG)]
        if not layers:
            continue
        kinds = sorted({m.statistics for _, m in layers})
        lines += [f"## A2SG gradient statistics: `{run.label}`", ""]
        lines += [f"- {kind}: {STATISTICS_DEFINITIONS[kind]}" for kind in kinds] + [""]
        lines += _table(["layer", "adapt", "statistics", "SGV", "TGC (mean over t)", "TGC[t]", "window w_t (x theta)"],
                        [[f"`{name}`", m.adapt, m.statistics, float(m.sgv_ema), float(m.tgc_ema),
                          _compact(m.tgc_t.tolist()), _compact(m.w_t.tolist())] for name, m in layers])
    return lines


def _energy_section(runs: list[Run], results: dict[str, dict]) -> list[str]:
    energies = {run.label: results[run.label]["energy"] for run in runs}
    first = next(iter(energies.values()))
    lines = ["## Energy", "",
             f"E_SNN = E_MAC x FLOPs_enc {'x T ' if first['enc_times_T'] else ''}+ E_AC x sum_l SOP_l, "
             f"SOP_l = fr_in,l x T x FLOPs_l; E_ANN = E_MAC x sum_l FLOPs_l (same layers); E_MAC = "
             f"{first['e_mac_pj']} pJ, E_AC = {first['e_ac_pj']} pJ; BN and pooling free (docs/diagnostics.md). "
             "Per image.", ""]
    lines += _table(["run", "SNN energy (mJ)", "ANN energy (mJ)", "ANN / SNN", "SOPs (M)", "encoder MACs (M)"],
                    [[label, e["snn_energy_mj"], e["ann_energy_mj"], e["ann_over_snn"], e["total_sops"] / 1e6,
                      sum(r["macs"] for r in e["layers"]) / 1e6] for label, e in energies.items()])
    for label, e in energies.items():
        lines += [f"<details><summary>Per-layer energy of <code>{label}</code></summary>", ""]
        lines += _table(["layer", "kind", "input", "counted as", "FLOPs / step (M)", "input rate", "SOPs (M)",
                         "energy (mJ)"],
                        [[f"`{r['name']}`", r["kind"], r["input"], r["role"], r["flops_per_step"] / 1e6,
                          r["input_rate"], r["sops"] / 1e6, r["energy_mj"]] for r in e["layers"]])
        lines += ["</details>", ""]
    return lines


# -------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories written by repro.engine.train")
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report, or "
                        "<parent>/comparison_report for several runs)")
    parser.add_argument("--labels", nargs="+", default=None, help="one label per run (default: folder names)")
    parser.add_argument("--checkpoint", choices=tuple(CHECKPOINTS), default="best", help="weights to measure")
    parser.add_argument("--batches", type=int, default=4, help="test batches to measure")
    parser.add_argument("--batch_size", type=int, default=0, help="test batch size (0 = the run's eval_batch_size)")
    parser.add_argument("--mode", choices=("eval", "train"), default="eval", help="BN mode while measuring")
    parser.add_argument("--window_rule", choices=("auto", "support", "fraction"), default="auto")
    parser.add_argument("--window_fraction", type=float, default=0.5, help="smooth shapes: fraction of the peak")
    parser.add_argument("--histogram_bins", type=int, default=100)
    parser.add_argument("--histogram_range", type=float, nargs=2, default=(-2.0, 3.0), metavar=("LOW", "HIGH"))
    parser.add_argument("--enc_times_T", action="store_true", help="count the encoder's MACs T times")
    parser.add_argument("--e_mac_pj", type=float, default=4.6)
    parser.add_argument("--e_ac_pj", type=float, default=0.9)
    parser.add_argument("--sharpness", action="store_true", help="top Hessian eigenvalue (slow)")
    parser.add_argument("--sharpness_iterations", type=int, default=20)
    parser.add_argument("--trace_samples", type=int, default=0, help="Hutchinson samples (0 = no trace)")
    parser.add_argument("--landscape", type=int, choices=(0, 1, 2), default=0, help="loss-landscape slice dims")
    parser.add_argument("--landscape_points", type=int, default=21)
    parser.add_argument("--sharpness_batches", type=int, default=2, help="training batches for sharpness/landscape")
    parser.add_argument("--sharpness_batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels needs one label per run ({len(args.runs)}), got {len(args.labels)}")
    if args.batches < 1:
        parser.error(f"--batches must be >= 1, got {args.batches}")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    labels = args.labels or [Path(r).resolve().name for r in args.runs]
    labels = [label if labels.count(label) == 1 else f"{label}#{i}" for i, label in enumerate(labels)]
    runs = [load_run(path, args.checkpoint, label, args.device) for path, label in zip(args.runs, labels)]
    results = {run.label: measure(run, args) for run in runs}
    if args.out:
        out_dir = Path(args.out)
    elif len(runs) == 1:
        out_dir = runs[0].path / "report"
    else:
        out_dir = runs[0].path.resolve().parent / "comparison_report"
    path = write_report(runs, results, out_dir, args)
    print(f"report written to {path}")
    return path


if __name__ == "__main__":
    main()
