"""The reproduction table from finished runs, and the runs of a paper's table.

    python -m repro.reproduce runs/ds_atgo_*/seed*                   # table of these runs (or folders holding runs)
    python -m repro.reproduce --paper ds_atgo --seeds 1 2 3 --download  # run a paper's recipe commands x seeds
    accelerate launch -m repro.reproduce --paper a2sg --download      # the same on several GPUs

Collecting: every argument is a run directory (summary.json, config.json, metrics.jsonl) or a folder searched
for them; unfinished runs (no summary.json) are listed and left out.  Runs are grouped by the recipe command
their config is (``repro.recipes.identify``: a run that changed more than its seed and run control is grouped
under the recipe command plus its changed flags), and each group is one row: the published number and its
source tag (``repro.recipes.PUBLISHED``, the machine-readable form of REPRODUCTION.md's table), ours as
mean ± sample std over the runs of the final epoch's and of the best epoch's test top-1 (mIoU for
segmentation), the seeds, epochs, T, hardware, device-hours (training time x processes, summed over the runs)
and the code commits.  Written to ``--output`` (Markdown) and the CSV beside it.

Launching (``--paper`` or ``--commands``): each command x seed runs into ``--output_dir/<command>/seed<N>``
through ``repro.grid.run_grid`` (a finished run is skipped, an interrupted one resumes), then the table of
those runs is written to ``--output_dir/reproduction.md``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import re
from pathlib import Path

from .config import Config
from .engine import RESUMABLE_CHANGES
from .grid import mean_std, run_grid
from .recipes import PAPERS, PUBLISHED, command_config, identify

COLUMNS = ["recipe command", "data", "published", "source", "ours: final", "ours: best", "runs", "seeds", "epochs",
           "T", "hardware", "device-hours", "commit"]


def find_runs(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """(finished run directories, unfinished ones) under ``paths``; an argument that is neither a run nor a folder
    holding one is an error, raised before anything is read."""
    finished, unfinished = [], []
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory; pass run directories or folders holding them")
        configs = [path / "config.json"] if (path / "config.json").is_file() else sorted(path.rglob("config.json"))
        runs = [c.parent for c in configs if (c.parent / "metrics.jsonl").is_file()]
        if not runs:
            raise FileNotFoundError(f"{path} holds no run directory (config.json and metrics.jsonl)")
        for run in runs:
            (finished if (run / "summary.json").is_file() else unfinished).append(run)
    return sorted(set(finished)), sorted(set(unfinished))


def read_run(run_dir: Path) -> dict:
    """A run's summary, config and best epoch (the first epoch whose test metric equals the best)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    config = Config.from_dict(json.loads((run_dir / "config.json").read_text()), source=str(run_dir / "config.json"))
    metric = "test_miou" if "test_miou" in summary else "test_accuracy"
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    best_epoch = next((row["epoch"] for row in history if row[metric] == summary[f"best_{metric}"]), None)
    return {"dir": run_dir, "summary": summary, "config": config, "metric": metric, "best_epoch": best_epoch}


