"""Image-folder classification datasets: Tiny-ImageNet and ImageNet (ILSVRC-2012).

- ``tiny_imagenet`` (MPD-AGL's Tiny-ImageNet setting) [reconstructed]: the official archive
  layout ``<root>/tiny-imagenet-200/`` with ``wnids.txt``, ``train/<wnid>/images/*.JPEG`` and
  ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``; split ``test`` = the official val
  (100000 / 10000 images of 64x64, 200 classes).  Classes are the sorted wnids.  Train: RandomCrop(64,
  padding 4) + flip (+ AutoAugment ImageNet policy with ``auto_augment='imagenet'``); both splits:
  ToTensor + Normalize (ImageNet statistics [reconstructed]).  ``download=True`` fetches the archive.
- ``imagenet`` (docs/methods.md section "Data"): ImageFolder layout ``<root>/imagenet/{train,val}/<wnid>/*``,
  or ``<root>/{train,val}/<wnid>/*`` (``--data_root`` naming the ImageNet folder itself) (val sorted into class folders, e.g. with the usual ``valprep.sh``); split ``test`` = val.  Train:
  RandomResizedCrop(224) + flip; eval: Resize(256) + CenterCrop(224); ImageNet normalisation.  Never
  downloaded (licence); a missing copy raises an error saying how to get it.
Items: (float [3, H, W], int label).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch.utils.data import Dataset

from .files import corrupt, not_found, read_image, require
from .transforms import AUTO_AUGMENT_POLICIES, IMAGENET_MEAN, IMAGENET_STD, check_choice, check_stats, image_transform

SPLITS = ("train", "test")
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


class _ImageList(Dataset):
    """Items from a list of (path, label) pairs through a torchvision transform."""

    in_channels = 3
    modality = "static"

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], transform):
        self.samples, self.classes, self.transform = samples, classes, transform
        self.targets = [label for _, label in samples]
        self.num_classes = len(classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(read_image(path)), label


def _images_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)


class TinyImageNet(_ImageList):
    LAYOUT = ("  tiny-imagenet-200/wnids.txt\n  tiny-imagenet-200/train/<wnid>/images/*.JPEG\n"
              "  tiny-imagenet-200/val/images/*.JPEG\n  tiny-imagenet-200/val/val_annotations.txt")
    HOW_TO_GET = f"pass download=True (--download true), or extract {TINY_IMAGENET_URL} into the root"

    def __init__(self, split: str = "train", root: str = "data", download: bool = False, augment: bool | None = None,
                 auto_augment: str = "none", mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        from torchvision import transforms as T

        check_choice("split", split, SPLITS)
        check_choice("auto_augment", auto_augment, AUTO_AUGMENT_POLICIES)
        root_path = Path(root)
        base = root_path / "tiny-imagenet-200"
        if download and not (base / "wnids.txt").exists():
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(TINY_IMAGENET_URL, str(root_path))
        require([base / "wnids.txt", base / "train", base / "val" / "images", base / "val" / "val_annotations.txt"],
                "tiny_imagenet", root_path, self.LAYOUT, self.HOW_TO_GET)
        classes = sorted({line.strip() for line in (base / "wnids.txt").read_text().splitlines() if line.strip()})
        index = {wnid: i for i, wnid in enumerate(classes)}
        samples = self._train(base, classes) if split == "train" else self._val(base, index)
        augment = split == "train" if augment is None else augment
        mean, std = check_stats(mean, std)
        super().__init__(samples, classes, image_transform(
            [T.RandomCrop(64, padding=4)] if augment else [], mean, std, flip=augment,
            policy=auto_augment if augment else "none"))

    def _train(self, base: Path, classes: list[str]) -> list[tuple[Path, int]]:
        folders = [base / "train" / wnid / "images" for wnid in classes]
        require(folders, "tiny_imagenet", base.parent, self.LAYOUT, "incomplete extraction? " + self.HOW_TO_GET)
        samples, empty = [], []
        for label, folder in enumerate(folders):
            files = _images_in(folder)
            empty += [] if files else [folder]
            samples += [(path, label) for path in files]
        if empty:
            raise not_found("tiny_imagenet", base.parent, empty, self.LAYOUT, "incomplete extraction? " + self.HOW_TO_GET)
        return samples

    def _val(self, base: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
        annotations = base / "val" / "val_annotations.txt"
        samples = []
        for number, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise corrupt(annotations, ValueError(f"line {number} is not '<file>\\t<wnid from wnids.txt>\\t...': {line!r}"))
            samples.append((base / "val" / "images" / fields[0], index[fields[1]]))
        require([path for path, _ in samples], "tiny_imagenet", base.parent, self.LAYOUT,
                "incomplete extraction? " + self.HOW_TO_GET)
        return samples


class ImageNet(_ImageList):
    LAYOUT = ("  imagenet/train/<wnid>/*.JPEG   (1000 class folders)\n  imagenet/val/<wnid>/*.JPEG     (same folders)\n"
              "  (or train/ and val/ directly under the root)")
    HOW_TO_GET = ("ImageNet cannot be downloaded automatically: get ILSVRC2012_img_train.tar and "
                  "ILSVRC2012_img_val.tar from https://image-net.org, extract them and sort val into class "
                  "folders (e.g. with the common valprep.sh)")

    def __init__(self, split: str = "train", root: str = "data", download: bool = False, augment: bool | None = None,
                 auto_augment: str = "none", crop_size: int = 224, resize_size: int = 256,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        from torchvision import transforms as T

        check_choice("split", split, SPLITS)
        check_choice("auto_augment", auto_augment, AUTO_AUGMENT_POLICIES)
        if not 0 < crop_size <= resize_size:
            raise ValueError(f"need 0 < crop_size <= resize_size, got {crop_size}, {resize_size}")
        root_path = Path(root)
        base = root_path if (root_path / "train").is_dir() and not (root_path / "imagenet").is_dir() \
            else root_path / "imagenet"
        require([base / "train", base / "val"], "imagenet", root_path, self.LAYOUT, self.HOW_TO_GET)
        classes = sorted(entry.name for entry in (base / "train").iterdir() if entry.is_dir())
        folder = base / ("train" if split == "train" else "val")
        unknown = sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and entry.name not in classes)
        if unknown:
            raise ValueError(f"{folder} has class folders not in {base / 'train'}: {unknown[:5]}")
        samples = [(path, label) for label, wnid in enumerate(classes) if (folder / wnid).is_dir()
                   for path in _images_in(folder / wnid)]
        if not samples:
            raise not_found("imagenet", root_path, [folder / "<wnid>" / "*.JPEG"], self.LAYOUT, self.HOW_TO_GET)
        augment = split == "train" if augment is None else augment
        spatial = [T.RandomResizedCrop(crop_size)] if augment else [T.Resize(resize_size), T.CenterCrop(crop_size)]
        mean, std = check_stats(mean, std)
        super().__init__(samples, classes, image_transform(spatial, mean, std, flip=augment,
                                                           policy=auto_augment if augment else "none"))
