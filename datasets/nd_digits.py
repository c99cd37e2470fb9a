"""``nd_digits``: the embedded event-data stand-in, made the way N-MNIST was made from MNIST
(Orchard et al. 2015: a DVS sensor performing three saccades in front of a static digit), but from
scikit-learn's bundled 8x8 digits and in simulation, so event runs and tests need no download
[reconstructed].

- Scene: each digit (pixels 0..16 -> [0, 1], bilinearly upsampled to 24x24) centred on a black
  32x32 sensor; the split is the ``digits`` split (1437 train / 360 test).
- Motion: three linear saccades around an isosceles triangle of displacements (dx, dy)
  (0, 0) -> (3, 3) -> (-3, 3) -> (0, 0) px, each 8 sub-pixel (bilinear) steps of 12.5 ms (300 ms).
- Sensor: an ideal DVS pixel (no noise, no refractory period): log intensity L = log(I + 0.1); a pixel
  emits floor(|L - L_ref| / 0.5) events of polarity sign(L - L_ref) (p = True for ON) per step and
  moves its reference L_ref by that many thresholds.  The k-th of n events in a step is stamped at
  (k + 1) / (n + 1) of the step.  Fully deterministic.
- Events are held as tonic-style structured arrays (t uint64 us, x, y uint16, p bool; ``events``)
  and framed with the same :func:`~repro.datasets.transforms.events_to_frames` as ``cifar10_dvs``.
- Train augmentation: the ``cifar10_dvs`` :class:`~repro.datasets.transforms.FlipRoll` with
  ``flip_p`` 0 (digits are not mirror-symmetric) and ``max_shift`` 2.
- Frames default to 48x48 (``size``; None keeps 32) so the ``cifar10_dvs`` models (VGGSNN at 48)
  run on it unchanged; they are held in float16 (halving memory) and returned as float32.
Items: (float [T, 2, size, size], int label).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .digits import _digits_tensors
from .transforms import RESIZE_MODES, FlipRoll, check_choice, events_to_frames

SENSOR_SIZE = (32, 32, 2)  # tonic order (W, H, P)
DIGIT_SIZE = 24
SACCADE_VERTICES = ((0.0, 0.0), (3.0, 3.0), (-3.0, 3.0), (0.0, 0.0))  # (dx, dy) in pixels
STEPS_PER_SACCADE = 8
STEP_US = 12_500
CONTRAST_THRESHOLD = 0.5
LOG_OFFSET = 0.1
EVENT_DTYPE = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("p", "?")])
SPLITS = ("train", "test")


def _shift(images: np.ndarray, offset: float, axis: int) -> np.ndarray:
    """Bilinear sub-pixel translation by ``offset`` along ``axis`` (the black margin makes roll exact)."""
    whole = int(np.floor(offset))
    frac = offset - whole
    return (1 - frac) * np.roll(images, whole, axis=axis) + frac * np.roll(images, whole + 1, axis=axis)


def saccade_events(images: np.ndarray) -> list[np.ndarray]:
    """DVS events of a sensor saccading over static ``images`` [N, H, W] in [0, 1] (module docstring)."""
    vertices = np.asarray(SACCADE_VERTICES)
    path = [start + (end - start) * k / STEPS_PER_SACCADE
            for start, end in zip(vertices[:-1], vertices[1:]) for k in range(1, STEPS_PER_SACCADE + 1)]

    def log_view(dx: float, dy: float) -> np.ndarray:
        return np.log(_shift(_shift(images, dx, axis=2), dy, axis=1) + LOG_OFFSET)

    start = log_view(*vertices[0])
    level = np.zeros(images.shape)  # L_ref = start + level * threshold, kept in whole thresholds (exact)
    counts = np.empty((len(path),) + images.shape, dtype=np.int8)  # signed events per step and pixel
    for step, (dx, dy) in enumerate(path):
        crossings = np.trunc((log_view(dx, dy) - start) / CONTRAST_THRESHOLD - level)
        counts[step] = crossings
        level += crossings
    sample, step, y, x = np.nonzero(counts.transpose(1, 0, 2, 3))
    signed = counts[step, sample, y, x].astype(np.int64)
    number = np.abs(signed)
    source = np.repeat(np.arange(len(number)), number)  # one row per event
    rank = np.arange(len(source)) - np.repeat(np.cumsum(number) - number, number)
    times = step[source] * STEP_US + (rank + 1) * STEP_US // (number[source] + 1)
    order = np.argsort(sample[source] * (len(path) + 1) * STEP_US + times, kind="stable")
    events = np.empty(len(source), EVENT_DTYPE)
    events["t"], events["x"], events["y"] = times[order], x[source][order], y[source][order]
    events["p"] = signed[source][order] > 0
    ends = np.cumsum(np.bincount(sample[source], minlength=len(images)))
    return np.split(events, ends[:-1])


@lru_cache(maxsize=1)
def _split_events() -> dict[str, tuple[list[np.ndarray], list[int]]]:
    x_train, x_test, y_train, y_test = _digits_tensors()
    margin = (SENSOR_SIZE[0] - DIGIT_SIZE) // 2
    result = {}
    for split, digits, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        scene = F.interpolate(digits[:, None] / 16.0, size=DIGIT_SIZE, mode="bilinear", align_corners=False)
        scene = F.pad(scene.clamp(0, 1), (margin,) * 4)[:, 0].numpy()
        result[split] = (saccade_events(scene), labels.tolist())
    return result


@lru_cache(maxsize=4)
def _split_frames(split: str, num_frames: int, size: int | None, resize: str) -> torch.Tensor:
    events, _ = _split_events()[split]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny per-sample ops: intra-op threads only add overhead
    try:
        return torch.stack([events_to_frames(e, SENSOR_SIZE, num_frames, size, resize) for e in events]).half()
    finally:
        torch.set_num_threads(threads)


class NDDigits(Dataset):
    """See the module docstring; ``root`` and ``download`` are accepted for a uniform call and unused."""

    num_classes = 10
    in_channels = 2
    modality = "event"
    in_memory = True

    def __init__(self, split: str = "train", root: str | None = None, download: bool = False, num_frames: int = 10,
                 size: int | None = 48, resize: str = "pil", augment: bool | None = None, flip_p: float = 0.0,
                 max_shift: int = 2):
        check_choice("split", split, SPLITS)
        check_choice("resize", resize, RESIZE_MODES)
        if num_frames < 1 or (size is not None and size < 1):
            raise ValueError(f"need num_frames >= 1 and size >= 1 or None, got {num_frames}, {size}")
        self.events, self.targets = _split_events()[split]
        self.frames = _split_frames(split, num_frames, size, resize)
        self.augment = FlipRoll(flip_p, max_shift) if (split == "train" if augment is None else augment) else None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        frames = self.frames[index].float()
        return (self.augment(frames) if self.augment else frames), self.targets[index]
