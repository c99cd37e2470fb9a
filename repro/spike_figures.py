"""Pictures of spikes for ``repro.report --spikes``: spike rasters per layer, membrane traces against the
threshold and the gradient window (both from ``repro.traces.record_traces``), and the frames of event data.
Each returns a Figure, or None when there is nothing to plot; ``save`` writes it and returns the path."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from .plots import save_figure, spread


def _timestep_axis(ax, steps: int) -> None:
    ax.set_xlim(0.5, steps + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("timestep t", fontsize=8)


def raster_figure(traces: dict, max_layers: int = 6, max_samples: int = 2):
    """Rows: evenly spaced spiking layers; columns: samples.  A mark at (t, neuron) for every non-zero
    output (black: positive, red: negative spikes), neurons spread evenly over the layer."""
    layers = spread(list(traces), max_layers)
    if not layers:
        return None
    samples = min(max_samples, len(traces[layers[0]]["spikes"][0]))
    fig, axes = plt.subplots(len(layers), samples, figsize=(3.6 * samples + 1, 1.9 * len(layers) + 0.6),
                             squeeze=False)
    for row, layer in enumerate(layers):
        spikes = np.asarray(traces[layer]["spikes"])  # [T, B, N]
        for col in range(samples):
            ax = axes[row][col]
            for sign, color in ((1, "black"), (-1, "tab:red")):
                t, n = np.nonzero(np.sign(spikes[:, col]) == sign)
                ax.scatter(t + 1, n, s=10, marker="|" if spikes.shape[0] > 8 else "s", color=color, linewidths=1)
            rate = float(np.abs(spikes[:, col]).mean())
            ax.set_title(f"{layer}, sample {col} (rate {rate:.3f})", fontsize=7)
            ax.set_ylim(-0.5, spikes.shape[2] - 0.5)
            _timestep_axis(ax, spikes.shape[0])
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.set_ylabel(f"neuron (of {spikes.shape[2]})", fontsize=8)
    return fig


def membrane_figure(traces: dict, max_layers: int = 4):
    """Rows: evenly spaced layers with recorded potentials; columns: the most active traced neurons.  The
    pre-fire membrane u_t, the threshold theta_t (red dashed), the gradient window [theta_t + low,
    theta_t + high] (orange band) and the steps that fired (dots on the u line)."""
    layers = spread([name for name, trace in traces.items() if trace["potential"] is not None], max_layers)
    if not layers:
        return None
    columns = max(len(traces[layer]["traced"]) for layer in layers)
    fig, axes = plt.subplots(len(layers), columns, figsize=(3.4 * columns + 0.5, 2.2 * len(layers) + 0.6),
                             squeeze=False)
    for row, layer in enumerate(layers):
        trace = traces[layer]
        u = np.asarray(trace["potential"])  # [T, traced]
        steps = np.arange(1, u.shape[0] + 1)
        spikes = np.asarray(trace["spikes"])[:, 0]  # sample 0, [T, N]
        positions = [trace["indices"].index(i) for i in trace["traced"]]
        for col in range(columns):
            ax = axes[row][col]
            if col >= u.shape[1]:
                ax.set_axis_off()
                continue
            thresholds = [None if th is None else th[col] for th in (trace["threshold"] or [None] * len(steps))]
            known = [th is not None for th in thresholds]
            theta = np.array([np.nan if th is None else th for th in thresholds])
            windows = trace["window"]
            if any(known) and any(w is not None for w in windows):
                low = np.array([np.nan if w is None else w[0] for w in windows])
                high = np.array([np.nan if w is None else w[1] for w in windows])
                ax.fill_between(steps, theta + low, theta + high, step="mid", color="tab:orange", alpha=0.3,
                                label="gradient window")
            if any(known):
                ax.step(steps, theta, where="mid", color="tab:red", ls="--", lw=1, label="threshold theta_t")
            ax.plot(steps, u[:, col], "o-", color="tab:blue", ms=3, lw=1, label="membrane u_t (pre-fire)")
            fired = spikes[:, positions[col]] != 0
            ax.plot(steps[fired], u[fired, col], "o", color="black", ms=5, label="spike")
            ax.set_title(f"{layer}, neuron {trace['traced'][col]}", fontsize=7)
            _timestep_axis(ax, len(steps))
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.set_ylabel("membrane potential u (pre-fire)", fontsize=8)
    handles = {label: handle for ax in axes.ravel() for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8)
    return fig


def event_frames_figure(frames: torch.Tensor, labels: list, max_steps: int = 10):
    """Rows: samples; columns: timesteps (evenly spaced if more than ``max_steps``).  Each frame
    [2, H, W] (ON, OFF polarity counts) is shown as ON - OFF (red: ON, blue: OFF), one colour scale per
    sample."""
    if frames.dim() != 5 or frames.shape[2] != 2:
        return None
    steps = spread(list(range(frames.shape[1])), max_steps)
    fig, axes = plt.subplots(len(frames), len(steps), figsize=(1.5 * len(steps) + 1.2, 1.6 * len(frames) + 0.5),
                             squeeze=False, layout="constrained")
    for row, (sample, label) in enumerate(zip(frames.float(), labels)):
        difference = (sample[:, 0] - sample[:, 1]).numpy()
        scale = max(float(np.abs(difference).max()), 1e-8)
        for col, t in enumerate(steps):
            ax = axes[row][col]
            image = ax.imshow(difference[t], cmap="bwr", vmin=-scale, vmax=scale, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t={t + 1}", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"label {label}", fontsize=8)
        fig.colorbar(image, ax=list(axes[row]), shrink=0.9, label="ON - OFF events")
    return fig


def save(fig, path: Path, suptitle: str) -> Path | None:
    """``repro.plots.save_figure`` for the figures above (None stays None)."""
    if fig is None:
        return None
    return save_figure(fig, path, rect=(0, 0.05, 1, 1) if fig.legends else None, suptitle=suptitle)
