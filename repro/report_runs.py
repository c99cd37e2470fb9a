"""Run directories for ``repro.report``: loading a run (model and data built by the engine's own
``build_model`` / ``build_dataset``), measuring it, and grouping runs that differ only in their seed.

A run directory is what ``repro.engine.train`` writes: config.json, metrics.jsonl, summary.json,
best_model.pt (weights of the best epoch by the task's headline metric) and checkpoint.pt.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .checkpoint import load_checkpoint
from .config import Config
from .datasets import modality_of, to_model_input
from .diagnostics import DEFAULT_MEASURES, collect_diagnostics
from .engine import RESUMABLE_CHANGES, build_dataset, build_model
from .losses import create_loss
from .sharpness import model_landscape, model_sharpness
from .traces import record_traces

CHECKPOINTS = {"best": "best_model.pt", "last": "checkpoint.pt"}
# Fields in which seed replicas of one setting may differ: run control, not the experiment.
SEED_FREE = (RESUMABLE_CHANGES - {"epochs", "pretrained", "limit_eval_batches"}) | {"seed"}


@dataclass
class Run:
    """A loaded run: directory, label, config (dict), metrics rows, summary, model (weights loaded), the
    weights file and its epoch, the test split as the engine built it and its modality."""
    path: Path
    label: str
    config: dict
    history: list
    summary: dict
    model: torch.nn.Module
    checkpoint: str
    epoch: int
    test_set: object
    modality: str

    @property
    def checkpoint_row(self) -> dict:
        """The metrics row of the measured weights' epoch ({} if the run has none)."""
        return next((row for row in self.history if row.get("epoch") == self.epoch), {})


def load_run(run_dir: str | Path, checkpoint: str = "best", label: str | None = None, device: str = "cpu") -> Run:
    """Config, metrics, summary and weights of a run (``best`` = best_model.pt, falling back to
    checkpoint.pt; ``last`` = checkpoint.pt), model and test split built as the engine builds them."""
    path = Path(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {tuple(CHECKPOINTS)}, got {checkpoint!r}")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a run directory (no config.json); pass the --output_dir of a run")
    values = json.loads(config_path.read_text())
    config = Config.from_dict(values, source=str(config_path))
    metrics = path / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    history = [json.loads(line) for line in lines if line.strip()]
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
    weights = path / CHECKPOINTS[checkpoint]
    if not weights.is_file() and checkpoint == "best":
        weights = path / CHECKPOINTS["last"]
    state = load_checkpoint(weights)
    test_set = build_dataset(config, "test")
    model = build_model(config, test_set)
    model.load_state_dict(state["model"])
    return Run(path, label or path.name, values, history, summary, model.to(device).eval(), weights.name,
               int(state["epoch"]), test_set, modality_of(config.dataset))


def fixed_batches(dataset, modality: str, batch_size: int, count: int, seed: int = 0) -> list:
    """The first ``count`` batches in dataset order (random transforms seeded), model-ready
    (``to_model_input``: event frames time-first), so runs compare on the same samples."""
    torch.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    batches = []
    for inputs, targets in loader:
        if len(batches) >= count:
            break
        batches.append((to_model_input(inputs, modality), targets))
    return batches


def run_loss(config: dict, model: torch.nn.Module):
    """The run's training loss (bound to the model if it needs it)."""
    loss = create_loss(config.get("loss", "ce"), **(config.get("loss_options") or {}))
    if hasattr(loss, "bind"):
        loss.bind(model)
    return loss


def measure(run: Run, args: argparse.Namespace) -> dict:
    """All diagnostics of one run (JSON-serialisable); ``traces`` (``repro.traces``) with ``--spikes``."""
    device = next(run.model.parameters()).device
    batch_size = args.batch_size or run.config.get("eval_batch_size", 64)
    test_batches = fixed_batches(run.test_set, run.modality, batch_size, args.batches, args.seed)
    result = collect_diagnostics(
        run.model, test_batches, measures=DEFAULT_MEASURES, mode=args.mode, window_rule=args.window_rule,
        window_fraction=args.window_fraction, histogram_bins=args.histogram_bins,
        histogram_range=tuple(args.histogram_range),
        energy_options={"enc_times_T": args.enc_times_T, "e_mac_pj": args.e_mac_pj, "e_ac_pj": args.e_ac_pj})
    if args.spikes:
        samples = fixed_batches(run.test_set, run.modality, args.spike_samples, 1, args.seed)[0][0]
        result["traces"] = record_traces(run.model, samples, neurons=args.raster_neurons, traced=args.traced_neurons,
                                         window_rule=args.window_rule, window_fraction=args.window_fraction)
    if args.sharpness or args.landscape:
        config = Config.from_dict(run.config)
        train_batches = fixed_batches(build_dataset(config, "train"), run.modality, args.sharpness_batch_size,
                                      args.sharpness_batches, args.seed)
        train_batches = [tuple(t.to(device) for t in batch) for batch in train_batches]
        loss = run_loss(run.config, run.model)
        if args.sharpness:
            result["sharpness"] = model_sharpness(run.model, train_batches, loss, iterations=args.sharpness_iterations,
                                                  seed=args.seed, trace_samples=args.trace_samples)
        if args.landscape:
            result["landscape"] = model_landscape(run.model, train_batches, loss, dims=args.landscape,
                                                  points=args.landscape_points, seed=args.seed)
    result["checkpoint"], result["checkpoint_epoch"] = run.checkpoint, run.epoch
    return result


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by their config without the seed and run-control fields (output folder, workers, ...),
    in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        key = json.dumps({k: v for k, v in run.config.items() if k not in SEED_FREE}, sort_keys=True)
        groups.setdefault(key, []).append(run)
    return list(groups.values())

