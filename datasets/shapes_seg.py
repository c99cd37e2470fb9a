"""``shapes_seg``: the embedded segmentation stand-in [reconstructed], procedurally drawn so
segmentation runs and tests need no download.

- Scene (``image_size`` x ``image_size``, a multiple of 32, default 64): a random background colour
  with a linear gradient and pixel noise; 1-3 shapes drawn in order (later ones on top), each a
  circle, square or equilateral triangle with random centre, size (radius S/10..S/4, the square's
  and triangle's circumradius), rotation and a colour far from the background.
- Mask: 0 background, 1 circle, 2 square, 3 triangle (``classes``; ``palette``: the VOC colour map);
  pixels with a 4-neighbour of another class are 255 (ignored), like VOC's boundary band.
- Deterministic: split ``train`` (320 scenes) uses seed 0 and ``test`` (96) seed 1.
- Items go through the same :class:`~repro.datasets.transforms.JointTransform` as VOC2012 / ADE20K
  with ``crop_size = image_size`` (train: random scale, pad, crop, flip; test: identity geometry),
  ImageNet normalisation.
Items: (float [3, S, S], long [S, S]).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from .seg_classes import voc_colour_map
from .transforms import JointTransform, check_choice

CLASSES = ("background", "circle", "square", "triangle")
NUM_SCENES = {"train": 320, "test": 96}
SEEDS = {"train": 0, "test": 1}
IGNORE_INDEX = 255


def shape_mask(kind: str, size: int, centre: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """Boolean [size, size] mask of one shape, tested at pixel centres."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = x - centre[0], y - centre[1]
    if kind == "circle":
        return dx**2 + dy**2 <= radius**2
    u, v = dx * math.cos(angle) + dy * math.sin(angle), -dx * math.sin(angle) + dy * math.cos(angle)
    if kind == "square":
        half = radius / math.sqrt(2)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    # equilateral triangle: inside all three edges (distance radius / 2 from the centre along each normal)
    normals = [(math.cos(a), math.sin(a)) for a in (math.pi / 3, math.pi, 5 * math.pi / 3)]
    return np.all([u * nx + v * ny <= radius / 2 for nx, ny in normals], axis=0)


def draw_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (uint8 image [size, size, 3], uint8 mask [size, size]); see the module docstring."""
    background = rng.uniform(0, 255, 3)
    ramp = np.linspace(-1, 1, size)
    gradient = rng.uniform(-30, 30, 2)
    image = (background + (gradient[0] * ramp[None, :] + gradient[1] * ramp[:, None])[..., None]
             + rng.normal(0, 8, (size, size, 3)))
    mask = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 4)):
        label = int(rng.integers(1, len(CLASSES)))
        radius = rng.uniform(size / 10, size / 4)
        centre = tuple(rng.uniform(radius, size - radius, 2))
        inside = shape_mask(CLASSES[label], size, centre, radius, rng.uniform(0, 2 * math.pi))
        colour = rng.uniform(0, 255, 3)
        while np.abs(colour - background).sum() < 150:
            colour = rng.uniform(0, 255, 3)
        image[inside], mask[inside] = colour + rng.normal(0, 8, (int(inside.sum()), 3)), label
    boundary = np.zeros_like(mask, dtype=bool)
    boundary[1:] |= mask[1:] != mask[:-1]
    boundary[:-1] |= mask[:-1] != mask[1:]
    boundary[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    boundary[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    mask[boundary] = IGNORE_INDEX
    return np.clip(image, 0, 255).astype(np.uint8), mask


class ShapesSeg(Dataset):
    """See the module docstring; ``root`` and ``download`` are accepted for a uniform call and unused."""

    classes, palette = CLASSES, voc_colour_map(len(CLASSES))
    num_classes = len(CLASSES)
    in_channels = 3
    modality = "segmentation"
    ignore_index = IGNORE_INDEX
    in_memory = True

    def __init__(self, split: str = "train", root: str | None = None, download: bool = False, image_size: int = 64,
                 augment: bool | None = None, scale_range: Sequence[float] = (0.5, 2.0), num_scenes: int | None = None):
        check_choice("split", split, tuple(NUM_SCENES))
        if image_size < 32 or image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32 (segmentation models need it), got {image_size}")
        count = NUM_SCENES[split] if num_scenes is None else num_scenes
        if count < 1:
            raise ValueError(f"num_scenes must be >= 1, got {count}")
        rng = np.random.default_rng(SEEDS[split])
        scenes = [draw_scene(rng, image_size) for _ in range(count)]
        self.images = np.stack([image for image, _ in scenes])
        self.masks = np.stack([mask for _, mask in scenes])
        train = split == "train" if augment is None else augment
        self.transform = JointTransform(train, image_size, scale_range, ignore_index=IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index], self.masks[index])
