"""Every recipe runs ``--smoke`` end-to-end through ``accelerate launch`` and writes summary.json."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# ablate.py writes one run per arm and has its own test (test_ablation.py)
RECIPES = sorted(p for p in (Path(__file__).parents[1] / "recipes").glob("*.py") if p.stem not in ("ablate",))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_smoke_through_accelerate_launch(recipe, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run([*launcher, str(recipe), "--smoke", "--output_dir", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 1 and 0.0 <= summary["test_accuracy"] <= 100.0
    assert "| epoch |" in result.stdout  # the results table is printed


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

    recipe = Path(__file__).parents[1] / "recipes" / "seg_finetune.py"
    result = subprocess.run([sys.executable, str(recipe), "--smoke", "--model.width", "0.25", "--num_steps", "2",
                             "--pretrained", str(checkpoint), "--output_dir", str(tmp_path / "seg")],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "initialised from" in result.stdout
    summary = json.loads((tmp_path / "seg" / "summary.json").read_text())
    assert "test_miou" in summary and (tmp_path / "seg" / "examples.png").stat().st_size > 10_000
