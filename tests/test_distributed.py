"""Two-process CPU data-parallel training (gloo, torchrun) matches one process on the same global
batch, augmentation included; neuron state is never broadcast between ranks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repro.checkpoint import load_checkpoint
from repro.datasets import Digits
from repro.datasets.sampling import EpochSampler, SeededItems

QUICKSTART = str(Path(__file__).parents[1] / "recipes" / "quickstart.py")
COMMON = ["--epochs", "1", "--limit_train_batches", "3", "--limit_eval_batches", "1", "--model.width", "0.125",
          "--sync_bn", "true"]  # augmentation on: each sample's shift is drawn from (seed, epoch, index)


def launch(output_dir, processes: int, batch_size: int, *extra: str):
    env = dict(os.environ, HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
              "--master_port", "29517"] if processes > 1 else [sys.executable]
    result = subprocess.run([*prefix, QUICKSTART, *COMMON, *extra, "--batch_size", str(batch_size),
                             "--eval_batch_size", str(120 // processes), "--output_dir", str(output_dir)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads((Path(output_dir) / "summary.json").read_text()), load_checkpoint(Path(output_dir) / "checkpoint.pt")


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    """The same (epoch, index) gives the same augmented sample bitwise in any access order (another process,
    another worker, a resume); another epoch or seed gives another draw; the epoch order is a pure function
    of (seed, epoch)."""
    items = SeededItems(Digits("train", augment=True), seed=5)
    keys = [(0, 3), (0, 700), (1, 3), (0, 42)]
    forward = [items[k][0] for k in keys]
    backward = [items[k][0] for k in reversed(keys)][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    torch.manual_seed(0)
    assert torch.equal(items[(0, 3)][0], forward[0])  # independent of the global generator
    assert not torch.equal(forward[0], forward[2])  # epoch 1 draws another shift (a 2-pixel roll of a digit)
    assert not torch.equal(SeededItems(items.dataset, seed=6)[(0, 3)][0], forward[0])
    sampler = EpochSampler(10, seed=5)
    sampler.set_epoch(2)
    again = EpochSampler(10, seed=5)
    again.set_epoch(2)
    assert list(sampler) == list(again) and {i for _, i in sampler} == set(range(10))
    assert all(epoch == 2 for epoch, _ in sampler)


DS_ATGO = ("--neuron", "adaptive_threshold", "--surrogate", "tgo", "--neuron.sync_stats", "true")


# Known regression (issue 14): since commit 3205e5f (engine rework) DS-ATGO with sync_stats matches one process
# on the first step (weights to 1e-7, same loss) but not from the second (loss 2.3138 vs 2.3275, augmentation
# off); the LIF run still matches.  Not yet found; the test stays to catch the fix.
DS_ATGO_REGRESSION = pytest.mark.xfail(reason="issue 14: DS-ATGO sync_stats 2x8 != 1x16 from step 2 since 3205e5f",
                                       strict=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", [(), pytest.param(DS_ATGO, marks=DS_ATGO_REGRESSION)],
                         ids=["lif", "ds_atgo_sync_stats"])
def test_two_processes_match_one(tmp_path, method):
    """With --sync_bn (and DS-ATGO's sync_stats) the statistics span the global batch, so 2 x 8 == 1 x 16,
    running thresholds included.  Without them each process normalises with its own half batch."""
    one_summary, one = launch(tmp_path / "one", 1, 16, *method)
    two_summary, two = launch(tmp_path / "two", 2, 8, *method)
    assert two_summary["num_processes"] == 2 and one_summary["num_processes"] == 1
    for name, value in one["model"].items():
        # Per-tensor max-norm tolerance: fp32 rounding differs between a reduction over 16 samples and two
        # over 8, and BN's backward amplifies it by cancellation (1e-4 relative in the stem conv's gradient).
        # A real mismatch (unsynced statistics, a flipped spike) moves weights by percents.
        difference = (two["model"][name].float() - value.float()).abs().max().item()
        assert difference <= 1e-3 * value.float().abs().max().item() + 1e-6, (name, difference)
        if name.endswith("running_thr"):
            torch.testing.assert_close(two["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert two_summary["test_accuracy"] == one_summary["test_accuracy"]
    assert two_summary["firing_rate"] == pytest.approx(one_summary["firing_rate"], rel=1e-4)
    assert two["history"][0]["train_loss"] == pytest.approx(one["history"][0]["train_loss"], rel=1e-5)


@pytest.mark.slow
def test_ds_atgo_local_statistics_differ_across_processes(tmp_path):
    """sync_stats off (the reference code's behaviour): each process takes theta_t from its own half batch,
    so the running thresholds drift from the one-process run (by about 1e-2 after 3 steps here)."""
    _, one = launch(tmp_path / "one", 1, 16, *DS_ATGO[:4])
    _, two = launch(tmp_path / "two", 2, 8, *DS_ATGO[:4])
    drift = max((two["model"][name] - value).abs().max().item()
                for name, value in one["model"].items() if name.endswith("running_thr"))
    assert drift > 1e-3
