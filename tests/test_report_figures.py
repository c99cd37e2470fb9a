"""Figures, tables and traces of the report, read back from the saved matplotlib objects and checked
against closed forms (fast: no training)."""
import json
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

import repro.report_figures
from repro.datasets import create_dataset
from repro.models.neurons import LIF
from repro.datasets.seg_classes import ADE20K_CLASSES, ADE20K_PALETTE, voc_colour_map
from repro.plots import class_table, results_table, segmentation_examples_figure, training_curves_figure
from repro.report import segmentation_section, summary_section
from repro.report_figures import plot_state_trajectories, plot_surrogate_parameters, state_trajectories
from repro.spike_figures import event_frames_figure, membrane_figure, raster_figure
from repro.tasks import SegmentationTask
from repro.traces import record_traces

INFO = {"model": "resnet19", "neuron": "lif", "surrogate": "atan", "loss": "ce", "num_steps": 2, "dataset": "digits",
        "seed": 1, "source": "this run (not a published number)"}


def row(epoch, **values):
    return {"epoch": epoch, "lr": 0.1, "train_loss": 2.0, "test_loss": 1.9, "train_accuracy": 30.0,
            "test_accuracy": 35.0, "best_test_accuracy": 35.0, "firing_rate": 0.1, "epoch_time_s": 1.0, **values}


def visible_ticks(ax) -> list[float]:
    low, high = sorted(ax.get_xlim())
    return [t for t in ax.get_xticks() if low <= t <= high]


def test_one_epoch_curves_have_one_integer_tick_and_a_title_naming_the_run():
    fig = training_curves_figure([("", INFO, [row(1)])])
    fig.canvas.draw()
    for ax in fig.axes:
        assert visible_ticks(ax) == [1] and ax.get_xlabel() == "epoch"
    title = fig.get_suptitle()
    for part in ("resnet19", "lif neuron", "atan surrogate", "ce loss", "T=2", "digits"):
        assert part in title, part
    plt.close(fig)
    fig = training_curves_figure([("", INFO, [row(e) for e in (1, 2, 3, 4, 5, 6, 7)])])
    fig.canvas.draw()
    assert all(float(t).is_integer() for ax in fig.axes for t in visible_ticks(ax))
    plt.close(fig)


def test_segmentation_curves_plot_miou_and_keep_the_two_losses_apart():
    info = {**INFO, "loss": "dice_ce", "dataset": "shapes_seg", "model": "spiking_fpn"}
    history = [row(e, test_miou=m, best_test_miou=m) for e, m in ((1, 20.0), (2, 30.0))]
    fig = training_curves_figure([("", info, history)])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["training loss (dice_ce)", "test loss (cross-entropy)", "mIoU", "firing rate (test)"]
    miou_axis = fig.axes[2]
    assert miou_axis.get_ylabel() == "mIoU (%)"
    assert [list(line.get_ydata()) for line in miou_axis.get_lines()] == [[20.0, 30.0]]  # no pixel accuracy
    assert "dice_ce loss" in fig.get_suptitle()
    plt.close(fig)


def test_saved_figures_have_no_offset_tick_labels(tmp_path, monkeypatch):
    saved = []
    original = repro.report_figures.save_figure
    monkeypatch.setattr(repro.report_figures, "save_figure", lambda fig, *a, **k: saved.append(fig) or original(
        fig, *a, **k))
    values = {"run": {f"layer{i}": {"k": [4.0001 + 1e-4 * i, 4.0002 + 1e-4 * i]} for i in range(3)}}
    plot_surrogate_parameters(values, tmp_path / "k.png", suptitle="resnet19 · tgo surrogate")
    (fig,) = saved
    ax = fig.axes[0]
    assert ax.yaxis.get_major_formatter().offset == 0 and ax.yaxis.get_offset_text().get_text() == ""
    labels = [float(t.get_text().replace("\N{MINUS SIGN}", "-")) for t in ax.get_yticklabels() if t.get_text()]
    assert labels and all(4.0 <= v <= 4.001 for v in labels)  # the values themselves, not offsets from +4
    assert fig.get_suptitle() == "resnet19 · tgo surrogate"
    # the same axes drawn with matplotlib's defaults would show the offset the report removes
    default, default_ax = plt.subplots()
    default_ax.plot([0, 1, 2], [4.0001, 4.0002, 4.0004])
    default.canvas.draw()
    assert default_ax.yaxis.get_major_formatter().offset != 0
    plt.close(default)


