"""The code in README.md and docs/*.md stays true.  Convention: every ```python block is executed as
written (each on its own, from the repository root); ```bash blocks are commands (some train for hours)
and are not run, but every recipe command in them is parsed by that recipe's command line, so a
renamed or mistyped flag fails here.  Other fences must be ```text (or ```bash / ```python)."""
import re
import runpy
import shlex
from pathlib import Path

import pytest

from repro.config import read_command_line

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", ROOT / "REPRODUCTION.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
BLOCKS = [(path, language, code) for path in DOCS for language, code in FENCE.findall(path.read_text())]
PYTHON = [(path, code) for path, language, code in BLOCKS if language == "python"]
RECIPE_COMMAND = re.compile(r"(?:accelerate launch|python)\b.*?(recipes/\w+\.py)(.*)")  # first script named


def test_every_fence_names_a_known_language():
    assert {language for _, language, _ in BLOCKS} <= {"python", "bash", "text"}


@pytest.mark.parametrize("path,code", PYTHON, ids=[f"{p.relative_to(ROOT)}:{i}" for i, (p, _) in enumerate(PYTHON)])
def test_python_block_runs_as_written(path, code, monkeypatch):
    monkeypatch.chdir(ROOT)
    exec(compile(code, str(path), "exec"), {"__name__": "__docs__"})


def recipe_commands():
    for path, language, code in BLOCKS:
        if language != "bash":
            continue
        for line in code.replace("\\\n", " ").splitlines():
            match = RECIPE_COMMAND.search(line.split(" #")[0])
            if match and match.group(1) != "recipes/ablate.py":  # ablate.py has its own command line
                yield path, match.group(1), shlex.split(match.group(2).split("&&")[0])


COMMANDS = list(recipe_commands())


@pytest.mark.parametrize("path,recipe,argv", COMMANDS,
                         ids=[f"{p.relative_to(ROOT)}:{i}" for i, (p, _, _) in enumerate(COMMANDS)])
def test_recipe_commands_in_bash_blocks_parse(path, recipe, argv, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))  # recipes import their siblings
    module = runpy.run_path(str(ROOT / recipe))
    read_command_line(module["config"], argv, module.get("__doc__"))
