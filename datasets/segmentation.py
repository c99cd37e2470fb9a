"""Semantic segmentation: PASCAL VOC2012 and ADE20K (docs/methods.md section "Data") [reconstructed recipes].

- ``voc2012``: torchvision ``VOCSegmentation`` layout ``<root>/VOCdevkit/VOC2012/`` with
  ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette indices 0..20, 255 = boundary,
  ignored) and ``ImageSets/Segmentation/{train,val}.txt``; split ``test`` = the official ``val``
  (1464 train / 1449 val).  21 classes (background included).  ``download=True`` uses torchvision.
- ``ade20k``: ``<root>/ADEChallengeData2016/images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png``; split ``test`` = ``validation`` (20210 / 2000).
  Label 0 ("other") -> 255 (ignored), 1..150 -> 0..149 (mmseg ``reduce_zero_label``).
  ``download=True`` fetches the MIT Scene Parsing archive with torchvision's downloader.
- Joint image/mask transforms: :class:`~repro.datasets.transforms.JointTransform`
  (``crop_size`` 512, random scale in ``scale_range`` (0.5, 2.0), crop and flip for train; longer
  side to ``crop_size`` and padding for eval), ImageNet normalisation (``mean`` / ``std``).
- ``classes`` / ``palette``: the class names and [K, 3] uint8 colours of label ids 0..K-1
  (:mod:`~repro.datasets.seg_classes`: VOC's colour map, ADE20K's 150-colour table).
Items: (float [3, crop, crop], long [crop, crop] with 255 = ignore).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from .files import corrupt, not_found, read_image, read_label_map, require
from .seg_classes import ADE20K_CLASSES, ADE20K_PALETTE, VOC_CLASSES, voc_colour_map
from .transforms import IMAGENET_MEAN, IMAGENET_STD, JointTransform, check_choice

SPLITS = ("train", "test")
IGNORE_INDEX = 255
ADE20K_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"


class _SegmentationFolder(Dataset):
    """(image, mask) file pairs + :class:`JointTransform`; subclasses list the pairs."""

    in_channels = 3
    modality = "segmentation"
    ignore_index = IGNORE_INDEX

    def __init__(self, split: str = "train", root: str = "data", download: bool = False, crop_size: int = 512,
                 scale_range: Sequence[float] = (0.5, 2.0), augment: bool | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        check_choice("split", split, SPLITS)
        self.root = Path(root)
        self.samples = self._find(split, download)
        train = split == "train" if augment is None else augment
        self.transform = JointTransform(train, crop_size, scale_range, mean, std, IGNORE_INDEX)

    def _find(self, split: str, download: bool) -> list[tuple[Path, Path]]:
        raise NotImplementedError

    def _labels(self, raw: np.ndarray) -> np.ndarray:
        return raw

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image_path, mask_path = self.samples[index]
        image, mask = np.asarray(read_image(image_path)), self._labels(read_label_map(mask_path))
        if image.shape[:2] != mask.shape:
            raise corrupt(mask_path, ValueError(f"mask size {mask.shape} differs from the image's {image.shape[:2]}"))
        return self.transform(image, mask)


class VOC2012(_SegmentationFolder):
    classes, palette = VOC_CLASSES, voc_colour_map(len(VOC_CLASSES))
    num_classes = len(classes)
    LAYOUT = ("  VOCdevkit/VOC2012/JPEGImages/<id>.jpg\n  VOCdevkit/VOC2012/SegmentationClass/<id>.png\n"
              "  VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt, val.txt")

    def _find(self, split: str, download: bool) -> list[tuple[Path, Path]]:
        base = self.root / "VOCdevkit" / "VOC2012"
        image_set = "train" if split == "train" else "val"
        listing = base / "ImageSets" / "Segmentation" / f"{image_set}.txt"
        if download and not listing.exists():
            from torchvision.datasets import VOCSegmentation

            VOCSegmentation(str(self.root), year="2012", image_set=image_set, download=True)
        how = ("pass download=True (--download true), or extract VOCtrainval_11-May-2012.tar from "
               "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ into the root")
        require([listing], "voc2012", self.root, self.LAYOUT, how)
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        samples = [(base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClass" / f"{i}.png") for i in ids]
        require([path for pair in samples for path in pair], "voc2012", self.root, self.LAYOUT,
                "some listed files are missing (an incomplete extraction?); " + how)
        return samples


class ADE20K(_SegmentationFolder):
    classes, palette = ADE20K_CLASSES, ADE20K_PALETTE
    num_classes = len(classes)
    LAYOUT = ("  ADEChallengeData2016/images/training/*.jpg, images/validation/*.jpg\n"
              "  ADEChallengeData2016/annotations/training/*.png, annotations/validation/*.png")
    LABELS = np.concatenate([[IGNORE_INDEX], np.arange(255)]).astype(np.uint8)  # 0 -> 255, k -> k - 1

    def _find(self, split: str, download: bool) -> list[tuple[Path, Path]]:
        base = self.root / "ADEChallengeData2016"
        folder = "training" if split == "train" else "validation"
        images, annotations = base / "images" / folder, base / "annotations" / folder
        if download and not images.is_dir():
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(ADE20K_URL, str(self.root))
        how = f"pass download=True (--download true), or extract {ADE20K_URL} into the root"
        require([images, annotations], "ade20k", self.root, self.LAYOUT, how)
        image_files = sorted(images.glob("*.jpg"))
        if not image_files:
            raise not_found("ade20k", self.root, [images / "*.jpg"], self.LAYOUT, how)
        samples = [(path, annotations / f"{path.stem}.png") for path in image_files]
        require([mask for _, mask in samples], "ade20k", self.root, self.LAYOUT,
                "some annotations are missing (an incomplete extraction?); " + how)
        return samples

    def _labels(self, raw: np.ndarray) -> np.ndarray:
        return self.LABELS[raw]
