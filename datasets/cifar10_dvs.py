"""CIFAR10-DVS (docs/methods.md section "Data"): 10 classes of 128x128 DVS recordings read
with tonic 1.7's CIFAR10-DVS reader (``tonic.io.read_aedat4``, needs the ``aedat`` package).

- Layout: ``<root>/CIFAR10DVS/<class>/*.aedat4`` (what tonic's ``CIFAR10DVS(save_to=root)`` unpacks).
  ``download=True`` with missing data calls tonic, which downloads ``CIFAR10DVS.zip`` from figshare
  and extracts it; ``download=False`` never constructs tonic's dataset (it would download whenever
  ``CIFAR10DVS.zip`` or the 1000 ``.aedat4`` files are absent), it only lists the class folders.
- Order and split: files sorted by class (tonic's class order) then by path, because tonic's
  ``os.walk`` order is filesystem-dependent.  Per class, the first ceil(0.9 n) files train and the
  rest test (``split_mode='ordered'`` [reference code, spikingjelly ``split_to_train_test_set``
  on its sorted folder order]) or a seeded per-class shuffle first (``random``).  The split used is
  in ``split_description``.
- Frames: :func:`~repro.datasets.transforms.events_to_frames` (``num_frames`` equal-count frames,
  each divided by its max, resized to ``size`` x ``size``).  They are cached as ``.npy`` under
  ``<root>/CIFAR10DVS_frames/<settings>/`` on first use (``cache``), written atomically, so later
  epochs and other processes never decode events again.
- Train augmentation: :class:`~repro.datasets.transforms.FlipRoll` (flip p 0.5, roll +-5 px).
Items: (float [T, 2, size, size], int label).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .files import corrupt, not_found
from .transforms import RESIZE_MODES, FlipRoll, check_choice, events_to_frames

FOLDER = "CIFAR10DVS"
SPLITS = ("train", "test")
SPLIT_MODES = ("ordered", "random")
HOW_TO_GET = ("pass download=True (--download true) to let tonic fetch CIFAR10DVS.zip from figshare, or "
              "download it yourself (https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671) and "
              "extract the ten class archives into <root>/CIFAR10DVS/")


def read_events(path: str | Path) -> np.ndarray:
    """One recording as tonic's ``CIFAR10DVS.__getitem__`` reads it: structured array t (uint64, us),
    x, y (uint16), p (bool)."""
    from tonic.io import read_aedat4

    try:
        events = read_aedat4(str(path))
    except Exception as error:  # the aedat decoder raises RuntimeError, tonic a bare Exception
        raise corrupt(path, error, "delete it and extract its class archive again") from error
    events.dtype.names = ("t", "x", "y", "p")
    return events


class CIFAR10DVS(Dataset):
    """See the module docstring.  ``num_frames`` = T (10), ``size`` output side (48; None keeps 128),
    ``resize`` ``pil`` (reference path) or ``bilinear``, ``augment`` (default: train only)."""

    num_classes = 10
    in_channels = 2
    modality = "event"

    def __init__(self, split: str = "train", root: str = "data", download: bool = False, num_frames: int = 10,
                 size: int | None = 48, resize: str = "pil", augment: bool | None = None, flip_p: float = 0.5,
                 max_shift: int = 5, split_mode: str = "ordered", train_fraction: float = 0.9, split_seed: int = 0,
                 cache: bool = True):
        from tonic.datasets import CIFAR10DVS as TonicCIFAR10DVS

        check_choice("split", split, SPLITS)
        check_choice("split_mode", split_mode, SPLIT_MODES)
        check_choice("resize", resize, RESIZE_MODES)
        if not 0.0 < train_fraction < 1.0 or num_frames < 1 or (size is not None and size < 1):
            raise ValueError(f"need 0 < train_fraction < 1, num_frames >= 1 and size >= 1 or None; got "
                             f"{train_fraction}, {num_frames}, {size}")
        self.root = Path(root)
        self.sensor_size = TonicCIFAR10DVS.sensor_size
        self.classes = tuple(sorted(TonicCIFAR10DVS.classes, key=TonicCIFAR10DVS.classes.get))
        self.num_frames, self.size, self.resize = num_frames, size, resize
        by_class = self._list_files()
        if by_class is None and download:
            TonicCIFAR10DVS(str(self.root))
            by_class = self._list_files()
        if by_class is None:
            raise not_found("cifar10_dvs", self.root, [self.root / FOLDER / name for name in self.classes],
                            f"  {FOLDER}/<class>/*.aedat4   for each class in {', '.join(self.classes)}", HOW_TO_GET)
        self.files, self.targets = [], []
        rng = np.random.default_rng(split_seed)
        for label, files in enumerate(by_class):
            order = rng.permutation(len(files)) if split_mode == "random" else np.arange(len(files))
            cut = math.ceil(len(files) * train_fraction)
            chosen = order[:cut] if split == "train" else order[cut:]
            self.files += [files[i] for i in chosen]
            self.targets += [label] * len(chosen)
        self.split_description = (f"{split_mode} per-class split, train = first ceil({train_fraction} n) files "
                                  f"of each class" + (f" after a seed-{split_seed} shuffle" if split_mode == "random"
                                                      else " in sorted order"))
        size_name = "native" if size is None else f"{size}px"
        self.cache_dir = self.root / f"{FOLDER}_frames" / f"T{num_frames}_{size_name}_{resize}" if cache else None
        self.augment = FlipRoll(flip_p, max_shift) if (split == "train" if augment is None else augment) else None

    def _list_files(self) -> list[list[Path]] | None:
        """Sorted ``.aedat4`` paths per class; None when nothing is there; an error naming the empty
        class folders when only some are there (a partial extraction)."""
        folder = self.root / FOLDER
        files = sorted(folder.rglob("*.aedat4")) if folder.is_dir() else []
        if not files:
            return None
        by_class = {name: [] for name in self.classes}
        for path in files:
            if path.parent.name not in by_class:
                raise ValueError(f"{path} is not inside a CIFAR-10 class folder ({', '.join(self.classes)})")
            by_class[path.parent.name].append(path)
        empty = [folder / name for name, paths in by_class.items() if not paths]
        if empty:
            raise not_found("cifar10_dvs", self.root, empty,
                            f"  {FOLDER}/<class>/*.aedat4   for each class in {', '.join(self.classes)}",
                            "the extraction looks incomplete; " + HOW_TO_GET)
        return [by_class[name] for name in self.classes]

    def frames(self, index: int) -> torch.Tensor:
        """Un-augmented frames [T, 2, size, size] of sample ``index`` (from the cache when present)."""
        path = self.files[index]
        cached = self.cache_dir / path.parent.name / f"{path.stem}.npy" if self.cache_dir else None
        if cached is not None and cached.exists():
            try:
                return torch.from_numpy(np.load(cached))
            except (OSError, ValueError, EOFError) as error:
                raise corrupt(cached, error, "delete it; it is rebuilt from the events on the next pass") from error
        frames = events_to_frames(read_events(path), self.sensor_size, self.num_frames, self.size, self.resize)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f".{cached.stem}.{os.getpid()}.partial.npy")
            np.save(partial, frames.numpy())
            os.replace(partial, cached)  # atomic: concurrent workers never read half a file
        return frames

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        frames = self.frames(index)
        return (self.augment(frames) if self.augment else frames), self.targets[index]
