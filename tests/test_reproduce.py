"""The reproduction table from run directories: recipe identification, the published numbers' one
machine-readable place (checked against REPRODUCTION.md), the table's means and stds against the summaries,
and the launcher's resumable grid.  Run directories are written in the engine's file format (config.json,
metrics.jsonl, summary.json) instead of trained, to keep this file fast; repro.grid's real training is covered
by tests/test_ablation.py."""
import ast
import csv
import dataclasses
import json
import statistics
from pathlib import Path

import pytest

from repro import grid, reproduce
from repro.engine import RESUMABLE_CHANGES
from repro.recipes import PUBLISHED, command_config, identify

ROOT = Path(__file__).parents[1]


def published_rows_of_reproduction_md() -> dict[str, list[str]]:
    """recipe cell (without backticks) -> the row's cells, from the first table of REPRODUCTION.md."""
    text = (ROOT / "REPRODUCTION.md").read_text()
    table = text[text.index("| recipe | method |"):].split("\n\n")[0].splitlines()[2:]
    rows = [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in table]
    return {row[0].strip("`"): row for row in rows}


def test_published_numbers_are_those_of_reproduction_md():
    rows = published_rows_of_reproduction_md()
    assert sorted(rows) == sorted(PUBLISHED)
    for command, row in rows.items():
        entry = PUBLISHED[command]
        assert row[1:6] == [entry.method, entry.dataset, entry.model, entry.text, entry.source], command
        if entry.value is not None:  # the comparable value is the one the text starts with, and the recipe's
            assert entry.text.startswith(f"{entry.value:.2f}"), command  # docstring states it (and its std)
            docstring = ast.get_docstring(ast.parse((ROOT / "recipes" / command.split()[0]).read_text()))
            assert all(f"{v:.2f}" in docstring for v in (entry.value, entry.std) if v is not None), command
        assert command_config(command).dataset  # every command builds a config


def test_identify_names_the_recipe_command_and_the_changed_flags():
    vanilla = command_config("ds_atgo_cifar100.py --vanilla")
    changed = dataclasses.replace(vanilla, lr=0.05, seed=7, epochs=3, output_dir="elsewhere", num_workers=2)
    assert identify(changed, RESUMABLE_CHANGES) == ("ds_atgo_cifar100.py --vanilla", ["--lr 0.05"])
    st_asg = command_config("a2sg_cifar10.py --surrogate.shape triangle")
    assert identify(st_asg, RESUMABLE_CHANGES) == ("a2sg_cifar10.py --surrogate.shape triangle", [])
    options = dataclasses.replace(st_asg, surrogate_options={**st_asg.surrogate_options, "w0": 1.0})
    assert identify(options, RESUMABLE_CHANGES) == ("a2sg_cifar10.py --surrogate.shape triangle",
                                                    ["--surrogate.w0 1.0"])
    assert identify(dataclasses.replace(vanilla, loss="tet_mse"), RESUMABLE_CHANGES) == (None, [])
    smoke = command_config("ds_atgo_cifar100.py --smoke")  # the same config as ds_atgo_cifar10.py --smoke
    for folder, command in [("runs/smoke/ds_atgo_cifar100", "ds_atgo_cifar100.py --smoke"),
                            ("out/ds_atgo_cifar10/seed1", "ds_atgo_cifar10.py --smoke"),
                            ("out/ds_atgo_cifar100+vanilla/seed2", "ds_atgo_cifar100.py --smoke")]:
        assert identify(dataclasses.replace(smoke, output_dir=folder), RESUMABLE_CHANGES)[0] == command


