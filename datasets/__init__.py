"""Datasets by name: ``create_dataset(name, split, root=..., download=..., **kw)``.

Every dataset object has ``num_classes``, ``in_channels`` and ``modality`` (``static``,
``event``, ``segmentation`` or ``text``); ``in_memory = True`` marks cheap items (no loader workers).
Items: static ``(float [C, H, W], int)``; event ``(float [T, C, H, W], int)`` (batches are
``[B, T, ...]``; :func:`to_model_input` makes them time-first); segmentation
``(float [3, H, W], long [H, W])`` with 255 = ignore, and ``classes`` (names by label id) and ``palette``
(uint8 [K, 3]) for figures; text ``(long [L] token ids, int)``, padded with id 0,
whose ``in_channels`` is the vocabulary size.  Embedded stand-ins (:data:`EMBEDDED`) need no
root and no network; the others read ``root`` and download only with ``download=True``.
"""
from __future__ import annotations

import torch

from ..registry import Registry
from .cifar import CIFAR10, CIFAR100
from .cifar10_dvs import CIFAR10DVS
from .digits import IMAGE_SIZE as DIGITS_SIZE, Digits
from .files import CorruptFileError, DatasetNotFoundError
from .folders import ImageNet, TinyImageNet
from .nd_digits import NDDigits
from .segmentation import ADE20K, VOC2012
from .shapes_seg import ShapesSeg
from .text import HUB_DATASETS
from .text_embedded import SentimentEmbedded

DATASETS = Registry("dataset")
MODALITIES = ("static", "event", "segmentation", "text")
EMBEDDED = {"static": "digits", "event": "nd_digits", "segmentation": "shapes_seg", "text": "sentiment_embedded"}
for _name, _dataset in {"cifar10": CIFAR10, "cifar100": CIFAR100, "cifar10_dvs": CIFAR10DVS,
                        "tiny_imagenet": TinyImageNet, "imagenet": ImageNet, "voc2012": VOC2012,
                        "ade20k": ADE20K, "nd_digits": NDDigits, "shapes_seg": ShapesSeg,
                        "sentiment_embedded": SentimentEmbedded, **HUB_DATASETS}.items():
    DATASETS.register(_name)(_dataset)
del _name, _dataset


@DATASETS.register("digits")
def _digits(split: str = "train", root: str | None = None, download: bool = False, augment: bool | None = None,
            size: int = DIGITS_SIZE):
    """Embedded; ``root`` and ``download`` are accepted for a uniform call and unused."""
    return Digits(split, augment=augment, size=size)


_digits.modality = Digits.modality


def create_dataset(name: str, split: str = "train", root: str = "data", download: bool = False, **kwargs):
    return DATASETS.create(name, split=split, root=root, download=download, **kwargs)


def modality_of(name: str) -> str:
    """The modality of a registered dataset, read from its class (loads no data)."""
    return DATASETS.get(name).modality


def to_model_input(batch: torch.Tensor, modality: str) -> torch.Tensor:
    """A collated input batch as the models take it: event batches [B, T, C, H, W] become time-first
    [T, B, C, H, W]; static and segmentation batches [B, C, H, W] and text batches [B, L] are returned
    unchanged."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose one of {list(MODALITIES)}")
    if modality != "event":
        return batch
    if batch.dim() != 5:
        raise ValueError(f"event batches must be [B, T, C, H, W], got shape {tuple(batch.shape)}")
    return batch.transpose(0, 1).contiguous()


__all__ = ["ADE20K", "CIFAR10", "CIFAR100", "CIFAR10DVS", "DATASETS", "EMBEDDED", "CorruptFileError",
           "DatasetNotFoundError", "Digits", "ImageNet", "NDDigits", "SentimentEmbedded", "ShapesSeg", "TinyImageNet",
           "VOC2012",
           "create_dataset", "modality_of", "to_model_input"]
