"""Transforms shared by the datasets.

- Static images: :func:`image_transform` (torchvision; geometric crop, flip, optional AutoAugment /
  RandAugment, ToTensor, Normalize, optional :class:`Cutout`).
- Events: :func:`events_to_frames` (tonic framing, used by ``cifar10_dvs`` and ``nd_digits`` alike) and
  :class:`FlipRoll` (the TET train augmentation).
- Segmentation: :class:`JointTransform` (albumentations; image and mask move together).

Heavy libraries (torchvision, tonic, albumentations) are imported when a transform is built, so
``import repro.datasets`` stays light.  Random draws use torch's generator (seeded by the engine and
per DataLoader worker), including the seed handed to albumentations on every call.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUTO_AUGMENT_POLICIES = ("none", "cifar10", "imagenet", "randaugment")
RESIZE_MODES = ("pil", "bilinear")


def check_choice(option: str, value, choices: Sequence):
    if value not in choices:
        raise ValueError(f"{option}={value!r} is not valid; choose one of {list(choices)}")
    return value


def check_stats(mean: Sequence[float], std: Sequence[float], channels: int = 3) -> tuple[tuple, tuple]:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"mean/std need {channels} values each and std > 0, got mean={mean}, std={std}")
    return mean, std


def random_int(low: int, high: int) -> int:
    """Uniform integer in [low, high] from torch's generator."""
    return int(torch.randint(low, high + 1, ()))


class Cutout:
    """Cutout (DeVries & Taylor 2017) as in the ASGL code [reference code]: one ``length`` x ``length``
    square centred on a uniformly drawn pixel, clipped at the border, set to 0 on the normalised
    tensor [C, H, W]."""

    def __init__(self, length: int = 16):
        if length <= 0:
            raise ValueError(f"cutout length must be positive, got {length}")
        self.length = length

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        cy, cx = random_int(0, height - 1), random_int(0, width - 1)
        half = self.length // 2
        image = image.clone()
        image[..., max(cy - half, 0):min(cy + half, height), max(cx - half, 0):min(cx + half, width)] = 0
        return image

    def __repr__(self) -> str:
        return f"Cutout(length={self.length})"


def auto_augment(policy: str):
    """``cifar10`` / ``imagenet``: torchvision AutoAugment with that policy [reference code for CIFAR];
    ``randaugment``: torchvision RandAugment defaults (2 ops, magnitude 9) [reconstructed, for the
    Spikformer recipes]; ``none``: no transform."""
    from torchvision import transforms as T

    check_choice("auto_augment", policy, AUTO_AUGMENT_POLICIES)
    if policy == "none":
        return None
    if policy == "randaugment":
        return T.RandAugment()
    return T.AutoAugment(T.AutoAugmentPolicy.CIFAR10 if policy == "cifar10" else T.AutoAugmentPolicy.IMAGENET)


def image_transform(spatial: list, mean: Sequence[float], std: Sequence[float], flip: bool = False,
                    policy: str = "none", cutout: int = 0):
    """PIL image -> normalised float tensor [3, H, W]:
    ``spatial`` (crops/resizes) -> horizontal flip (p 0.5) -> ``policy`` -> ToTensor -> Normalize ->
    Cutout(``cutout``) when ``cutout`` > 0 (the order of the reference CIFAR pipelines)."""
    from torchvision import transforms as T

    steps = list(spatial) + ([T.RandomHorizontalFlip()] if flip else [])
    augment = auto_augment(policy)
    steps += ([augment] if augment is not None else []) + [T.ToTensor(), T.Normalize(mean, std)]
    steps += [Cutout(cutout)] if cutout else []
    return T.Compose(steps)


# ----------------------------------------------------------------------------------------- events

