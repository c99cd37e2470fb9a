"""The recipes as data: loading a recipe file, the published numbers of the reproduction table, and which
recipe command a run's config is.

A recipe file (``recipes/*.py``) defines ``config`` (a ``Config``) and optionally ``VANILLA`` and ``SMOKE``
(the changes of ``--vanilla`` and ``--smoke``).  A *recipe command* is a recipe file name and the flags a
user types after it, e.g. ``"a2sg_cifar100.py --surrogate.shape triangle"``; ``command_config`` turns it into
the run's ``Config`` as the recipe's command line would.

``PUBLISHED`` is the one machine-readable place of the papers' numbers: one row per command of
REPRODUCTION.md's table, with the published text, its value where it is a single comparable number, and its
source tag.  ``identify`` names the recipe command a finished run's config equals, plus the flags that make up
the rest of the difference, so runs are grouped by recipe without the runs recording it.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import re
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

from .config import (CommandLine, Config, ConfigError, apply_command_line, apply_smoke, read_command_line,
                     with_file)
from .datasets import EMBEDDED, modality_of

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
NOT_RECIPES = {"ablate.py"}  # scripts in recipes/ that run grids of recipes
# Fields a recipe command never fixes: which seed, and the variants themselves (they are flags of the command)
NOT_IDENTITY = {"seed", "vanilla", "smoke"}
TAG = "[reconstructed]"


@dataclass(frozen=True)
class Recipe:
    name: str  # file name, e.g. "ds_atgo_cifar10.py"
    config: Config
    vanilla: dict | None
    smoke: dict | None
    path: Path


@dataclass(frozen=True)
class Published:
    """One row of REPRODUCTION.md's table: ``text`` and ``source`` exactly as it prints them; ``value`` and
    ``std`` only where ``text`` is one number comparable with the run's top-1 (or mIoU), else None."""
    command: str
    paper: str
    method: str
    dataset: str
    model: str
    text: str
    source: str
    value: float | None = None
    std: float | None = None


