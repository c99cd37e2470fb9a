"""``python -m repro.report``: renders a Markdown report with non-blank PNGs for a smoke run, alone and
side by side with a second run."""
import dataclasses
import json
import shutil

import matplotlib.image
import pytest

from repro.config import Config
from repro.engine import train
from repro.report import main, parse_args

SMOKE = Config(model="resnet19", model_options={"width": 0.0625}, num_steps=2, dataset="digits", batch_size=16,
               eval_batch_size=32, epochs=1, lr=0.05, seed=7, limit_train_batches=3, limit_eval_batches=1)


def assert_not_blank(path):
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels[..., :3].var() > 0, path


@pytest.mark.slow
def test_report_renders_pngs_for_one_run_and_a_comparison(tmp_path):
    run = tmp_path / "run_atan"
    train(dataclasses.replace(SMOKE, output_dir=str(run)))
    report = main([str(run), "--batches", "1", "--batch_size", "16", "--sharpness", "--sharpness_iterations", "2",
                   "--sharpness_batches", "1", "--sharpness_batch_size", "8", "--landscape", "1",
                   "--landscape_points", "3"])
    assert report == run / "report" / "report.md"
    text = report.read_text()
    for section in ("## Training curves", "## Firing rate", "## Gradient-window occupancy",
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
    assert "| atan |" in text and "| atan_again |" in text and "histograms_atan_again.png" in text
    for name in ("firing_rate.png", "window_occupancy.png", "histograms_atan.png", "histograms_atan_again.png"):
        assert_not_blank(tmp_path / "both" / name)


def test_report_arguments_are_checked(tmp_path):
    with pytest.raises(SystemExit):
        parse_args([str(tmp_path), "--labels", "a", "b"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        main([str(tmp_path)])


def test_method_state_trajectories_from_diagnostics_snapshots(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from repro.report import plot_state_trajectories, state_trajectories

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