def test_class_table_reads_the_dataset_or_falls_back_to_class_k_and_the_voc_map():
    names, palette = class_table(SimpleNamespace(num_classes=3))  # a dataset without names or palette
    assert names == ["class 0", "class 1", "class 2"]
    assert np.allclose(palette * 255, [[0, 0, 0], [128, 0, 0], [0, 128, 0]])
    names, palette = class_table(SimpleNamespace(num_classes=2, classes=("a", "b"),
                                                 palette=[[10, 20, 30], [255, 0, 0]]))
    assert names == ["a", "b"] and np.allclose(palette, [[10 / 255, 20 / 255, 30 / 255], [1, 0, 0]])
    with pytest.raises(ValueError, match="2 class names .* for 3 classes"):
        class_table(SimpleNamespace(num_classes=3, classes=("a", "b")))


class StripedADE:
    """Two ADE20K-labelled samples: stripes of labels 0 wall, 2 sky, 12 person, 149 flag and 255 (ignored)."""
    num_classes, classes, palette = 150, ADE20K_CLASSES, ADE20K_PALETTE

    def __len__(self):
        return 2

    def __getitem__(self, index):
        mask = torch.tensor([0, 2, 12, 149, 255]).repeat_interleave(4).expand(20, 20).clone()
        return torch.rand(3, 20, 20), mask


class ConstantLogits(torch.nn.Module):
    """Predicts ``label`` at every pixel."""

    def __init__(self, num_classes, label):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.nn.functional.one_hot(torch.tensor(label), num_classes).float())

    def forward(self, x):
        return self.logits[None, :, None, None].expand(len(x), -1, *x.shape[-2:])


def test_per_class_iou_from_summed_counts_by_hand():
    # sums: pixel CE, valid pixels, correct pixels, then tp, fp, fn of each of 4 classes
    tp, fp, fn = [3.0, 1.0, 0.0, 0.0], [1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 2.0, 0.0]
    metrics = SegmentationTask(num_classes=4).finalize(torch.tensor([2.0, 8.0, 4.0, *tp, *fp, *fn]), 1)
    # IoU = tp / (tp + fp + fn): 3/4, 1/2, 0/4; class 3 in neither prediction nor target -> None, not in the mean
    assert metrics["iou_per_class"][:3] == pytest.approx([75.0, 50.0, 0.0]) and metrics["iou_per_class"][3] is None
    assert metrics["miou"] == pytest.approx(125.0 / 3) and metrics["accuracy"] == pytest.approx(50.0)


def test_results_table_heads_segmentation_with_miou():
    history = [row(1, train_accuracy=40.0, test_accuracy=80.0, test_miou=25.0, best_test_miou=25.0)]
    summary = {**INFO, "test_accuracy": 80.0, "test_miou": 25.0, "best_test_miou": 25.0, "firing_rate": 0.1}
    table = results_table(history, summary)
    assert table.splitlines()[0] == ("| epoch | lr | train loss | train pixel acc (%) | test pixel acc (%) | "
                                     "test mIoU (%) | best mIoU (%) | firing rate | time (s) |")
    assert "| 1 | 0.1 | 2.0000 | 40.00 | 80.00 | 25.00 | 25.00 | 0.1000 | 1.0 |" in table
    assert "final mIoU 25.00%, best 25.00%" in table


def test_summary_groups_seeds_as_mean_and_sample_std():
    def run(label, seed, best, rate):
        config = {**INFO, "seed": seed, "output_dir": f"runs/{label}"}
        return SimpleNamespace(label=label, config=config, checkpoint="best_model.pt", epoch=1, history=[row(1)],
                               checkpoint_row=row(1), summary={"test_accuracy": best, "best_test_accuracy": best}), \
            {"firing_rate": {"a": rate, "b": rate}, "energy": {"ann_over_snn": 2.0}}
    pairs = [run("s1", 1, 10.0, 0.1), run("s2", 2, 20.0, 0.3), run("other", 1, 50.0, 0.2)]
    pairs[2][0].config["lr"] = 0.5  # another setting: not a seed of the first two
    text = "\n".join(summary_section([r for r, _ in pairs], {r.label: res for r, res in pairs}))
    assert "| `s1`, `s2` | 2 | top-1 accuracy | 15 ± 7.071 | 15 ± 7.071 | 0.2 ± 0.1414 | 2 ± 0 |" in text
    assert "`other`, " not in text and ", `other`" not in text


