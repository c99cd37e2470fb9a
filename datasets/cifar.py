"""CIFAR-10 and CIFAR-100 (docs/methods.md section "Data") read from the official python pickles.

Layout under ``root`` (what torchvision's downloader extracts): ``cifar-10-batches-py/data_batch_1..5``
and ``test_batch``; ``cifar-100-python/train`` and ``test``.  ``download=True`` fetches and
md5-checks the archive with torchvision; otherwise the network is never touched.

Transforms:
- train [reference code]: RandomCrop(32, padding 4) -> HorizontalFlip -> AutoAugment (CIFAR-10 policy;
  option ``auto_augment``) -> ToTensor -> Normalize -> Cutout(``cutout_length``) only if ``cutout``;
- test: ToTensor -> Normalize.
- Normalisation: CIFAR-10 mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010) [reference code,
  the widely copied std values]; CIFAR-100 mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564,
  0.2762) [reconstructed]; override with ``mean`` / ``std``.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .files import corrupt, require
from .transforms import AUTO_AUGMENT_POLICIES, check_choice, check_stats, image_transform

SPLITS = ("train", "test")


class _CIFAR(Dataset):
    """Items: (float [3, 32, 32] normalised, int label)."""

    name: str
    folder: str
    files: dict[str, tuple[str, ...]]
    label_key: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    torchvision_class: str
    in_channels = 3
    modality = "static"

    def __init__(self, split: str = "train", root: str = "data", download: bool = False, augment: bool | None = None,
                 auto_augment: str = "cifar10", cutout: bool = False, cutout_length: int = 16,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        check_choice("split", split, SPLITS)
        check_choice("auto_augment", auto_augment, AUTO_AUGMENT_POLICIES)
        self.split, self.root = split, Path(root)
        mean, std = check_stats(mean or self.mean, std or self.std)
        augment = split == "train" if augment is None else augment
        if download:
            import torchvision.datasets

            getattr(torchvision.datasets, self.torchvision_class)(str(self.root), train=split == "train", download=True)
        self.images, self.targets = self._read()
        from torchvision import transforms as T

        self.transform = image_transform(
            [T.RandomCrop(32, padding=4)] if augment else [], mean, std, flip=augment,
            policy=auto_augment if augment else "none", cutout=cutout_length if augment and cutout else 0)

    def _read(self) -> tuple[np.ndarray, list[int]]:
        folder = self.root / self.folder
        paths = [folder / name for name in self.files[self.split]]
        layout = "\n".join(f"  {self.folder}/{name}" for names in self.files.values() for name in names)
        require(paths, self.name, self.root, layout,
                f"pass download=True (--download true), or extract the python version of {self.name} from "
                f"https://www.cs.toronto.edu/~kriz/cifar.html into the root")
        images, targets = [], []
        for path in paths:
            try:
                with open(path, "rb") as handle:
                    entry = pickle.load(handle, encoding="latin1")
                data, labels = np.asarray(entry["data"], dtype=np.uint8), list(entry[self.label_key])
                if data.ndim != 2 or data.shape != (len(labels), 3 * 32 * 32):
                    raise ValueError(f"data of shape {data.shape} for {len(labels)} labels")
            except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as error:
                raise corrupt(path, error, "delete the folder and extract or download the archive again") from error
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            targets += labels
        return np.concatenate(images), [int(label) for label in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.targets[index]


class CIFAR10(_CIFAR):
    name, folder, torchvision_class, label_key, num_classes = "cifar10", "cifar-10-batches-py", "CIFAR10", "labels", 10
    files = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


class CIFAR100(_CIFAR):
    name, folder, torchvision_class, label_key, num_classes = "cifar100", "cifar-100-python", "CIFAR100", "fine_labels", 100
    files = {"train": ("train",), "test": ("test",)}
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
