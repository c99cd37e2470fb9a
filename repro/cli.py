"""Entry point shared by the recipes: ``main(config, vanilla=..., smoke=...)``.

A recipe states its hyperparameters as a ``Config`` and calls ``main``.  Precedence (see
``repro.config``): recipe -> ``--config FILE`` -> ``--vanilla`` (the recipe's ``vanilla`` changes: the
paper's baseline, the method switched off) / ``--smoke`` (the embedded stand-in of the recipe's modality,
a tiny budget, the recipe's ``smoke`` changes, output under ``runs/smoke/``) -> explicit flags.

Errors a user can fix (a bad setting, missing data, an occupied run directory, a non-finite run) print
one line ``error: ...`` and exit with code 2; other exceptions are bugs and keep their traceback, as does
every error with ``--debug``.  ``accelerate launch`` adds its own traceback for any failed process
unless given ``-q``.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from .checkpoint import CorruptCheckpointError
from .config import CommandLine, Config, read_command_line
from .datasets import CorruptFileError
from .engine import train
from .recipes import layered_config

# ValueError covers ConfigError and the checks of the engine, registries and datasets; OSError the data
# and run directory (DatasetNotFoundError, FileExistsError, a locked run); FloatingPointError a diverged run.
USER_ERRORS = (ValueError, OSError, FloatingPointError, CorruptFileError, CorruptCheckpointError)


def say(message: str) -> None:
    """Print once per machine (before accelerate is up, every process runs this code)."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


def resolve(defaults: Config, line: CommandLine, vanilla: dict | None = None, smoke: dict | None = None) -> Config:
    """The run's config from the recipe's ``defaults`` and the parsed command line."""
    config = layered_config(defaults, line, vanilla, smoke)
    if config.smoke:
        say("smoke run: a few batches on embedded data check the plumbing, not learning (accuracy means nothing)")
    warmup_given = "warmup_epochs" in line.fields or "warmup_epochs" in line.file
    if config.warmup_epochs >= config.epochs >= 1 and not warmup_given:
        say(f"warm-up shortened from {config.warmup_epochs} to {config.epochs - 1} epoch(s) to fit --epochs "
            f"{config.epochs}")
        config = dataclasses.replace(config, warmup_epochs=config.epochs - 1)
    return config


def main(defaults: Config, vanilla: dict | None = None, smoke: dict | None = None,
         description: str | None = None, argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    try:
        line = read_command_line(defaults, argv, description)
        return train(resolve(defaults, line, vanilla, smoke))
    except USER_ERRORS as error:
        if "--debug" in argv:
            raise
        say(f"error: {' '.join(str(error).split())}")
        raise SystemExit(2) from None