def test_traces_follow_the_lif_recursion_by_hand():
    """snnTorch-preset LIF with subtract reset, decay 0.5, threshold 1: u[t] = 0.5 u[t-1] + I - s[t-1],
    s[t] = [u[t] > 1]; rectangular surrogate of width 1: window |u - 1| < 0.5."""
    neuron = LIF(decay=0.5, threshold=1.0, surrogate="rectangular", surrogate_kwargs={"width": 1.0}, reset="subtract")
    currents = torch.tensor([0.6, 0.2, 1.5])
    traces = record_traces(torch.nn.Sequential(neuron), currents.expand(5, 2, 3).clone(), traced=3)
    trace = traces["0"]

    expected_u, u, s = [], torch.zeros(3), torch.zeros(3)
    for _ in range(5):
        u = 0.5 * u + currents - s
        s = (u > 1).float()
        expected_u.append(u.tolist())
    spikes = np.asarray(trace["spikes"])
    assert spikes.shape == (5, 2, 3) and np.array_equal(spikes[:, 0], (np.asarray(expected_u) > 1).astype(float))
    assert trace["traced"] == [2, 0, 1]  # most spikes first: 1.5 fires often, 0.6 once, 0.2 never
    assert np.allclose(trace["potential"], np.asarray(expected_u)[:, [2, 0, 1]], atol=1e-6)
    assert np.allclose(trace["threshold"], 1.0)
    assert all(w == pytest.approx((-0.5, 0.5), abs=2e-3) for w in trace["window"])
    assert not hasattr(neuron, "potentials") and not neuron.surrogate.observers  # nothing left behind


def test_method_state_trajectories_from_diagnostics_snapshots(tmp_path):
    snapshots = {1: {"stem_neuron.surrogate.w_t": [0.5, 0.5], "head_neuron.surrogate.w_t": [0.7, 0.9],
                     "stem_neuron.decay": 0.5, "stem_neuron.running_thr": [1.0, 1.0]},
                 3: {"stem_neuron.surrogate.w_t": [0.6, 0.4], "head_neuron.surrogate.w_t": [1.0, 1.2],
                     "stem_neuron.decay": 0.5, "stem_neuron.running_thr": [0.8, 1.2]}}
    (tmp_path / "diagnostics").mkdir()
    for epoch, state in snapshots.items():
        (tmp_path / "diagnostics" / f"epoch_{epoch:04d}.json").write_text(json.dumps({"method_state": state}))
    trajectories = state_trajectories(tmp_path)
    assert set(trajectories) == {"w_t"}  # decay and the running-threshold mean never change
    epochs, means = trajectories["w_t"]
    assert epochs == [1, 3] and np.allclose(means, [(0.5 + 0.8) / 2, (0.5 + 1.1) / 2])
    path = plot_state_trajectories({"run": trajectories}, tmp_path / "state.png")
    assert np.asarray(Image.open(path).convert("L"), dtype=float).var() > 0


def test_segmentation_examples_show_image_truth_and_prediction_in_the_palette():
    torch.manual_seed(0)
    dataset = create_dataset("shapes_seg", "test", num_scenes=2)
    model = torch.nn.Conv2d(3, dataset.num_classes, 1)  # any [B, K, H, W] model
    fig = segmentation_examples_figure(model, dataset, {**INFO, "dataset": "shapes_seg"}, "seg", count=2)
    palette = voc_colour_map(dataset.num_classes) / 255.0
    shown = set()
    for row in range(2):
        image, mask = dataset[row]
        image_ax, truth_ax, prediction_ax = fig.axes[3 * row:3 * row + 3]
        assert [ax.get_title() for ax in (image_ax, truth_ax, prediction_ax)] == [
            f"{name}, test sample {row}" for name in ("image", "ground truth", "prediction")]
        truth = truth_ax.get_images()[0].get_array()
        ignored = (mask == 255).numpy()
        assert np.allclose(truth[ignored], 1.0) and np.allclose(truth[~ignored], palette[mask.numpy()[~ignored]])
        with torch.no_grad():
            predicted = model(image[None]).argmax(1)[0].numpy()
        assert np.allclose(prediction_ax.get_images()[0].get_array(), palette[predicted])
        shown |= set(mask.numpy()[~ignored].tolist()) | set(predicted.ravel().tolist())
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == [("background", "circle", "square", "triangle")[k] for k in sorted(shown)] + ["ignored (255)"]
    assert fig.get_suptitle().startswith("Segmentation examples: seg\nresnet19 · lif neuron")
    plt.close(fig)


def test_ade20k_examples_use_its_names_and_palette():
    fig = segmentation_examples_figure(ConstantLogits(150, 12), StripedADE(), count=1)
    truth_ax, prediction_ax = fig.axes[1:3]
    truth = truth_ax.get_images()[0].get_array()
    assert [tuple(np.round(truth[0, 4 * i] * 255)) for i in range(5)] == [
        (120, 120, 120), (6, 230, 230), (150, 5, 61), (92, 0, 255), (255, 255, 255)]  # wall, sky, person, flag, ignored
    assert np.allclose(prediction_ax.get_images()[0].get_array() * 255, (150, 5, 61))  # person everywhere
    legend = fig.legends[0]
    assert [text.get_text() for text in legend.get_texts()] == ["wall", "sky", "person", "flag", "ignored (255)"]
    assert np.allclose([patch.get_facecolor()[:3] for patch in legend.get_patches()][:4],
                       ADE20K_PALETTE[[0, 2, 12, 149]] / 255.0)
    plt.close(fig)