def group_runs(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs by the recipe command (plus changed flags) their config is; runs matching no recipe by their
    model, neuron, surrogate, loss and dataset."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        command, flags = identify(run["config"], RESUMABLE_CHANGES)
        c = run["config"]
        key = " ".join([command, *flags]) if command else \
            f"(no recipe) {c.model} {c.neuron} {c.surrogate} {c.loss} on {c.dataset}"
        run["command"] = command if not flags else None  # a published number applies to the exact command only
        groups.setdefault(key, []).append(run)
    return groups


def cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def table_rows(groups: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for key, runs in groups.items():
        metric = runs[0]["metric"]
        published = PUBLISHED.get(runs[0]["command"] or "")
        summaries = [r["summary"] for r in runs]
        final = [s[metric] for s in summaries]
        best = [s[f"best_{metric}"] for s in summaries]
        hardware = sorted({f"{s.get('num_processes', 1)} x {s.get('gpu') or s.get('device', '?')}" for s in summaries})
        hours = sum(s["train_time_s"] * s.get("num_processes", 1) for s in summaries) / 3600
        rows.append({
            "recipe command": key, "data": runs[0]["config"].dataset,
            "published": published.text if published else "", "source": published.source if published else "",
            "ours: final": cell(final), "ours: best": cell(best), "runs": len(runs),
            "seeds": " ".join(str(s["seed"]) for s in summaries),
            "epochs": " ".join(sorted({str(s["epochs"]) for s in summaries})),
            "T": " ".join(sorted({str(s["num_steps"]) for s in summaries})),
            "hardware": ", ".join(hardware), "device-hours": f"{hours:.3g}",
            "commit": " ".join(sorted({str(s.get("commit") or "not recorded") for s in summaries})),
            "metric": "mIoU" if metric == "test_miou" else "top-1",
            "final_mean_std": mean_std(final), "best_mean_std": mean_std(best),
        })
    return rows


def write_table(rows: list[dict], output: Path, unfinished: list[Path]) -> str:
    """Markdown to ``output`` and CSV (all columns, means and stds as numbers) beside it; returns the Markdown."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]).replace("|", "/") for c in COLUMNS) + " |" for row in rows]
    metrics = sorted({row["metric"] for row in rows})
    notes = [
        "", f"Ours: test {' / '.join(metrics)} (%) of the final and of the best epoch, mean ± sample std over the "
        "runs (one run: its value); our runs, not published numbers.  Published numbers and source tags: "
        "REPRODUCTION.md.  device-hours: training time (epochs with their evaluation) x processes, summed over "
        "the runs; hardware as the runs recorded it.",
    ]
    if unfinished:
        notes.append(f"Left out (unfinished, no summary.json): {', '.join(map(str, unfinished))}.")
    text = "# Reproduction table\n\n" + "\n".join(lines + notes) + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    with output.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS, "metric", "final_mean", "final_std", "best_mean", "best_std"])
        for row in rows:
            writer.writerow([*(row[c] for c in COLUMNS), row["metric"], *row["final_mean_std"], *row["best_mean_std"]])
    return text


def collect(paths: list[str | Path], output: Path) -> str:
    finished, unfinished = find_runs(paths)
    if not finished:
        raise FileNotFoundError(f"no finished run (summary.json) under {', '.join(map(str, paths))}")
    return write_table(table_rows(group_runs([read_run(r) for r in finished])), output, unfinished)


def directory_name(command: str) -> str:
    """``a2sg_cifar100.py --surrogate.shape triangle`` -> ``a2sg_cifar100+surrogate.shape=triangle``."""
    name = command.replace(".py", "").replace(" --", "+")
    return re.sub(r"[^\w.+=-]", "_", re.sub(r"\+([\w.]+) ", r"+\1=", name))


def launch(commands: list[str], seeds: list[int], output_dir: Path, smoke: bool = False,
           overrides: dict | None = None) -> str | None:
    """Run every command x seed (resumable), then write the table of those runs; returns it (on the main
    process; None on the others)."""
    configs = {directory_name(c): dataclasses.replace(command_config(c + " --smoke" * smoke), **(overrides or {}))
               for c in commands}
    rows = run_grid(configs, seeds, output_dir)
    if os.environ.get("RANK", "0") != "0":
        return None
    return collect([output_dir / r["arm"] / f"seed{r['seed']}" for r in rows], output_dir / "reproduction.md")


def main(argv: list[str] | None = None) -> str | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run directories, or folders searched for them")
    parser.add_argument("--output", default="reproduction.md", help="Markdown table (and the .csv beside it)")
    parser.add_argument("--paper", choices=PAPERS, help="launch: every recipe command of this paper's table rows")
    parser.add_argument("--commands", nargs="+", help="launch: these recipe commands (quote each)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2025, 2026, 2027])
    parser.add_argument("--output_dir", default="runs/reproduce", help="launch: where the runs go")
    parser.add_argument("--smoke", action="store_true", help="launch: each command with --smoke (seconds)")
    parser.add_argument("--data_root", help="launch: the datasets' folder")
    parser.add_argument("--download", action="store_true", help="launch: allow downloading missing datasets")
    args = parser.parse_args(argv)
    try:
        if args.paper or args.commands:
            if args.runs:
                raise ValueError("give run directories (to collect) or --paper / --commands (to launch), not both")
            commands = args.commands or [c for c, row in PUBLISHED.items() if row.paper == args.paper]
            for command in commands:
                command_config(command)  # an unknown recipe or flag fails here, before any run
            overrides = {"download": args.download, **({"data_root": args.data_root} if args.data_root else {})}
            text = launch(commands, args.seeds, Path(args.output_dir), args.smoke, overrides)
        elif args.runs:
            text = collect(args.runs, Path(args.output))
        else:
            raise ValueError("give run directories to collect, or --paper / --commands to launch runs")
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    if text:
        print(text)
    return text


if __name__ == "__main__":
    main()
