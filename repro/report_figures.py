"""Figures of the diagnostics report (``repro.report``): per-layer bars, layer x timestep heatmaps,
membrane-potential histograms, surrogate parameters, method state over training and loss landscapes.
Each returns the saved path, or None when there is nothing to plot; ``repro.plots.save_figure`` sets the
suite's tick conventions."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from .plots import colors, epoch_axis, save_figure, spread


def plot_layer_bars(values: dict[str, dict[str, float | None]], path: Path, title: str, ylabel: str,
                    suptitle: str = "") -> Path | None:
    """Grouped bars: one group per layer, one bar per run (None = n/a, drawn as no bar)."""
    layers = list(dict.fromkeys(layer for per_run in values.values() for layer in per_run))
    if not layers or all(v is None for per_run in values.values() for v in per_run.values()):
        return None
    width = 0.8 / len(values)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.45 * len(layers) * max(1, len(values) ** 0.5)), 4.8))
    positions = np.arange(len(layers))
    for index, ((label, per_run), color) in enumerate(zip(values.items(), colors(len(values)))):
        heights = [per_run.get(layer) for layer in layers]
        heights = [np.nan if h is None else h for h in heights]
        ax.bar(positions + (index - (len(values) - 1) / 2) * width, heights, width, label=label, color=color)
    ax.set_xticks(positions, layers, rotation=90, fontsize=7)
    ax.set(xlabel="spiking layer (forward order)", ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, suptitle=suptitle)


def plot_step_heatmaps(values: dict[str, dict[str, list | None]], path: Path, title: str,
                       colorbar_label: str, suptitle: str = "") -> Path | None:
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
    return save_figure(fig, path, suptitle=suptitle)


def _max_steps(values: dict) -> int:
    return max((len(v) for per_run in values.values() for v in per_run.values() if v is not None), default=1)


def plot_histograms(histograms: dict, path: Path, title: str, max_layers: int = 6, max_steps: int = 4,
                    suptitle: str = "") -> Path | None:
    """Membrane-potential histograms (fraction of neurons per bin) for evenly spaced layers and steps,
    with the part inside the gradient window shaded and the mean threshold marked."""
    layers = spread(list(histograms.get("layers", {})), max_layers)
    if not layers:
        return None
    low, high = histograms["range"]
    edges = np.linspace(low, high, histograms["bins"] + 1)
    steps = spread(list(range(len(histograms["layers"][layers[0]]["all"]))), max_steps)
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
    return save_figure(fig, path, rect=(0, 0, 0.86, 0.96), suptitle=f"{title}\n{suptitle}" if suptitle else title)


def plot_surrogate_parameters(values: dict[str, dict[str, dict[str, list]]], path: Path,
                              suptitle: str = "") -> Path | None:
    """Mean per-call surrogate parameters per layer (lines per run and timestep), only the ones that
    vary across layers, steps or runs (constants are listed in the text)."""
    names = sorted({p for per_run in values.values() for layer in per_run.values() for p in layer})
    varying = [p for p in names if len({round(v, 9) for per_run in values.values() for layer in per_run.values()
                                         for v in layer.get(p, []) if v is not None}) > 1]
    if not varying:
        return None
    fig, axes = plt.subplots(1, len(varying), figsize=(7 * len(varying), 4.2), squeeze=False)
    for ax, param in zip(axes[0], varying):
        for (label, per_run), color in zip(values.items(), colors(len(values))):
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
    return save_figure(fig, path, suptitle=suptitle)


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


def plot_state_trajectories(trajectories: dict[str, dict], path: Path, suptitle: str = "") -> Path | None:
    """One panel per state (mean over layers and timesteps) against the epoch, one line per run."""
    kinds = sorted({kind for per_run in trajectories.values() for kind in per_run})
    if not kinds:
        return None
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for (label, per_run), color in zip(trajectories.items(), colors(len(trajectories))):
            if kind in per_run:
                ax.plot(*per_run[kind], "o-", color=color, label=label)
        ax.set(title=kind, ylabel=f"{kind} (mean over layers, steps)")
        epoch_axis(ax, [e for per_run in trajectories.values() if kind in per_run for e in per_run[kind][0]])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path, suptitle="Method state over training (diagnostics snapshots)"
                       + (f"\n{suptitle}" if suptitle else ""))


def plot_landscape(landscapes: dict[str, dict], path: Path, suptitle: str = "") -> Path | None:
    """1-D: loss vs step size, one line per run; 2-D: one contour plot per run."""
    landscapes = {k: v for k, v in landscapes.items() if v}
    if not landscapes:
        return None
    if all(v["dims"] == 1 for v in landscapes.values()):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for (label, data), color in zip(landscapes.items(), colors(len(landscapes))):
            ax.plot(data["coordinates"], data["loss"], "o-", ms=3, color=color, label=label)
        ax.set(xlabel="step along a filter-normalised random direction (alpha)", ylabel="training loss",
               title="1-D loss landscape (BN eval mode)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return save_figure(fig, path, suptitle=suptitle)
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
    return save_figure(fig, path, suptitle=suptitle)
