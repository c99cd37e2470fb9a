"""The ablation runner: a 2x2 grid, its table, resuming a half-finished grid, and the A2SG paper's arms."""
import csv
import json
import runpy
import statistics
from pathlib import Path

ABLATE = runpy.run_path(str(Path(__file__).parents[1] / "recipes" / "ablate.py"))

BASE = '''
from repro.config import Config
config = Config(model="resnet19", model_options={"width": 0.125}, num_steps=2, dataset="digits", batch_size=16,
                eval_batch_size=120, epochs=1, lr=0.05, limit_train_batches=2, limit_eval_batches=1)
'''


def test_two_by_two_grid_table_and_resume(tmp_path):
    base = tmp_path / "base.py"
    base.write_text(BASE)
    argv = ["--base", str(base), "--neurons", "lif", "plif", "--surrogates", "atan", "triangle", "--seeds", "1", "2",
            "--full_budget", "--output_dir", str(tmp_path / "grid")]
    ABLATE["main"](argv)
    runs = sorted(p.parent for p in (tmp_path / "grid").rglob("summary.json"))
    assert len(runs) == 8
    rows = list(csv.DictReader((tmp_path / "grid" / "ablation.csv").open()))
    assert [r["arm"] for r in rows] == ["lif+atan+ce", "lif+triangle+ce", "plif+atan+ce", "plif+triangle+ce"]
    for row in rows:
        accs = [json.loads((tmp_path / "grid" / row["arm"] / f"seed{s}" / "summary.json").read_text())["test_accuracy"]
                for s in (1, 2)]
        assert float(row["test_accuracy_mean"]) == pytest_approx(statistics.fmean(accs))
        assert float(row["test_accuracy_std"]) == pytest_approx(statistics.stdev(accs))
    assert "± " in (tmp_path / "grid" / "ablation.md").read_text()
    assert (tmp_path / "grid" / "ablation.png").stat().st_size > 5000

    # half-finished grid: one run killed before its first checkpoint, one after its last; the rest are kept
    fresh = tmp_path / "grid" / "plif+triangle+ce" / "seed2"
    (fresh / "summary.json").unlink()
    (fresh / "checkpoint.pt").unlink()
    resumed = tmp_path / "grid" / "lif+atan+ce" / "seed1"
    (resumed / "summary.json").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "grid").rglob("summary.json")}
    checkpoint_stamp = (resumed / "checkpoint.pt").stat().st_mtime_ns
    ABLATE["main"](argv)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert (fresh / "summary.json").exists() and (resumed / "summary.json").exists()
    assert (resumed / "checkpoint.pt").stat().st_mtime_ns == checkpoint_stamp  # resumed, not retrained


def test_a2sg_paper_arms_build_the_papers_surrogates(tmp_path):
    from argparse import Namespace

    from repro.config import Config
    from repro.surrogates import create_surrogate

    configs = ABLATE["grid"](Namespace(arms=["a2sg_paper", "a2sg_reconstructed"], neurons=None, surrogates=None,
                                       losses=None), Config())
    built = {name: create_surrogate(c.surrogate, **c.surrogate_options) for name, c in configs.items()}
    assert {name: (s.shape_name, s.adapt, s.statistics) for name, s in built.items()} == {
        "a2sg_fixed_tri": ("triangle", "none", "paper"), "a2sg_fixed_box": ("box", "none", "paper"),
        "a2sg_st_asg": ("triangle", "search", "paper"), "a2sg": ("ramp", "search", "paper"),
        "a2sg_reconstructed": ("asym_triangle", "sgv_tgc", "reconstructed")}


def pytest_approx(value):
    import pytest

    return pytest.approx(value, rel=1e-5, abs=1e-9)
