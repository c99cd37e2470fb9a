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
