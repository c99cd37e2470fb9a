"""``python -m repro.report`` end to end on tiny smoke runs: a static, an event (nd_digits, T = 4) and a
segmentation run in one report with ``--spikes``; a static run alone with sharpness and landscape, and
side by side with a copy."""
import contextlib
import dataclasses
import io
import json
import shlex
import shutil
from pathlib import Path

import matplotlib.image
import pytest
import torch

import repro.engine
from repro.config import Config
from repro.engine import train
from repro.report import main, parse_args

SMOKE = Config(model="resnet19", model_options={"width": 0.0625}, num_steps=2, dataset="digits", batch_size=16,
               eval_batch_size=32, epochs=1, lr=0.05, seed=7, limit_train_batches=3, limit_eval_batches=1)
EVENT = dataclasses.replace(SMOKE, model="vggsnn", model_options={"width": 0.125}, dataset="nd_digits", num_steps=4,
                            limit_train_batches=2)
SEGMENTATION = dataclasses.replace(
    SMOKE, model="spiking_fpn", model_options={"width": 0.125, "pyramid_channels": 32, "segmentation_channels": 32},
    dataset="shapes_seg", loss="dice_ce", batch_size=8, eval_batch_size=16, epochs=2, limit_train_batches=2)
ROOT = Path(__file__).parents[1]
# Per epoch, (mIoU, pixel accuracy) that disagree about the best epoch: mIoU must choose epoch 1.
DISAGREEING = {1: (50.0, 10.0), 2: (20.0, 90.0)}


def assert_not_blank(path):
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels[..., :3].var() > 0, path


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory):
    """A 2-epoch segmentation run whose evaluation reports DISAGREEING mIoU / pixel accuracy (the rest,
    per-class IoU included, as measured)."""
    evaluate, epochs = repro.engine.evaluate, iter(DISAGREEING.values())

    def disagreeing(*args, **kwargs):
        stats = evaluate(*args, **kwargs)
        stats["test_miou"], stats["test_accuracy"] = next(epochs)
        return stats

    run, printed = tmp_path_factory.mktemp("seg") / "run", io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(repro.engine, "evaluate", disagreeing)
        summary = train(dataclasses.replace(SEGMENTATION, output_dir=str(run)))
    return run, summary, printed.getvalue()


@pytest.mark.slow
def test_segmentation_selects_best_model_by_miou(segmentation_run):
    run, summary, table = segmentation_run
    assert torch.load(run / "best_model.pt", weights_only=False)["epoch"] == 1  # pixel accuracy would pick 2
    assert summary["best_test_miou"] == 50.0 and summary["test_miou"] == 20.0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["best_test_miou"] for r in rows] == [50.0, 50.0]
    assert all(len(r["test_iou_per_class"]) == 4 for r in rows)
    assert "| test mIoU (%) | best mIoU (%) |" in table and "final mIoU 20.00%, best 50.00%" in table
    assert "test mIoU 20.00% (best 50.00%), pixel acc 90.00%" in table  # the epoch line