ASGL = "not known; ASGL's reference point 76.76 (fixed width 0.5: 75.76)"
PUBLISHED = {row.command: row for row in [
    Published("ds_atgo_cifar10.py", "ds_atgo", "DS-ATGO", "CIFAR-10", "ResNet-19, 2", "96.91 ± 0.12", "[published]",
              96.91, 0.12),
    Published("ds_atgo_cifar100.py", "ds_atgo", "DS-ATGO", "CIFAR-100", "ResNet-19, 2", "80.59 ± 0.17", "[published]",
              80.59, 0.17),
    Published("ds_atgo_cifar10dvs.py", "ds_atgo", "DS-ATGO (TET)", "CIFAR10-DVS", "VGGSNN, 10", "83.70 ± 0.41",
              "[published]", 83.70, 0.41),
    Published("ds_atgo_imagenet.py", "ds_atgo", "DS-ATGO", "ImageNet", "ResNet-18, 4", "68.86 ± 0.25", "[published]",
              68.86, 0.25),
    Published("ds_atgo_cifar10.py --vanilla", "ds_atgo", "DS-ATGO ablation: vanilla (our arm [reconstructed])",
              "CIFAR-10", "ResNet-19, 2", "AT+TGO over vanilla +1.71", "[published]"),
    Published("ds_atgo_cifar10dvs.py --vanilla", "ds_atgo", "DS-ATGO ablation: vanilla (our arm [reconstructed])",
              "CIFAR10-DVS", "VGGSNN, 10", "AT+TGO over vanilla +2.30", "[published]"),
    Published("mpd_agl_cifar10.py", "mpd_agl", "MPD-AGL", "CIFAR-10", "ResNet-19, 2 (4)", "96.18 (96.35 at T=4)",
              "[published, DS-ATGO Table 1]", 96.18),
    Published("mpd_agl_cifar100.py", "mpd_agl", "MPD-AGL", "CIFAR-100", "ResNet-19, 2 (4)", "78.84 (79.72 at T=4)",
              "[published, DS-ATGO Table 1]", 78.84),
    Published("mpd_agl_cifar10dvs.py", "mpd_agl", "MPD-AGL", "CIFAR10-DVS", "VGGSNN, 10", "82.50",
              "[published, DS-ATGO Table 1]", 82.50),
    Published("mpd_agl_tinyimagenet.py", "mpd_agl", "MPD-AGL", "Tiny-ImageNet", "VGG-13, 4", "not available", "—"),
    Published("a2sg_cifar100.py", "a2sg", "A2SG (ramp + window search)", "CIFAR-100", "ResNet-19, 4", "81.05",
              "[paper, via a third-party summary]", 81.05),
    Published("a2sg_cifar100.py --surrogate.shape triangle", "a2sg", "ST-ASG (window search, TRI)", "CIFAR-100",
              "ResNet-19, 4", "80.46", "[paper, via a third-party summary]", 80.46),
    Published("a2sg_cifar10.py", "a2sg", "A2SG (ramp + window search)", "CIFAR-10", "ResNet-19, 4", "96.74",
              "[paper, via a third-party summary]", 96.74),
    Published("a2sg_cifar10.py --surrogate.shape triangle", "a2sg", "ST-ASG (window search, TRI)", "CIFAR-10",
              "ResNet-19, 4", "96.41", "[paper, via a third-party summary]", 96.41),
    Published("a2sg_resnet18_cifar100.py", "a2sg", "A2SG", "CIFAR-100", "ResNet-18 (CIFAR stem), 2", ASGL,
              "[reference code, ASGL release README] (not A2SG numbers)"),
    Published("a2sg_cifar10dvs.py", "a2sg", "A2SG", "CIFAR10-DVS", "VGGSNN, 10",
              "not known (evaluated, value not in the summary)", "—"),
    Published("a2sg_spikformer_cifar100.py", "a2sg", "A2SG", "CIFAR-100", "Spikformer-4-384, 4", "none available",
              "—"),
    Published("a2sg_segmentation.py", "a2sg", "A2SG", "ADE20K", "spiking FPN",
              "not known (evaluated, value not in the summary)", "—"),
    Published("cf_cifar10dvs.py", "circulate_firing", "circulate-firing", "CIFAR10-DVS", "VGGSNN, 10",
              "87 (setup unknown)", "[published, unverified]"),
    Published("cf_cifar10.py", "circulate_firing", "circulate-firing", "CIFAR-10", "ResNet-19, 4",
              "evaluated, value unknown", "—"),
    Published("cf_cifar100.py", "circulate_firing", "circulate-firing", "CIFAR-100", "ResNet-19, 4",
              "evaluated, value unknown", "—"),
    Published("cf_spikformer_cifar10.py", "circulate_firing", "circulate-firing", "CIFAR-10", "Spikformer-4-384, 4",
              "evaluated, value unknown", "—"),
    Published("cf_spikformer_cifar10dvs.py", "circulate_firing", "circulate-firing", "CIFAR10-DVS",
              "Spikformer-2-256, 16 (128×128)", "87 (setup unknown, as above)", "[published, unverified]"),
    Published("cf_sst2.py", "circulate_firing", "circulate-firing", "SST-2", "text Spikformer 6-768, 32",
              "81.31 (setup unknown)", "[published, unverified] (aggregator's number)"),
    Published("spikformer_sst2.py", "spikformer_text", "text Spikformer baseline (SpikeBERT's directly trained)",
              "SST-2", "text Spikformer 6-768, 32", "roughly 80–82 (take the exact value from SpikeBERT / CPG-PE)",
              "[paper, via summary]"),
]}
PAPERS = sorted({row.paper for row in PUBLISHED.values()})


