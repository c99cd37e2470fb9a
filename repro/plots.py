"""Figures and the table of a training run, shared by the engine (end of a run) and ``repro.report``.

Conventions of every figure in the suite (``save_figure``): tick labels are plain numbers (no additive
offset such as "+4" above an axis), epoch axes have integer ticks, and titles name the run as
``run_title`` writes it: model, neuron, surrogate, loss, T and dataset.
The headline metric is top-1 accuracy for classification and mIoU for segmentation (``headline``).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator, ScalarFormatter  # noqa: E402

from .datasets.seg_classes import voc_colour_map  # noqa: E402

DPI = 110
FIRING_RATE = "firing rate (spikes / neuron / step)"  # the axis label of every firing-rate figure
TITLE_FIELDS = (("model", "{}"), ("neuron", "{} neuron"), ("surrogate", "{} surrogate"), ("loss", "{} loss"),
                ("num_steps", "T={}"), ("dataset", "on {}"))


def colors(count: int) -> list:
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(count)]


def spread(items: list, count: int) -> list:
    """At most ``count`` items, evenly spaced, keeping the first and the last."""
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def run_title(infos: list[dict]) -> str:
    """"resnet19 · lif neuron · atan surrogate · ce loss · T=2 · on digits" from config or summary dicts;
    a field on which the runs differ lists their values ("atan/tgo surrogate")."""
    parts = []
    for key, template in TITLE_FIELDS:
        values = list(dict.fromkeys(str(info[key]) for info in infos if key in info))
        if values:
            parts.append(template.format("/".join(values)))
    return " · ".join(parts)


def headline(row: dict) -> tuple[str, str]:
    """(metric key without the ``test_`` prefix, its label) of a metrics row or summary: mIoU for
    segmentation, top-1 accuracy otherwise."""
    return ("miou", "mIoU (%)") if "test_miou" in row else ("accuracy", "top-1 accuracy (%)")


def epoch_axis(ax, epochs: list[int]) -> None:
    """Integer epoch ticks; a single epoch gets one tick (not 0.96 ... 1.04)."""
    distinct = sorted(set(epochs))
    if len(distinct) == 1:
        ax.set_xlim(distinct[0] - 0.5, distinct[0] + 0.5)
        ax.xaxis.set_major_locator(FixedLocator(distinct))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def plain_ticks(fig: Figure) -> None:
    """No additive offset on any linear axis (k must not read as +-0.0004 under a "+4")."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            formatter = axis.get_major_formatter()
            if isinstance(formatter, ScalarFormatter):
                formatter.set_useOffset(False)


def save_figure(fig: Figure, path: str | Path, rect: tuple | None = None, suptitle: str = "") -> Path:
    """Plain ticks, the figure title (if given), tight layout (unless the figure has a layout engine), PNG at
    ``DPI``; closes the figure and returns the path."""
    plain_ticks(fig)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    if fig.get_layout_engine() is None:
        fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


