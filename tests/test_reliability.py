"""A run killed with SIGKILL resumes from its last complete checkpoint and ends where an
uninterrupted run ends; checkpoint writes are atomic."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repro.checkpoint import atomic_write, load_checkpoint, save_checkpoint

QUICKSTART = Path(__file__).parents[1] / "recipes" / "quickstart.py"
ARGS = ["--epochs", "3", "--limit_train_batches", "6", "--limit_eval_batches", "1", "--model.width", "0.125",
        "--dataset.augment", "false"]


def run(output_dir, *extra, wait=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(QUICKSTART), "--output_dir", str(output_dir), *ARGS, *extra]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    run(tmp_path / "straight")
    process = run(tmp_path / "killed", wait=False)
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if checkpoint.exists() and load_checkpoint(checkpoint)["epoch"] >= 1:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # somewhere inside epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert load_checkpoint(checkpoint)["epoch"] in (1, 2)
    run(tmp_path / "killed", "--resume")

    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "summary.json").read_text())
    for key in ("test_accuracy", "best_test_accuracy", "firing_rate", "epochs"):
        assert resumed[key] == straight[key], key
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    b = load_checkpoint(checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "epoch": 1})

    def crash_midway(f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed during the write")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash_midway)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left
