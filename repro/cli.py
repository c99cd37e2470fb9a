"""Entry point shared by the recipes: ``main(recipe_config, embedded_dataset)``.

A recipe states its hyperparameters as a ``Config`` and calls ``main``; the command line
overrides any field, and ``--smoke`` swaps in the embedded stand-in of the recipe's modality.
"""
from __future__ import annotations

from .config import Config, apply_smoke, parse_args
from .engine import train


def main(defaults: Config, embedded_dataset: str = "digits", smoke_overrides: dict | None = None,
         description: str | None = None, argv: list[str] | None = None) -> dict:
    config = parse_args(defaults, argv, description)
    if config.smoke:
        config = apply_smoke(config, embedded_dataset)
        for key, value in (smoke_overrides or {}).items():
            setattr(config, key, value)
    return train(config)
