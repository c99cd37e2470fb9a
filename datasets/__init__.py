"""Datasets by name: ``create_dataset(name, split, root=..., download=..., **kw)``.

Every dataset object has ``num_classes``, ``in_channels`` and ``modality`` (``static``,
``event`` or ``segmentation``).  Embedded stand-ins need no root and no network.
"""
from __future__ import annotations

from ..registry import Registry
from .digits import Digits

DATASETS = Registry("dataset")


@DATASETS.register("digits")
def _digits(split: str = "train", root: str | None = None, download: bool = False, augment: bool | None = None):
    """Embedded; ``root`` and ``download`` are accepted for a uniform call and unused."""
    return Digits(split, augment=augment)


def create_dataset(name: str, split: str = "train", root: str | None = None, download: bool = False, **kwargs):
    return DATASETS.create(name, split=split, root=root, download=download, **kwargs)


__all__ = ["DATASETS", "Digits", "create_dataset"]
