"""Runs of named configurations x seeds, resumable: each run writes ``OUTPUT_DIR/NAME/seed<SEED>/``; a run
with summary.json is never redone and one with only a checkpoint resumes from it, so re-running the same
command completes a grid.  Used by recipes/ablate.py and ``python -m repro.reproduce``."""
from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
from pathlib import Path

from .config import Config
from .engine import train


def run_grid(configs: dict[str, Config], seeds: list[int], output_dir: Path) -> list[dict]:
    """Train every (name, seed) not finished yet; returns each run's summary with ``arm`` (its name) and
    ``seed``."""
    rows = []
    for (name, config), seed in itertools.product(configs.items(), seeds):
        run_dir = output_dir / name / f"seed{seed}"
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            resume = (run_dir / "checkpoint.pt").exists()
            print(f"== {name}, seed {seed}{' (resuming)' if resume else ''}", flush=True)
            train(dataclasses.replace(config, seed=seed, output_dir=str(run_dir), resume=resume))
        else:
            print(f"== {name}, seed {seed}: done already, skipped", flush=True)
        rows.append({"arm": name, "seed": seed, **json.loads(summary_path.read_text())})
    return rows


def mean_std(values: list[float | None]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of the values that are not None; None
    when there are none."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