def events_to_frames(events: np.ndarray, sensor_size: tuple[int, int, int], num_frames: int,
                     size: int | None = None, resize: str = "pil") -> torch.Tensor:
    """Structured events (fields t, x, y, p) -> float frames [T, P, size, size] (TET's preprocessing
    [reference code]; docs/methods.md section "Data"):

    1. tonic ``ToFrame(sensor_size=(W, H, P), n_event_bins=T)``: T slices of equal event count
       floor(N / T) (tonic drops the last N mod T events; spikingjelly's ``split_by='number'`` puts
       them in the last frame [deviation, at most T - 1 events]); per-pixel, per-polarity counts.
    2. Each frame divided by its own maximum over (P, H, W) [reference code]; empty frames stay 0.
    3. Resize to ``size`` (skipped when None or equal to the sensor):
       ``pil`` [reconstructed reference path]: each frame through torchvision ToPILImage (x255,
       truncated to uint8; 2 channels become a PIL ``LA`` image) -> PIL bilinear Resize -> ToTensor.
       PIL resizes ``LA`` with premultiplied alpha, so channel 0 is zeroed wherever the resized
       channel 1 is 0; this quirk of the reference code is kept.
       ``bilinear``: float ``F.interpolate`` (bilinear, antialiased) [deviation].
    """
    from tonic.transforms import ToFrame

    width, height, polarities = sensor_size
    check_choice("resize", resize, RESIZE_MODES)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if len(events) and (int(events["x"].max()) >= width or int(events["y"].max()) >= height):
        raise ValueError(f"event coordinates exceed the sensor size {width}x{height}")
    counts = ToFrame(sensor_size=sensor_size, n_event_bins=num_frames)(events)
    frames = torch.from_numpy(np.asarray(counts, dtype=np.float32)).reshape(num_frames, polarities, height, width)
    frames = frames / frames.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    if size is None or (size == height and size == width):
        return frames
    if resize == "bilinear":
        return F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    from torchvision.transforms import functional as TF

    return torch.stack([TF.to_tensor(TF.resize(TF.to_pil_image(frame), [size, size])) for frame in frames])


class FlipRoll:
    """Event-frame train augmentation of TET [reference code]: horizontal flip with probability
    ``flip_p``, then ``torch.roll`` by (dy, dx) drawn uniformly from [-max_shift, max_shift]^2 over the
    two spatial axes of [T, C, H, W] (pixels leaving one side re-enter on the other)."""

    def __init__(self, flip_p: float = 0.5, max_shift: int = 5):
        if not 0.0 <= flip_p <= 1.0 or max_shift < 0:
            raise ValueError(f"need 0 <= flip_p <= 1 and max_shift >= 0, got {flip_p}, {max_shift}")
        self.flip_p, self.max_shift = flip_p, max_shift

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) < self.flip_p:
            frames = frames.flip(-1)
        dy, dx = random_int(-self.max_shift, self.max_shift), random_int(-self.max_shift, self.max_shift)
        return torch.roll(frames, shifts=(dy, dx), dims=(-2, -1))


# ----------------------------------------------------------------------------------- segmentation

class JointTransform:
    """Image uint8 [H, W, 3] + mask uint8 [H, W] -> (float [3, S, S], long [S, S]), S = ``crop_size``
    [reconstructed; the usual DeepLab / mmseg recipe]:

    - train: random rescale by s ~ U(scale_range) (image bilinear, mask nearest) -> pad to S
      (image 0, mask ``ignore_index``) -> random S x S crop -> horizontal flip (p 0.5) -> Normalize;
    - eval: rescale so the longer side is S -> pad bottom/right to S x S (mask ``ignore_index``, so the
      padding is left out of the metrics) -> Normalize.
    """

    def __init__(self, train: bool, crop_size: int, scale_range: Sequence[float] = (0.5, 2.0),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 ignore_index: int = 255):
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no PyPI version check on import
        import albumentations as A
        import cv2

        low, high = (float(s) for s in scale_range)
        if crop_size < 1 or not 0 < low <= high:
            raise ValueError(f"need crop_size >= 1 and 0 < scale_range[0] <= scale_range[1], "
                             f"got {crop_size}, {tuple(scale_range)}")
        mean, std = check_stats(mean, std)
        pad = dict(border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index)
        if train:
            steps = [A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0),
                     A.PadIfNeeded(crop_size, crop_size, **pad),
                     A.RandomCrop(crop_size, crop_size), A.HorizontalFlip(p=0.5)]
        else:
            steps = [A.LongestMaxSize(max_size=crop_size), A.PadIfNeeded(crop_size, crop_size, position="top_left", **pad)]
        self.pipeline = A.Compose(steps + [A.Normalize(mean=mean, std=std)])

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        self.pipeline.set_random_seed(random_int(0, 2**31 - 2))
        out = self.pipeline(image=image, mask=mask)
        return (torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))).float(),
                torch.from_numpy(np.ascontiguousarray(out["mask"])).long())
