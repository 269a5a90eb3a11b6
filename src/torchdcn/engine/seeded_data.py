"""Per-sample seeding of the global random number generators while the training set is read.

A data set that augments with the global RNGs (``torch.rand`` in ``__getitem__``, the usual
torchvision-transforms pattern, ``random``, ``numpy.random``) would otherwise draw from whatever
state the process happens to be in: the main process's (``num_workers=0``) or a worker's, after
whatever that worker read before. Then a resumed run and an uninterrupted one, or runs with
different worker counts, see different samples. :class:`SeededSamples` seeds the three global
generators from ``(seed, epoch, index)`` just before sample ``index`` is read, in whichever
process reads it (and in the main process restores their previous states afterwards), so sample
``i`` of epoch ``e`` is the same draw however and whenever it is read.

A data set that draws from its own generators (:class:`~torchdcn.data.DistortedDigits`) reads the
same values as without the wrapper: the global states it never uses are the only thing touched.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from .sampler import mix_seed

#: mixed into every per-sample seed, so it differs from the step and loader seeds of the trainer
_SAMPLE_STREAM = 0x5EED
_GOLDEN, _MASK64 = 0x9E3779B97F4A7C15, (1 << 64) - 1


class SeededSamples(Dataset):
    """``dataset`` read with the global RNGs seeded per sample from ``(seed, epoch, index)``.

    ``ds[i]`` seeds ``torch`` (CPU generator), ``random`` and ``numpy.random`` from ``(seed,
    epoch, i)`` and reads ``dataset[i]``. ``ds.__getitems__(indices)`` (what a DataLoader calls
    for a batch) reads each sample so seeded, or, when ``dataset`` has its own ``__getitems__`` (a
    batched read), calls it once with the generators seeded from ``(seed, epoch, *indices)``: a
    batch is then a fixed draw of its index list. In the main process the generators' states are
    put back after each call (a worker's are its own and reseeded before every read).

    Cost, measured on the shared 2-core development machine: about 30 us per sample to seed the
    three generators, plus, in the main process, a few hundred us per batch to save and restore
    them (numpy's state copy is most of it).

    Args:
        dataset: a map-style data set (``len`` and ``[i]``).
        seed: the run's seed.
        epoch: the epoch being read.
    """

    def __init__(self, dataset: Any, seed: int, epoch: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), int(epoch)
        self._base = mix_seed(self.seed, self.epoch, _SAMPLE_STREAM)

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_seed(self, index: int) -> int:
        """The 63-bit seed of sample ``index`` in this epoch (SplitMix64 of the epoch's base)."""
        z = (self._base + (int(index) + 1) * _GOLDEN) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return (z ^ (z >> 31)) >> 1

    def __getitem__(self, index: int) -> Any:
        with _global_rngs_kept():
            return self._read(index)

    def __getitems__(self, indices: list[int]) -> list[Any]:
        batched = getattr(self.dataset, "__getitems__", None)
        with _global_rngs_kept():
            if batched is None:
                return [self._read(i) for i in indices]
            _seed_global_rngs(mix_seed(self.seed, self.epoch, _SAMPLE_STREAM, -1, *indices))
            return batched(indices)

    def _read(self, index: int) -> Any:
        _seed_global_rngs(self.sample_seed(index))
        return self.dataset[index]


def _seed_global_rngs(seed: int) -> None:
    """Seed torch's CPU generator, ``random`` and ``numpy.random`` with ``seed``."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002


@contextmanager
def _global_rngs_kept() -> Iterator[None]:
    """Put the global generators' states back after the block, in the main process only."""
    if get_worker_info() is not None:
        yield
        return
    saved = torch.get_rng_state(), random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])  # noqa: NPY002