@pytest.mark.slow
def test_report_on_static_event_and_segmentation_runs_with_spikes(tmp_path, segmentation_run):
    static, event = tmp_path / "static", tmp_path / "event"
    train(dataclasses.replace(SMOKE, output_dir=str(static)))
    train(dataclasses.replace(EVENT, output_dir=str(event)))
    seg = segmentation_run[0]
    out = tmp_path / "report"
    report = main([str(static), str(event), str(seg), "--batches", "1", "--batch_size", "4", "--spikes",
                   "--spike_samples", "2", "--labels", "static", "event", "seg", "--out", str(out), "--html"])
    text = report.read_text()
    assert text.index("## Summary") < text.index("## Training curves") < text.index("## Spikes")
    seg_row = next(line for line in text.splitlines() if line.startswith("| `seg` |"))
    assert "| mIoU | 50 (best_model.pt, epoch 1) | 20 | 50 |" in seg_row
    assert "| top-1 accuracy |" in next(line for line in text.splitlines() if line.startswith("| `event` |"))
    per_class = json.loads((seg / "metrics.jsonl").read_text().splitlines()[0])["test_iou_per_class"]
    assert "| class | `seg` |\n|---|---|\n| mIoU | 50 |\n" + "".join(
        f"| {k} {name} | {'n/a' if v is None else f'{v:.4g}'} |\n"
        for k, (name, v) in enumerate(zip(("background", "circle", "square", "triangle"), per_class))) in text
    event_diagnostics = json.loads((out / "diagnostics_event.json").read_text())
    assert event_diagnostics["num_steps"] == 4  # built as the engine builds it: one frame per step
    assert len(event_diagnostics["traces"]["features.1"]["spikes"]) == 4
    for name in ("training_curves.png", "examples_seg.png", "event_frames_event.png", "raster_static.png",
                 "raster_event.png", "raster_seg.png", "traces_static.png", "traces_event.png"):
        assert f"({name})" in text, name
        assert_not_blank(out / name)
    assert "event_frames_static.png" not in text  # event frames only for event data
    html = (out / "report.html").read_text()
    assert '<img alt="spike raster event" src="raster_event.png"' in html and "<table>" in html


@pytest.mark.slow
def test_report_renders_pngs_for_one_run_and_a_comparison(tmp_path):
    run = tmp_path / "run_atan"
    train(dataclasses.replace(SMOKE, output_dir=str(run)))
    report = main([str(run), "--batches", "1", "--batch_size", "16", "--sharpness", "--sharpness_iterations", "2",
                   "--sharpness_batches", "1", "--sharpness_batch_size", "8", "--landscape", "1",
                   "--landscape_points", "3"])
    assert report == run / "report" / "report.md"
    text = report.read_text()
    for section in ("## Summary", "## Training curves", "## Firing rate", "## Gradient-window occupancy",
                    "## Membrane-potential histograms", "## Energy", "## Sharpness", "## Loss landscape"):
        assert section in text, section
    for name in ("training_curves.png", "firing_rate.png", "firing_rate_per_step.png", "window_occupancy.png",
                 "window_occupancy_per_step.png", "histograms_run_atan.png", "loss_landscape.png"):
        assert f"({name})" in text and (run / "report" / name).is_file(), name
        assert_not_blank(run / "report" / name)
    diagnostics = json.loads((run / "report" / "diagnostics_run_atan.json").read_text())
    assert diagnostics["images"] == 16 and diagnostics["checkpoint"] == "best_model.pt"
    assert diagnostics["energy"]["ann_over_snn"] > 1 and len(diagnostics["landscape"]["loss"]) == 3

    other = tmp_path / "run_copy"
    shutil.copytree(run, other)
    shutil.rmtree(other / "report")
    comparison = main([str(run), str(other), "--batches", "1", "--batch_size", "16", "--checkpoint", "last",
                       "--labels", "atan", "atan_again", "--out", str(tmp_path / "both")])
    text = comparison.read_text()
    assert "| `atan` |" in text and "| `atan_again` |" in text and "histograms_atan_again.png" in text
    for name in ("firing_rate.png", "window_occupancy.png", "histograms_atan.png", "histograms_atan_again.png"):
        assert_not_blank(tmp_path / "both" / name)


def test_report_commands_in_the_docs_parse():
    for path in (ROOT / "README.md", ROOT / "docs" / "diagnostics.md"):
        text = path.read_text().replace("\\\n", " ")
        commands = [line.split("python -m repro.report", 1)[1].split(" #")[0] for line in text.splitlines()
                    if "python -m repro.report " in line]
        assert commands, path
        for command in commands:
            parse_args(shlex.split(command))


def test_report_arguments_are_checked(tmp_path):
    with pytest.raises(SystemExit):
        parse_args([str(tmp_path), "--labels", "a", "b"])
    with pytest.raises(SystemExit):
        parse_args([str(tmp_path), "--spike_samples", "0"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        main([str(tmp_path)])