def write_run(run_dir: Path, config, accuracies: list[float], train_time_s: float, gpu: str = "cpu") -> dict:
    """A finished run directory in the engine's format; returns its summary."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    rows = [{"epoch": e + 1, "test_accuracy": a, "best_test_accuracy": max(accuracies[:e + 1])}
            for e, a in enumerate(accuracies)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"test_accuracy": accuracies[-1], "best_test_accuracy": max(accuracies), "epochs": len(accuracies),
               "num_steps": config.num_steps, "seed": config.seed, "train_time_s": train_time_s,
               "num_processes": 1, "device": "cpu", "gpu": gpu, "commit": "abc123"}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return summary


def markdown_rows(text: str) -> dict[str, dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}


def test_table_of_two_recipes_by_two_seeds(tmp_path):
    commands = {"ds_atgo_cifar10.py": [[50.0, 61.5], [58.0, 57.25]],
                "a2sg_cifar100.py --surrogate.shape triangle": [[30.0, 44.0], [41.0, 39.5]]}
    summaries = {}
    for command, runs in commands.items():
        for seed, accuracies in zip((1, 2), runs):
            config = dataclasses.replace(command_config(command), seed=seed, epochs=2)
            run_dir = tmp_path / "runs" / reproduce.directory_name(command) / f"seed{seed}"
            summaries.setdefault(command, []).append(write_run(run_dir, config, accuracies, 1800.0 * seed))
    unfinished = tmp_path / "runs" / "ds_atgo_cifar10" / "seed3"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps(command_config("ds_atgo_cifar10.py").to_dict()))
    (unfinished / "metrics.jsonl").write_text("")

    text = reproduce.main([str(tmp_path / "runs"), "--output", str(tmp_path / "table.md")])
    assert (tmp_path / "table.md").read_text() == text
    rows = markdown_rows(text)
    assert sorted(rows) == sorted(commands)
    for command, runs in summaries.items():
        row, published = rows[command], PUBLISHED[command]
        final = [s["test_accuracy"] for s in runs]
        best = [s["best_test_accuracy"] for s in runs]
        assert row["ours: final"] == f"{statistics.fmean(final):.2f} ± {statistics.stdev(final):.2f}"
        assert row["ours: best"] == f"{statistics.fmean(best):.2f} ± {statistics.stdev(best):.2f}"
        assert (row["published"], row["source"]) == (published.text, published.source)
        assert (row["seeds"], row["epochs"], row["runs"]) == ("1 2", "2", "2")
        assert row["T"] == str(command_config(command).num_steps)
        assert row["device-hours"] == "1.5" and row["hardware"] == "1 x cpu" and row["commit"] == "abc123"
    assert f"unfinished, no summary.json): {unfinished}" in text
    table = {r["recipe command"]: r for r in csv.DictReader((tmp_path / "table.csv").open())}
    final = [s["test_accuracy"] for s in summaries["ds_atgo_cifar10.py"]]
    assert float(table["ds_atgo_cifar10.py"]["final_std"]) == pytest.approx(statistics.stdev(final))


def test_launcher_runs_a_papers_commands_by_seeds_and_resumes(tmp_path, monkeypatch):
    """Each (command, seed) trains once with the command's --smoke config; a second launch skips the finished
    runs and resumes the one that has only its checkpoint."""
    trained = []

    def train(config):
        trained.append(config)
        if not config.resume:
            write_run(Path(config.output_dir), config, [10.0 * config.seed], 1.0)
        else:
            (Path(config.output_dir) / "kept.json").rename(Path(config.output_dir) / "summary.json")

    monkeypatch.setattr(grid, "train", train)
    argv = ["--commands", "mpd_agl_cifar10.py", "mpd_agl_cifar10.py --vanilla", "--smoke", "--seeds", "1", "2",
            "--output_dir", str(tmp_path / "out")]
    text = reproduce.main(argv)
    assert len(trained) == 4
    for config in trained:
        command = "mpd_agl_cifar10.py --vanilla" if config.vanilla else "mpd_agl_cifar10.py"
        expected = command_config(command + " --smoke")
        assert dataclasses.replace(config, seed=expected.seed, output_dir=expected.output_dir) == expected
    rows = markdown_rows(text)
    assert sorted(rows) == ["mpd_agl_cifar10.py --smoke", "mpd_agl_cifar10.py --vanilla --smoke"]
    assert rows["mpd_agl_cifar10.py --smoke"]["ours: final"] == f"{15:.2f} ± {statistics.stdev([10, 20]):.2f}"

    run = tmp_path / "out" / "mpd_agl_cifar10+vanilla" / "seed2"
    (run / "summary.json").rename(run / "kept.json")
    (run / "checkpoint.pt").write_bytes(b"")
    trained.clear()
    assert reproduce.main(argv) == text
    assert [(c.output_dir, c.resume) for c in trained] == [(str(run), True)]


def test_bad_arguments_fail_before_any_run(tmp_path):
    with pytest.raises(SystemExit, match="unknown recipe 'nope.py'"):
        reproduce.main(["--commands", "nope.py"])
    with pytest.raises(SystemExit, match="holds no run directory"):
        reproduce.main([str(tmp_path)])
