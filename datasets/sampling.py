"""Sample order and random augmentation as pure functions of (seed, epoch, sample index).

The training order of an epoch is ``torch.randperm`` seeded with ``seed + epoch`` (the same on every
process; accelerate hands each process its share of every global batch), and each item is loaded with
torch's generator seeded from (seed, epoch, index).  So a sample gets the same crop/flip/roll whatever
the process count, the DataLoader workers or a resume, which is what makes N processes reproduce one.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 64-bit seed for one item (numpy's SeedSequence over the three integers)."""
    return int(np.random.SeedSequence([seed % 2**64, epoch, index]).generate_state(1, np.uint64)[0])


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` in the shuffled order of ``epoch`` (set with :meth:`set_epoch`)."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return ((self.epoch, index) for index in order.tolist())


class SeededItems(Dataset):
    """``dataset[index]`` drawn with torch's generator seeded from (seed, epoch, index); the global
    generator state is restored afterwards."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        generator = torch.default_generator  # the CPU generator the transforms draw from
        state = generator.get_state()
        generator.manual_seed(item_seed(self.seed, epoch, index))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)
