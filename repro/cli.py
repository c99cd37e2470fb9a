"""Entry point shared by the recipes: ``main(config, vanilla=..., smoke=...)``.

A recipe states its hyperparameters as a ``Config`` and calls ``main``.  The command line overrides
any field; ``--vanilla`` first applies the recipe's ``vanilla`` changes (the paper's baseline: the
method switched off), so explicit flags still win; ``--smoke`` swaps in the embedded stand-in of the
recipe's modality with a tiny budget and the recipe's ``smoke`` changes (e.g. a narrower model).
"""
from __future__ import annotations

import dataclasses
import sys

from .config import Config, apply_smoke, parse_args
from .datasets import EMBEDDED, modality_of
from .engine import train


def main(defaults: Config, vanilla: dict | None = None, smoke: dict | None = None,
         description: str | None = None, argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    config = parse_args(defaults, argv, description)
    if config.vanilla:
        if vanilla is None:
            raise SystemExit("this recipe has no vanilla baseline (--vanilla); it is one already")
        config = parse_args(dataclasses.replace(defaults, **vanilla), argv, description)
    if config.smoke:
        config = apply_smoke(config, EMBEDDED[modality_of(config.dataset)], **(smoke or {}))
    return train(config)