def training_curves_figure(runs: list[tuple[str, dict, list[dict]]]) -> Figure | None:
    """Panels per epoch for runs given as (label, config or summary, metrics rows): the training loss (the
    run's own loss), the test loss (CE of the mean logits, or pixel CE) in its own panel when the training
    loss is not CE, the headline metric (train and test accuracy; test mIoU for segmentation, whose train
    pass measures pixel accuracy only) and the test firing rate.  Train solid, test dashed, one colour per
    run."""
    runs = [run for run in runs if run[2]]
    if not runs:
        return None
    losses = {str(info.get("loss", "ce")) for _, info, _ in runs}
    same_loss = losses == {"ce"}
    metrics = {label: headline(history[-1]) for label, _, history in runs}
    metric_labels = list(dict.fromkeys(name for _, name in metrics.values()))
    panels = ([("loss (train: training loss, test: CE)", "train_loss", "test_loss", "loss")] if same_loss else
              [(f"training loss ({'/'.join(sorted(losses))})", "train_loss", None, "training loss"),
               ("test loss (cross-entropy)", None, "test_loss", "cross-entropy")])
    panels += [(" / ".join(name.split(" (")[0] for name in metric_labels), "train_{}", "test_{}",
                " / ".join(name.split(" (")[0] for name in metric_labels) + " (%)"),
               ("firing rate (test)", None, "firing_rate", FIRING_RATE)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for (label, _, history), color in zip(runs, colors(len(runs))):
        epochs = [row["epoch"] for row in history]
        key = metrics[label][0]
        for ax, (_, train_key, test_key, _) in zip(axes[0], panels):
            for split_key, style, split in ((train_key, "o-", "train"), (test_key, "s--", "test")):
                split_key = split_key and split_key.format(key)
                if split_key and all(split_key in row for row in history):
                    ax.plot(epochs, [row[split_key] for row in history], style, color=color,
                            label=f"{label} {split}".strip())
    all_epochs = [row["epoch"] for _, _, history in runs for row in history]
    for ax, (title, _, _, ylabel) in zip(axes[0], panels):
        ax.set(ylabel=ylabel, title=title)
        epoch_axis(ax, all_epochs)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(run_title([info for _, info, _ in runs]), fontsize=10)
    return fig


def plot_training_curves(runs: list[tuple[str, dict, list[dict]]], path: str | Path) -> Path | None:
    """``training_curves_figure`` saved to ``path`` (None when no run has a metrics row)."""
    fig = training_curves_figure(runs)
    return save_figure(fig, path) if fig else None


def results_table(history: list[dict], summary: dict) -> str:
    """Markdown table of the epochs and the final summary; segmentation runs head with mIoU (the metric
    that selects best_model.pt) and show pixel accuracy beside it."""
    segmentation = "test_miou" in summary
    header = ["epoch", "lr", "train loss"] + (["train pixel acc (%)", "test pixel acc (%)", "test mIoU (%)",
                                               "best mIoU (%)"] if segmentation else
                                              ["train acc (%)", "test acc (%)", "best (%)"])
    keys = ["train_accuracy", "test_accuracy"] + (["test_miou", "best_test_miou"] if segmentation else
                                                  ["best_test_accuracy"])
    lines = ["| " + " | ".join(header + ["firing rate", "time (s)"]) + " |", "|" + "---:|" * (len(header) + 2)]
    for r in history:
        cells = [str(r["epoch"]), f"{r['lr']:.4g}", f"{r['train_loss']:.4f}"] + [f"{r[k]:.2f}" for k in keys]
        lines.append("| " + " | ".join(cells + [f"{r['firing_rate']:.4f}", f"{r['epoch_time_s']:.1f}"]) + " |")
    key = "miou" if segmentation else "accuracy"
    name = "mIoU" if segmentation else "test accuracy"
    lines += ["", f"**{run_title([summary])}, seed {summary['seed']}:** final {name} {summary[f'test_{key}']:.2f}%, "
                  f"best {summary[f'best_test_{key}']:.2f}%, mean firing rate {summary['firing_rate']:.4f} "
                  f"({summary['source']})"]
    return "\n".join(lines)


def class_table(dataset) -> tuple[list[str], np.ndarray]:
    """(names, [K, 3] RGB in [0, 1]) of a segmentation dataset's label ids 0..K-1: its ``classes`` and
    ``palette`` (uint8), else "class k" and the PASCAL VOC colour map."""
    count = dataset.num_classes
    names, palette = getattr(dataset, "classes", None), getattr(dataset, "palette", None)
    names = [f"class {k}" for k in range(count)] if names is None else list(names)
    palette = voc_colour_map(count) if palette is None else np.asarray(palette)
    if len(names) != count or palette.shape != (count, 3):
        raise ValueError(f"{type(dataset).__name__}: {len(names)} class names and a palette of shape "
                         f"{palette.shape} for {count} classes; give one name and one RGB colour per class")
    return [str(name) for name in names], palette / 255.0


@torch.no_grad()
def segmentation_examples_figure(model, dataset, info: dict | None = None, label: str = "", count: int = 4,
                                 ignore_index: int = 255) -> Figure:
    """Rows of image | ground truth | prediction for the first ``count`` test samples, masks in the
    dataset's palette (``class_table``), ignored pixels white, and a legend of the classes present; the
    title names the run (``label`` and ``run_title`` of ``info``, a config or summary dict)."""
    model.eval()
    device = next(model.parameters()).device
    names, palette = class_table(dataset)
    rows = []
    for index in range(min(count, len(dataset))):
        image, mask = dataset[index]
        picture = image.permute(1, 2, 0).float().numpy()
        rows.append(((picture - picture.min()) / max(float(picture.max() - picture.min()), 1e-8), mask.numpy(),
                     model(image[None].to(device)).argmax(1)[0].cpu().numpy()))
    shown = np.union1d(np.concatenate([truth[truth != ignore_index] for _, truth, _ in rows]),
                       np.concatenate([prediction.ravel() for _, _, prediction in rows]))
    handles = [Patch(facecolor=palette[k], edgecolor="0.5", label=names[k]) for k in shown]
    handles.append(Patch(facecolor="white", edgecolor="0.5", label=f"ignored ({ignore_index})"))
    columns = min(len(handles), 6)
    legend_height = 0.22 * -(-len(handles) // columns)  # inches: a line per row of entries
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows) + legend_height + 0.6), squeeze=False,
                             layout="constrained")
    for row, (picture, truth, prediction) in enumerate(rows):
        ignored = truth == ignore_index
        truth_rgb = palette[np.where(ignored, 0, truth)]
        truth_rgb[ignored] = 1.0
        for ax, picture_rgb, name in zip(axes[row], (picture, truth_rgb, palette[prediction]),
                                         ("image", "ground truth", "prediction")):
            ax.imshow(picture_rgb, interpolation="nearest")
            ax.set_title(f"{name}, test sample {row}", fontsize=9)
            ax.axis("off")
    fig.legend(handles=handles, loc="outside lower center", ncol=columns, fontsize=8)
    fig.suptitle("Segmentation examples" + (f": {label}" if label else "") + (f"\n{run_title([info])}" if info else ""),
                 fontsize=10)
    return fig


def save_segmentation_examples(model, dataset, path: str | Path, info: dict | None = None, label: str = "",
                               count: int = 4, ignore_index: int = 255) -> Path:
    """``segmentation_examples_figure`` saved to ``path`` by ``save_figure``."""
    return save_figure(segmentation_examples_figure(model, dataset, info, label, count, ignore_index), path)
