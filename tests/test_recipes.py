"""Every recipe runs ``--smoke`` end-to-end and writes summary.json: a few through ``accelerate launch`` (one
per modality and the CPU-process path), the rest as the launched script runs them, in this process (the
launcher adds only process start-up, about 5 s each)."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE_DIR = Path(__file__).parents[1] / "recipes"
# ablate.py writes one run per arm and has its own test (test_ablation.py); ds_atgo_cifar10dvs.py's smoke run is
# the in-process one below, which also checks the loss it trains with
RECIPES = sorted(p for p in RECIPE_DIR.glob("*.py") if p.stem not in ("ablate", "ds_atgo_cifar10dvs"))
LAUNCHED = {"quickstart", "cf_cifar10dvs", "cf_sst2", "a2sg_segmentation"}  # static, event, text, segmentation


def check_smoke_run(run_dir: Path, stdout: str) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 1 and 0.0 <= summary["test_accuracy"] <= 100.0
    assert "| epoch |" in stdout  # the results table is printed


@pytest.mark.parametrize("recipe", [p for p in RECIPES if p.stem in LAUNCHED], ids=lambda p: p.stem)
def test_recipe_smoke_through_accelerate_launch(recipe, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run([*launcher, str(recipe), "--smoke", "--output_dir", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_smoke_run(tmp_path / "run", result.stdout)


@pytest.mark.parametrize("recipe", [p for p in RECIPES if p.stem not in LAUNCHED], ids=lambda p: p.stem)
def test_recipe_smoke_in_process(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(RECIPE_DIR))  # as for the script: its folder first (sibling recipes)
    monkeypatch.setattr(sys, "argv", [str(recipe), "--smoke", "--output_dir", str(tmp_path / "run")])
    runpy.run_path(str(recipe), run_name="__main__")
    check_smoke_run(tmp_path / "run", capsys.readouterr().out)


def test_ds_atgo_dvs_recipe_trains_with_tet_and_ce_is_one_flag_away(tmp_path, monkeypatch):
    """The recipe's ``--smoke`` run (in process, the same ``main`` as the launched script): the resolved config
    says TET, and both training batches' losses are TETLoss calls (evaluation uses plain CE); ``--loss ce``
    resolves to plain mean-logit CE."""
    from repro.cli import main
    from repro.config import parse_args
    from repro.losses import MeanLogitCE, TETLoss, create_loss

    monkeypatch.syspath_prepend(str(RECIPE_DIR))
    recipe = runpy.run_path(str(RECIPE_DIR / "ds_atgo_cifar10dvs.py"), run_name="recipe")
    calls, tet_forward = [], TETLoss.forward
    monkeypatch.setattr(TETLoss, "forward", lambda self, logits, target: calls.append(logits.shape[0])
                        or tet_forward(self, logits, target))
    summary = main(recipe["config"], vanilla=recipe["VANILLA"], smoke=recipe["SMOKE"],
                   argv=["--smoke", "--output_dir", str(tmp_path / "run")])
    assert summary["epochs"] == 1 and 0.0 <= summary["test_accuracy"] <= 100.0
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (resolved["loss"], resolved["loss_options"]) == ("tet", {})
    assert calls == [4, 4]  # two training batches of T = 4 (the smoke T) per-step logits
    plain = parse_args(recipe["config"], ["--loss", "ce"])
    assert (plain.loss, plain.loss_options) == ("ce", {})
    assert type(create_loss(plain.loss, **plain.loss_options)) is MeanLogitCE


def test_seg_finetune_starts_from_a_classification_checkpoint(tmp_path):
    """A resnet18 classification run's checkpoint initialises the segmentation encoder (checked by value),
    then seg_finetune trains from it end-to-end."""
    import torch

    from repro.checkpoint import load_pretrained
    from repro.config import Config
    from repro.engine import train
    from repro.models import create_model

    train(Config(model="resnet18", model_options={"width": 0.25}, num_steps=2, dataset="digits", batch_size=8,
                 eval_batch_size=16, epochs=1, limit_train_batches=2, limit_eval_batches=1,
                 output_dir=str(tmp_path / "cls")))
    checkpoint = tmp_path / "cls" / "checkpoint.pt"
    classifier = torch.load(checkpoint, weights_only=False)["model"]
    segmenter = create_model("spiking_fpn", num_classes=4, num_steps=2, width=0.25)
    missing, unexpected = load_pretrained(segmenter, checkpoint)
    encoder = segmenter.encoder.state_dict()
    assert not missing and any(k.startswith("classifier") for k in unexpected)
    assert all(torch.equal(encoder[k], classifier[k]) for k in encoder)
    assert sum(v.numel() for v in encoder.values()) > 100_000

    recipe = RECIPE_DIR / "seg_finetune.py"
    result = subprocess.run([sys.executable, str(recipe), "--smoke", "--model.width", "0.25", "--num_steps", "2",
                             "--pretrained", str(checkpoint), "--output_dir", str(tmp_path / "seg")],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "initialised from" in result.stdout
    summary = json.loads((tmp_path / "seg" / "summary.json").read_text())
    assert "test_miou" in summary and (tmp_path / "seg" / "examples.png").stat().st_size > 10_000
