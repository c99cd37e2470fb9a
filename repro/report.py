"""Diagnostics report of one or several runs: ``python -m repro.report RUN_DIR [RUN_DIR ...]``.

Loads each run directory written by ``repro.engine.train`` (``repro.report_runs``: model and data built
by the engine's own functions), measures it with ``repro.diagnostics.collect_diagnostics`` on the first
test batches (on request also spike rasters and membrane traces, sharpness and loss-landscape slices), and
writes one page, ``report.md``: a summary table (headline metric: top-1 accuracy, or mIoU for
segmentation; firing rate; energy against the ANN; sharpness), runs that differ only in their seed as
mean +- std, then every figure in order, plus ``diagnostics_<run>.json`` per run.  ``--html`` renders
the same page as ``report.html`` (Python-Markdown).  Output folder: ``RUN_DIR/report`` for one run,
``<parent of the first run>/comparison_report`` for several.

Every number in the report is a measurement of these runs, not a published number.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from .grid import mean_std
from .plots import FIRING_RATE, class_table, headline, plot_training_curves, run_title, save_segmentation_examples
from .report_figures import (plot_histograms, plot_landscape, plot_layer_bars, plot_state_trajectories,
                             plot_step_heatmaps, plot_surrogate_parameters, state_trajectories)
from .report_runs import CHECKPOINTS, Run, load_run, measure, seed_groups
from .spike_figures import event_frames_figure, membrane_figure, raster_figure, save as save_spike_figure
from .surrogates import A2SG
from .surrogates.a2sg_statistics import STATISTICS_DEFINITIONS

DETAILS = '<details markdown="1">'  # collapsed section; markdown="1": Python-Markdown renders the table inside


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


def _pm(values: list, digits: int = 4) -> str:
    """"mean ± std" of the values that are not None (sample std)."""
    stats = mean_std(values)
    return "n/a" if stats is None else f"{stats[0]:.{digits}g} ± {stats[1]:.{digits}g}"


# ---------------------------------------------------------------------------------------- summary
def headline_values(run: Run, result: dict) -> dict:
    """The numbers of the summary table for one run."""
    key, label = headline(run.summary or run.checkpoint_row)
    energy = result["energy"]
    return {"metric": label, "measured": run.checkpoint_row.get(f"test_{key}"),
            "final": run.summary.get(f"test_{key}"), "best": run.summary.get(f"best_test_{key}"),
            "firing_rate": float(np.mean(list(result["firing_rate"].values()))) if result["firing_rate"] else None,
            "ann_over_snn": energy["ann_over_snn"], "sharpness": (result.get("sharpness") or {}).get("eigenvalue")}


def summary_section(runs: list[Run], results: dict[str, dict]) -> list[str]:
    """The one-screen table at the top, and the seed groups as mean ± std."""
    values = {run.label: headline_values(run, results[run.label]) for run in runs}
    metrics = sorted({v["metric"] for v in values.values()})
    lines = ["## Summary", "",
             f"Headline metric: {' / '.join(metrics)} on the test split (the metric that selects best_model.pt); "
             f"*measured weights* = the epoch of the weights this report measures.  Firing rate: mean over layers "
             f"on the report's test batches.  Energy: ANN / SNN (> 1: the SNN needs less; section Energy).", ""]
    rows = []
    for run in runs:
        v, c = values[run.label], run.config
        rows.append([f"`{run.label}`", f"{c['model']} · {c['neuron']} · {c['surrogate']} · {c.get('loss', 'ce')}",
                     c["dataset"], c["num_steps"], c.get("seed"), v["metric"].split(" (")[0],
                     f"{_format(v['measured'])} ({run.checkpoint}, epoch {run.epoch})", v["final"], v["best"],
                     v["firing_rate"], v["ann_over_snn"], v["sharpness"]])
    lines += _table(["run", "model · neuron · surrogate · loss", "dataset", "T", "seed", "metric",
                     "measured weights (%)", "final (%)", "best (%)", "firing rate", "ANN / SNN energy",
                     "sharpness"], rows)
    groups = [group for group in seed_groups(runs) if len(group) > 1]
    if groups:
        lines += ["Runs that differ only in their seed: mean ± sample standard deviation over seeds.", ""]
        lines += _table(["runs", "seeds", "metric", "final (%)", "best (%)", "firing rate", "ANN / SNN energy"],
                        [[", ".join(f"`{r.label}`" for r in group), len(group),
                          values[group[0].label]["metric"].split(" (")[0],
                          *[_pm([values[r.label][k] for r in group]) for k in ("final", "best", "firing_rate",
                                                                               "ann_over_snn")]]
                         for group in groups])
    for run in runs:
        options = {k: run.config.get(k) for k in ("model_options", "neuron_options", "surrogate_options",
                                                   "loss_options", "dataset_options") if run.config.get(k)}
        if options:
            lines.append(f"- `{run.label}` options: `{json.dumps(options)}`")
    return lines + [""]


def segmentation_section(runs: list[Run], out_dir: Path) -> list[str]:
    """Per-class IoU of the measured weights' epoch (from metrics.jsonl), one table per dataset with its
    class names (``class_table``), and the examples figure of each run."""
    runs = [run for run in runs if run.modality == "segmentation"]
    if not runs:
        return []
    lines = ["## Segmentation", "",
             "IoU per class (%) on the test split at the epoch of the measured weights (metrics.jsonl); n/a: the "
             "class is in neither prediction nor ground truth, or the run predates per-class IoU.  One table per "
             "dataset: a row per class (label id and name), a column per run.", ""]
    for dataset in dict.fromkeys(run.config["dataset"] for run in runs):
        group = [run for run in runs if run.config["dataset"] == dataset]
        names = class_table(group[0].test_set)[0]
        per_class = [run.checkpoint_row.get("test_iou_per_class") or [None] * len(names) for run in group]
        lines += [f"`{dataset}`:", ""]
        lines += _table(["class", *(f"`{run.label}`" for run in group)],
                        [["mIoU", *(run.checkpoint_row.get("test_miou") for run in group)]]
                        + [[f"{k} {name}", *(ious[k] for ious in per_class)] for k, name in enumerate(names)])
    for run in runs:
        path = save_segmentation_examples(run.model, run.test_set, out_dir / f"examples_{_slug(run.label)}.png",
                                          run.config, run.label)
        lines += [_image(path, out_dir, f"segmentation examples {run.label}"), ""]
    return lines


def spikes_section(runs: list[Run], results: dict[str, dict], out_dir: Path, args: argparse.Namespace) -> list[str]:
    """Event frames (event data), spike rasters and membrane traces of each run (``--spikes``)."""
    lines = ["## Spikes", "",
             f"The first {args.spike_samples} test samples.  Raster: a mark per non-zero output of "
             f"{args.raster_neurons} neurons spread evenly over each layer (black positive, red negative "
             "spikes).  Traces: the most active of those neurons in sample 0; the gradient window is drawn for "
             "the layer's mean per-call surrogate parameters [reconstructed] (docs/diagnostics.md).", ""]
    for run in runs:
        title = f"{run.label}: {run_title([run.config])}"
        if run.modality == "event":
            frames, labels = zip(*(run.test_set[i] for i in range(min(args.spike_samples, len(run.test_set)))))
            path = save_spike_figure(event_frames_figure(torch.stack(frames), [int(y) for y in labels]),
                                     out_dir / f"event_frames_{_slug(run.label)}.png", f"Event frames: {title}")
            lines += [f"### `{run.label}`: event frames", "", _image(path, out_dir, f"event frames {run.label}"), ""]
        traces = results[run.label]["traces"]
        for kind, figure in (("spike raster", raster_figure(traces)), ("membrane traces", membrane_figure(traces))):
            path = save_spike_figure(figure, out_dir / f"{kind.split()[-1]}_{_slug(run.label)}.png",
                                     f"{kind.capitalize()}: {title}")
            lines += [f"### `{run.label}`: {kind}", "", _image(path, out_dir, f"{kind} {run.label}"), ""]
    return lines


# ------------------------------------------------------------------------------------------- page
def write_report(runs: list[Run], results: dict[str, dict], out_dir: Path, args: argparse.Namespace) -> Path:
    """Figures and ``report.md`` (and ``report.html`` with ``--html``); returns the Markdown file's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for run in runs:
        (out_dir / f"diagnostics_{_slug(run.label)}.json").write_text(json.dumps(results[run.label], indent=1))
    title = run_title([run.config for run in runs])
    lines = ["# Diagnostics report", "", f"**{title}**", "",
             "All numbers are measurements of these runs (this suite), **not published numbers**.", ""]
    lines += summary_section(runs, results)
    first = results[runs[0].label]
    lines += [f"Diagnostics measured on the first {first['batches']} test batches ({first['images']} samples per "
              f"run, each at its own T), BN in **{first['mode']}** mode, buffers restored after every batch. "
              f"Gradient window: rule `{args.window_rule}` (compact shapes: h(x) > 0; smooth shapes: "
              f"h(x) >= {args.window_fraction} x h(0)) [reconstructed].", ""]

    lines += ["## Training curves", "", _image(plot_training_curves(
        [(run.label, run.config, run.history) for run in runs], out_dir / "training_curves.png"), out_dir,
        "training curves"), ""]
    lines += segmentation_section(runs, out_dir)
    if args.spikes:
        lines += spikes_section(runs, results, out_dir, args)

    rates = {run.label: results[run.label]["firing_rate"] for run in runs}
    lines += ["## Firing rate", "", "Firing rate = sum |S| / (neurons x T x samples), per spiking layer.", "",
              _image(plot_layer_bars(rates, out_dir / "firing_rate.png", "Firing rate per layer (test batches)",
                                     FIRING_RATE, suptitle=title), out_dir, "firing rate per layer"), "",
              _image(plot_step_heatmaps({r.label: results[r.label]["firing_rate_per_step"] for r in runs},
                                        out_dir / "firing_rate_per_step.png", "Firing rate per layer and timestep",
                                        FIRING_RATE, suptitle=title), out_dir, "firing rate per timestep"), ""]
    lines += _table(["run", "mean over layers", "min layer", "max layer"],
                    [[label, float(np.mean(list(v.values()))), min(v.values()), max(v.values())]
                     for label, v in rates.items() if v])

    occupancy = {run.label: {k: (v["proportion"] if v else None) for k, v in results[run.label]["window"].items()}
                 for run in runs}
    lines += ["## Gradient-window occupancy", "",
              "Proportion of membrane potentials inside the surrogate's gradient window, with each layer's own "
              "per-call threshold and window; n/a where the surrogate does not report its calls.", "",
              _image(plot_layer_bars(occupancy, out_dir / "window_occupancy.png",
                                     "Proportion inside the gradient window per layer", "proportion inside window",
                                     suptitle=title), out_dir, "window occupancy per layer"), "",
              _image(plot_step_heatmaps({r.label: {k: (v["per_step"] if v else None)
                                                   for k, v in results[r.label]["window"].items()} for r in runs},
                                        out_dir / "window_occupancy_per_step.png",
                                        "Proportion inside the window per layer and timestep",
                                        "proportion inside window", suptitle=title),
                     out_dir, "window occupancy per timestep"), ""]
    lines += _table(["run", "mean over layers", "layers n/a"],
                    [[label, float(np.mean([x for x in v.values() if x is not None])) if any(
                        x is not None for x in v.values()) else None, sum(x is None for x in v.values())]
                     for label, v in occupancy.items()])

    lines += ["## Membrane-potential histograms", "",
              "Grey: all pre-fire potentials u; orange: the part inside the gradient window; red dashed: the mean "
              "threshold at that step.  Evenly spaced layers and timesteps.", ""]
    for run in runs:
        path = plot_histograms(results[run.label].get("histograms", {}), out_dir / f"histograms_{_slug(run.label)}.png",
                               f"Membrane potentials: {run.label}", suptitle=run_title([run.config]))
        lines += [_image(path, out_dir, f"histograms {run.label}"), ""]

    parameters = {run.label: results[run.label].get("surrogate_parameters", {}) for run in runs}
    lines += ["## Surrogate parameters and method state", "",
              _image(plot_surrogate_parameters(parameters, out_dir / "surrogate_parameters.png", suptitle=title),
                     out_dir, "surrogate parameters (all constant)"), ""]
    for run in runs:
        state = results[run.label].get("method_state", {})
        lines += [f"{DETAILS}<summary>State of <code>{run.label}</code> ({len(state)} entries: buffers and "
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
                  _image(plot_state_trajectories(trajectories, out_dir / "method_state.png", suptitle=title), out_dir,
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
                  "parameters not perturbed.", "",
                  _image(plot_landscape(landscapes, out_dir / "loss_landscape.png", suptitle=title), out_dir,
                         "loss landscape"), ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    if args.html:
        write_html(path)
    return path


def write_html(markdown_path: Path) -> Path:
    """``report.html`` beside ``report.md``: the same page rendered by Python-Markdown (tables, HTML blocks)."""
    try:
        import markdown
    except ImportError:
        raise SystemExit("--html needs Python-Markdown: pip install markdown (or the repro[report] extra)") from None
    body = markdown.markdown(markdown_path.read_text(), extensions=["tables", "md_in_html"])
    html = markdown_path.with_suffix(".html")
    html.write_text("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Diagnostics report</title>"
                    "<style>body{font-family:sans-serif;max-width:1400px;margin:auto}img{max-width:100%}"
                    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>"
                    f"</head><body>\n{body}\n</body></html>\n")
    return html


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
        lines += [f"{DETAILS}<summary>Per-layer energy of <code>{label}</code></summary>", ""]
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
    parser.add_argument("--spikes", action="store_true", help="spike rasters, membrane traces and event frames")
    parser.add_argument("--spike_samples", type=int, default=2, help="test samples in the --spikes figures")
    parser.add_argument("--raster_neurons", type=int, default=64, help="neurons per layer in a raster")
    parser.add_argument("--traced_neurons", type=int, default=3, help="membrane traces per layer")
    parser.add_argument("--html", action="store_true", help="also report.html (needs Python-Markdown)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels needs one label per run ({len(args.runs)}), got {len(args.labels)}")
    for name in ("batches", "spike_samples", "raster_neurons", "traced_neurons"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
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