def test_segmentation_section_tables_the_iou_of_each_class_by_name(tmp_path):
    def run(label, dataset, test_set, ious):
        return SimpleNamespace(label=label, modality="segmentation", config={**INFO, "dataset": dataset},
                               checkpoint_row={"test_miou": 50.0, "test_iou_per_class": ious},
                               model=ConstantLogits(test_set.num_classes, 1), test_set=test_set)
    shapes = create_dataset("shapes_seg", "test", num_scenes=1)
    ade_ious = [None] * 150
    ade_ious[12] = 33.3
    runs = [run("s1", "shapes_seg", shapes, [90.0, 75.0, None, 12.5]), run("s2", "shapes_seg", shapes, None),
            run("a", "ade20k", StripedADE(), ade_ious)]
    lines = segmentation_section(runs, tmp_path)
    shapes_table = lines[lines.index("`shapes_seg`:") + 2:lines.index("`ade20k`:") - 1]
    assert shapes_table == ["| class | `s1` | `s2` |", "|---|---|---|", "| mIoU | 50 | 50 |",
                            "| 0 background | 90 | n/a |", "| 1 circle | 75 | n/a |", "| 2 square | n/a | n/a |",
                            "| 3 triangle | 12.5 | n/a |"]
    ade_table = lines[lines.index("`ade20k`:") + 2:]
    assert ade_table[:5] == ["| class | `a` |", "|---|---|", "| mIoU | 50 |", "| 0 wall | n/a |",
                             "| 1 building | n/a |"]
    assert "| 12 person | 33.3 |" in ade_table and "| 149 flag | n/a |" in ade_table
    assert [line for line in lines if line.startswith("![")] == [
        f"![segmentation examples {name}](examples_{name}.png)" for name in ("s1", "s2", "a")]


def test_spike_figures_draw_the_recorded_traces():
    neuron = LIF(decay=0.5, threshold=1.0, surrogate="rectangular", surrogate_kwargs={"width": 1.0}, reset="subtract")
    traces = record_traces(torch.nn.Sequential(neuron), torch.tensor([0.6, 0.2, 1.5]).expand(5, 2, 3).clone())
    spikes = np.asarray(traces["0"]["spikes"])

    raster = raster_figure(traces)
    marks = np.concatenate([c.get_offsets() for c in raster.axes[0].collections])  # sample 0: (t, neuron)
    t, n = np.nonzero(spikes[:, 0])
    assert sorted(map(tuple, marks.tolist())) == sorted(zip((t + 1).tolist(), n.tolist()))
    assert raster.axes[0].get_xlabel() == "timestep t"
    plt.close(raster)

    membrane = membrane_figure(traces)
    ax = membrane.axes[1]  # neuron 0 (current 0.6): fires once, at t = 3
    u_line = next(line for line in ax.get_lines() if line.get_label() == "membrane u_t (pre-fire)")
    assert np.allclose(u_line.get_ydata(), np.asarray(traces["0"]["potential"])[:, 1])
    threshold = next(line for line in ax.get_lines() if line.get_label() == "threshold theta_t")
    assert np.allclose(threshold.get_ydata(), 1.0)
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(0.5, abs=2e-3) and band.max() == pytest.approx(1.5, abs=2e-3)
    fired = next(line for line in ax.get_lines() if line.get_label() == "spike")
    assert list(fired.get_xdata()) == [3]
    plt.close(membrane)


def test_event_frames_show_on_minus_off():
    frames = torch.zeros(1, 3, 2, 4, 4)
    frames[0, 1, 0, 1, 2] = 2.0  # ON events at t = 2
    frames[0, 2, 1, 3, 0] = 1.0  # an OFF event at t = 3
    fig = event_frames_figure(frames, [7])
    images = [ax.get_images()[0].get_array() for ax in fig.axes if ax.get_images()]
    assert len(images) == 3 and images[1][1, 2] == 2.0 and images[2][3, 0] == -1.0 and images[0].sum() == 0
    assert [ax.get_title() for ax in fig.axes[:3]] == ["t=1", "t=2", "t=3"] and fig.axes[0].get_ylabel() == "label 7"
    plt.close(fig)