def load_recipe(path: str | Path) -> Recipe:
    """A recipe file's ``config``, ``VANILLA`` and ``SMOKE`` (its sibling recipes importable, as when it runs)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no recipe file {path}; recipes are the .py files in {RECIPES_DIR}")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # recipes import their sibling recipes
    values = runpy.run_path(str(path))
    if not isinstance(values.get("config"), Config):
        raise ValueError(f"{path} defines no `config = Config(...)`; it is not a recipe")
    return Recipe(path.name, values["config"], values.get("VANILLA"), values.get("SMOKE"), path)


@functools.cache
def all_recipes(directory: Path = RECIPES_DIR) -> dict[str, Recipe]:
    return {p.name: load_recipe(p) for p in sorted(directory.glob("*.py")) if p.name not in NOT_RECIPES}


def layered_config(defaults: Config, line: CommandLine, vanilla: dict | None = None,
                   smoke: dict | None = None) -> Config:
    """A recipe's config under a parsed command line, in repro.config's precedence: recipe -> ``--config FILE``
    -> ``--vanilla`` (``vanilla``: the recipe's baseline changes) / ``--smoke`` (the embedded stand-in of the
    modality, then ``smoke``) -> explicit flags.  A ``--config`` file that holds a resolved config (its
    ``vanilla`` / ``smoke`` set) is not layered again."""
    base = with_file(defaults, line)
    asked = apply_command_line(base, line)
    if asked.vanilla and not line.file.get("vanilla"):
        if vanilla is None:
            raise ConfigError("this recipe has no vanilla baseline (--vanilla); it is one already")
        base = dataclasses.replace(base, **vanilla)
    if asked.smoke and not line.file.get("smoke"):
        base = apply_smoke(base, EMBEDDED[modality_of(asked.dataset)], **(smoke or {}))
    return apply_command_line(base, line)


@functools.cache
def command_config(command: str, directory: Path = RECIPES_DIR) -> Config:
    """The Config of a recipe command (``"ds_atgo_cifar10.py --vanilla --smoke"``), as its command line
    would resolve it (``layered_config``).  Cached: treat the result as read-only."""
    name, *argv = command.split()
    recipes = all_recipes(directory)
    if name not in recipes:
        raise ValueError(f"unknown recipe {name!r} in {command!r}; recipes: {', '.join(recipes)}")
    recipe = recipes[name]
    return layered_config(recipe.config, read_command_line(recipe.config, argv), recipe.vanilla, recipe.smoke)


def flag_differences(reference: Config, config: Config, ignore: Collection[str]) -> list[str]:
    """The flags that turn ``reference`` into ``config`` (fields in ``ignore`` left out), e.g.
    ``["--lr 0.05", "--surrogate.shape triangle"]``; an option the run lacks reads ``--GROUP.KEY (unset)``."""
    flags = []
    ours, theirs = reference.to_dict(), config.to_dict()
    for name, value in theirs.items():
        if name in ignore or name.endswith("_options") or ours[name] == value:
            continue
        flags.append(f"--{name} {' '.join(map(str, value)) if isinstance(value, (list, tuple)) else value}")
    for name in (n for n in theirs if n.endswith("_options") and n not in ignore):
        group, old, new = name[:-len("_options")], ours[name], theirs[name]
        flags += [f"--{group}.{key} {new[key] if key in new else '(unset)'}"
                  for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    return flags


def variants(recipe: Recipe) -> list[str]:
    """The recipe commands a run of ``recipe`` can be without further flags."""
    return [f"{recipe.name}{v}{s}" for v in ["", " --vanilla"][:1 + (recipe.vanilla is not None)]
            for s in ("", " --smoke")]


def identify(config: Config, ignore: Collection[str], directory: Path = RECIPES_DIR) -> tuple[str | None, list[str]]:
    """(recipe command, extra flags) of the recipe command closest to ``config`` among those with its model,
    neuron, surrogate and loss: fewest differing flags; a tie goes to the recipe whose output directory name is a
    folder of the run's path (runs/<name>, runs/smoke/<name>, the launcher's <output_dir>/<name>[+flags]/seed<N>),
    then to a command of ``PUBLISHED``.  (None, []) when no recipe shares those four.  ``ignore``: fields that do
    not change the experiment (run control: the engine's RESUMABLE_CHANGES).  Published commands with flags
    (``--surrogate.shape triangle``) are candidates as such.  Smoke runs of recipes that differ only in their
    dataset (identical configs) are told apart by that directory name only."""
    ignore = set(ignore) | NOT_IDENTITY
    recipes = all_recipes(directory)
    candidates = {c for recipe in recipes.values() for c in variants(recipe)}
    candidates |= {f"{c}{s}" for c in PUBLISHED for s in ("", " --smoke") if c.split()[0] in recipes}
    method = ("model", "neuron", "surrogate", "loss")

    def score(command: str):
        reference = command_config(command, directory)
        flags = flag_differences(reference, config, ignore)
        name = Path(reference.output_dir).name
        same_dir = any(part == name or part.startswith(f"{name}+") for part in Path(config.output_dir).parts)
        return len(flags), not same_dir, command.replace(" --smoke", "") not in PUBLISHED, command, flags

    scores = [score(c) for c in sorted(candidates)
              if all(getattr(command_config(c, directory), f) == getattr(config, f) for f in method)]
    if not scores:
        return None, []
    *_, command, flags = min(scores)
    return command, flags


def reconstructed_notes(recipe_name: str, directory: Path = RECIPES_DIR) -> list[str]:
    """The recipe's own statement of which parts are not the paper's: the sentences of its docstring and the
    commented lines of its code tagged ``[reconstructed]``, then those of the sibling recipes it imports."""
    notes, seen, queue = [], set(), [recipe_name]
    while queue:
        name = queue.pop(0)
        if name in seen or not (directory / name).is_file():
            continue
        seen.add(name)
        text = (directory / name).read_text()
        tree = ast.parse(text)
        docstring = ast.get_docstring(tree) or ""
        code = text.splitlines()[tree.body[0].end_lineno if docstring else 0:]
        sentences = [s for paragraph in re.split(r"\n\s*\n", docstring)
                     for s in re.split(r"(?<=\.)\s+", " ".join(paragraph.split()))]
        tagged = [s for s in sentences if TAG in s]
        tagged += [" ".join(line.split()) for line in code if TAG in line]
        notes += [f"{name}: {note}" for note in tagged]
        queue += [f"{module}.py" for module in re.findall(r"^from (\w+) import", text, re.M) if module != "repro"]
    return notes
