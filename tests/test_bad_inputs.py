"""Errors a user causes: one line ``error: ...`` naming the option, the value and what is allowed, exit
code 2, before any training starts (issue 14 item 5, issue 15 item 3); ``--debug`` keeps the traceback."""
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repro.checkpoint import save_checkpoint
from repro.cli import main
from repro.config import ConfigError, parse_args
from repro.models import create_model

RECIPES = Path(__file__).parents[1] / "recipes"
QUICKSTART = runpy.run_path(str(RECIPES / "quickstart.py"))["config"]

CASES = {
    "lr_inf": (["--lr", "inf"], r"--lr 'inf' is not valid: expected a finite number"),
    "width_zero": (["--model.width", "0"], r"--model.width must be > 0, got 0"),
    "width_negative": (["--model.width", "-1"], r"--model.width must be > 0, got -1"),
    "width_text": (["--model.width", "abc"], r"--model.width 'abc' is not valid: expected a finite number"),
    "augment_maybe": (["--dataset.augment", "maybe"], r"--dataset.augment 'maybe' is not valid: expected true or false"),
    "eval_batch_zero": (["--eval_batch_size", "0"], r"--eval_batch_size must be >= 1, got 0"),
    "momentum_negative": (["--momentum", "-1"], r"--momentum must be in \[0, 1\), got -1.0"),
    "limit_negative": (["--limit_train_batches", "-1"], r"--limit_train_batches .* must be >= 0 \(0 = all\), got -1"),
    "batch_too_large": (["--batch_size", "2000"],
                        r"--batch_size 2000 x 1 process\(es\) = 2000 exceeds the 1437 training samples of 'digits'; "
                        r"use --batch_size <= 1437"),
    "segmentation_loss": (["--loss", "dice_ce"], r"--loss dice_ce is a segmentation loss but dataset 'digits' is "
                                                 r"classification; choose one of \['ce', 'ls_ce', 'pnb', 'tet'\]"),
    "neuron_typo": (["--neuron.decya", "0.3"], r"--neuron.decya: neuron 'lif' has no option 'decya'; valid options: "
                                               r"\[.*'decay'.*\]"),
    "surrogate_typo": (["--surrogate.alpah", "3"], r"--surrogate.alpah: surrogate 'atan' has no option 'alpah'"),
    "resume_nothing": (["--resume"], r"--resume: no checkpoint at .*; run without --resume"),
    "epochs_text": (["--epochs", "abc"], r"--epochs 'abc' is not valid: expected an integer"),
    "bool_text": (["--sync_bn", "maybe"], r"--sync_bn 'maybe' is not valid: expected true or false"),
    "unknown_flag": (["--no_such", "1"], r"unrecognised argument '--no_such'"),
    "warmup_too_long": (["--warmup_epochs", "3", "--epochs", "2"],
                        r"--warmup_epochs must be in \[0, epochs\) = \[0, 2\), got 3: pass --warmup_epochs 1"),
    "missing_config_file": (["--config", "nowhere.yaml"], r"--config nowhere.yaml: no such file"),
    "report_to": (["--report_to", "comet"], r"--report_to must be none, all or a comma list of tensorboard"),
}


def fails_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(QUICKSTART, argv=argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert re.search(message, lines[0]), lines[0]


@pytest.mark.parametrize("argv,message", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_before_training(argv, message, tmp_path, capsys):
    fails_with_one_line([*argv, "--output_dir", str(tmp_path / "run")], message, capsys)
    assert not (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_output_dir_that_is_a_file_or_cannot_be_made(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    fails_with_one_line(["--output_dir", str(tmp_path / "file")], r"--output_dir .*file is a file", capsys)
    fails_with_one_line(["--output_dir", str(tmp_path / "file" / "run")], r"--output_dir .* cannot be created",
                        capsys)


def test_resume_from_a_checkpoint_of_another_model(tmp_path, capsys):
    config = parse_args(QUICKSTART, ["--output_dir", str(tmp_path), "--resume"])
    narrower = create_model("resnet19", num_classes=10, in_channels=3, num_steps=2, width=0.125)
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": narrower.state_dict(), "optimizer": {}, "epoch": 1,
                                                 "config": config.to_dict(), "best": {}, "history": []})
    fails_with_one_line(["--output_dir", str(tmp_path), "--resume"],
                        r"checkpoint .* does not fit model 'resnet19' \(size mismatch for .*\); resume with the "
                        r"settings it was trained with", capsys)


def test_debug_keeps_the_traceback(tmp_path):
    with pytest.raises(ConfigError, match="--lr 'inf'"):
        main(QUICKSTART, argv=["--lr", "inf", "--debug", "--output_dir", str(tmp_path)])


def test_one_line_under_accelerate_launch(tmp_path):
    """Under ``accelerate launch -q`` (no launcher traceback) the user sees our line and a non-zero exit;
    the launcher's --mixed_precision reaches the run (fp16 is refused on CPU)."""
    if torch.cuda.is_available():
        pytest.skip("fp16 is valid with a GPU")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--num_processes", "1", "--num_machines",
                "1", "--dynamo_backend", "no", "--mixed_precision", "fp16"]
    result = subprocess.run([*launcher, str(RECIPES / "seg_finetune.py"), "--smoke", "--output_dir",
                             str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == ("error: --mixed_precision fp16 needs a GPU (CPU autocast is bf16); on CPU use bf16 or no"), \
        result.stderr[-2000:]
    assert "Traceback" not in result.stderr
