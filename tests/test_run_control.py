"""How a run is launched, configured, logged and recovered (issues 14 and 15): accelerate's own settings,
config files, smoke runs, step logs, trackers, the run-directory lock, non-finite weights and the stop
advice followed by a resume."""
import dataclasses
import json
import os
import runpy
import stat
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

import repro.engine as engine
from repro.checkpoint import atomic_write, load_checkpoint, lock_run_directory, remove_stale_temp_files, save_checkpoint
from repro.cli import main, resolve
from repro.config import Config, build_parser, parse_args, read_command_line

RECIPES = Path(__file__).parents[1] / "recipes"
QUICKSTART = runpy.run_path(str(RECIPES / "quickstart.py"))
SEG_FINETUNE = runpy.run_path(str(RECIPES / "seg_finetune.py"))
SMALL = dataclasses.replace(QUICKSTART["config"], model_options={"width": 0.125}, epochs=1, limit_train_batches=2,
                            limit_eval_batches=1, batch_size=8, eval_batch_size=16)
SMALL_FLAGS = ["--model.width", "0.125", "--epochs", "1", "--limit_train_batches", "2", "--limit_eval_batches", "1",
               "--batch_size", "8", "--eval_batch_size", "16"]


@pytest.fixture
def fresh_accelerate_state():
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_accelerate_settings_from_the_environment_reach_the_accelerator(tmp_path, monkeypatch,
                                                                        fresh_accelerate_state):
    """``accelerate launch --mixed_precision bf16 --gradient_accumulation_steps 2`` sets ACCELERATE_* variables;
    a config that leaves the fields unset (None, 1) follows them; an explicit --mixed_precision wins."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    settings = engine.runtime_settings(engine.create_accelerator(SMALL, tmp_path), SMALL)
    assert settings == {"mixed_precision": "bf16", "num_processes": 1, "device": "cpu", "distributed_type": "NO",
                        "gradient_accumulation_steps": 2, "compile": "no"}
    AcceleratorState._reset_state(True)
    explicit = dataclasses.replace(SMALL, mixed_precision="no")
    assert engine.create_accelerator(explicit, tmp_path).mixed_precision == "no"


def test_resume_records_a_changed_launcher_precision(tmp_path, monkeypatch, fresh_accelerate_state):
    """The precision accelerate resolves outside the config (here ACCELERATE_MIXED_PRECISION, as `accelerate launch
    --mixed_precision bf16` sets it) is stored in the checkpoint; a resume under another one says so and records
    it as a change at that epoch."""
    engine.train(dataclasses.replace(SMALL, output_dir=str(tmp_path)))
    AcceleratorState._reset_state(True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    summary = engine.train(dataclasses.replace(SMALL, output_dir=str(tmp_path), epochs=2, resume=True))
    change = {"epoch": 2, "launcher.mixed_precision": ["no", "bf16"]}
    assert summary["config_changes"] == [change] and summary["mixed_precision"] == "bf16"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "config_changes" not in rows[0] and rows[1]["config_changes"] == change


def test_config_file_round_trip_and_overrides(tmp_path):
    """A run's config.json read back with --config gives the same config; YAML works too (``1e-3`` is a
    string to YAML 1.1 and still parses as the float field it is); flags on the command line win."""
    (tmp_path / "config.json").write_text(json.dumps(resolve(QUICKSTART["config"], read_command_line(
        QUICKSTART["config"], [*SMALL_FLAGS, "--neuron.decay", "0.25"])).to_dict()))
    again = parse_args(QUICKSTART["config"], ["--config", str(tmp_path / "config.json")])
    assert again.to_dict() == Config.from_dict(json.loads((tmp_path / "config.json").read_text())).to_dict()
    assert again.neuron_options == {"decay": 0.25} and again.model_options == {"width": 0.125} and again.epochs == 1

    (tmp_path / "run.yaml").write_text("lr: 1e-3\nbetas: [0.8, 0.9]\nsurrogate: triangle\n"
                                       "surrogate_options: {width: 0.5}\nepochs: 5\n")
    config = parse_args(QUICKSTART["config"], ["--config", str(tmp_path / "run.yaml"), "--epochs", "7"])
    assert (config.lr, config.betas, config.surrogate, config.surrogate_options, config.epochs) == \
        (1e-3, (0.8, 0.9), "triangle", {"width": 0.5}, 7)


def test_help_keeps_the_docstring_and_shows_option_groups_and_aliases():
    text = build_parser(QUICKSTART["config"], QUICKSTART["__doc__"]).format_help()
    assert "    accelerate launch recipes/quickstart.py --smoke" in text  # line breaks of the docstring kept
    for flag in ("--model.KEY VALUE", "--neuron.KEY VALUE", "--output_dir OUTPUT_DIR, --output-dir OUTPUT_DIR",
                 "--config FILE", "--debug"):
        assert flag in text, flag
    assert "--model_options" not in text


def test_smoke_keeps_explicit_flags_and_writes_its_own_directory():
    recipe = QUICKSTART["config"]
    smoke = resolve(recipe, read_command_line(recipe, ["--smoke"]))
    assert (smoke.output_dir, smoke.epochs, smoke.limit_train_batches) == ("runs/smoke/quickstart", 1, 2)
    explicit = resolve(recipe, read_command_line(recipe, ["--smoke", "--epochs", "3", "--data_root", "/d",
                                                          "--output_dir", "mine"]))
    assert (explicit.epochs, explicit.data_root, explicit.output_dir, explicit.dataset) == (3, "/d", "mine", "digits")


def test_segmentation_warmup_adapts_to_short_runs(capsys):
    recipe = SEG_FINETUNE["config"]
    assert recipe.warmup_epochs == 1
    short = resolve(recipe, read_command_line(recipe, ["--epochs", "1"]))
    assert short.warmup_epochs == 0 and "warm-up shortened from 1 to 0 epoch(s)" in capsys.readouterr().err
    assert resolve(recipe, read_command_line(recipe, ["--epochs", "3"])).warmup_epochs == 1


def test_a_run_logs_steps_off_a_terminal_writes_tensorboard_events_and_a_config_that_reads_back(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    summary = main(QUICKSTART["config"], argv=[*SMALL_FLAGS, "--log_every", "1", "--report_to", "tensorboard",
                                               "--output-dir", str(run_dir)])
    out = capsys.readouterr().out
    assert "run: mixed_precision no, num_processes 1, device cpu" in out
    assert (summary["epochs"], summary["mixed_precision"], summary["num_processes"]) == (1, "no", 1)
    for step in (1, 2):  # pytest's stderr is not a terminal
        assert f"epoch 1 step {step}/2: loss " in out
    assert "images/s, firing rate 0." in out

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = set()
    for event_file in run_dir.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        scalars |= set(accumulator.Tags()["scalars"])
    assert any("test_accuracy" in tag for tag in scalars) and any("firing_rate" in tag for tag in scalars), scalars

    written = json.loads((run_dir / "config.json").read_text())
    again = parse_args(QUICKSTART["config"], ["--config", str(run_dir / "config.json")])
    assert again.to_dict() == Config.from_dict(written).to_dict() and again.report_to == "tensorboard"


def test_a_second_run_on_a_locked_directory_is_refused(tmp_path):
    with lock_run_directory(tmp_path):
        with pytest.raises(FileExistsError, match=rf"{tmp_path} is in use by another run \(pid {os.getpid()}\).*"
                                                  r"ACCELERATE_USE_CPU=true accelerate launch --multi_gpu"):
            engine.train(dataclasses.replace(SMALL, output_dir=str(tmp_path)))
    with lock_run_directory(tmp_path):  # released
        pass


def test_files_get_the_usual_mode_and_stale_temp_files_go(tmp_path):
    atomic_write(tmp_path / "a.json", lambda f: f.write(b"{}"))
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    assert [p.name for p in remove_stale_temp_files(tmp_path)] == [".checkpoint.pt.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_non_finite_checkpoint_is_never_written(tmp_path):
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": {"w": torch.ones(2)}, "epoch": 1})
    with pytest.raises(FloatingPointError, match=r"optimizer.state.0.momentum_buffer is non-finite"):
        save_checkpoint(tmp_path / "checkpoint.pt", {"model": {"w": torch.ones(2)}, "epoch": 2, "optimizer": {
            "state": {0: {"momentum_buffer": torch.tensor([1.0, float("inf")])}}}})
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


class WeightsToInfAtStep(torch.nn.Module):
    """CE whose ``after_optimizer_step`` hook sets one weight to inf after a given step (a step that diverged
    while its loss and gradient were finite, as with lr 1e30)."""

    task = "classification"

    def __init__(self, bad_step: int):
        super().__init__()
        self.bad_step = bad_step

    def bind(self, model):
        self.weight = next(model.parameters())

    def after_optimizer_step(self, step: int):
        if step == self.bad_step:
            with torch.no_grad():
                self.weight.view(-1)[0] = float("inf")

    def forward(self, logits, target):
        return torch.nn.functional.cross_entropy(logits.float().mean(0), target)


def test_skip_stops_on_non_finite_weights_and_writes_no_checkpoint(tmp_path, monkeypatch):
    """The step after the one that broke the weights stops the run, also with --nonfinite skip."""
    monkeypatch.setattr(engine, "create_loss", lambda name, **kw: WeightsToInfAtStep(bad_step=1))
    with pytest.raises(FloatingPointError, match=r"weights are non-finite after the optimiser step before epoch 1, "
                                                 r"step 2 .*last good checkpoint is none yet\. Lower --lr or set --grad_clip; "
                                                 r"then start again without --resume"):
        engine.train(dataclasses.replace(SMALL, nonfinite="skip", output_dir=str(tmp_path)))
    assert not (tmp_path / "checkpoint.pt").exists() and (tmp_path / "metrics.jsonl").read_text() == ""
