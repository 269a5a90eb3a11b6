"""Which samples each step reads: a seeded permutation per epoch, cut into global batches, each
split evenly over the processes.

Process ``r`` of ``W`` reads the ``r``-th of ``W`` equal slices of every global batch, so the union
over the processes is exactly the batch that a single process would read. The order depends only
on ``(seed, epoch)``: a resumed run skips the batches already done and reads the same ones next.
:class:`TrainBatchSampler` hands these batches to a :class:`~torch.utils.data.DataLoader`;
:class:`ShardSampler` splits an evaluation set over the processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from . import distributed


def mix_seed(*values: int) -> int:
    """A 63-bit seed mixed from several integers (neighbouring inputs give unrelated seeds)."""
    return int(
        np.random.SeedSequence([v & 0xFFFFFFFF for v in values]).generate_state(2, np.uint64)[0]
        >> np.uint64(1)
    )


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Full global batches in one epoch (the last partial batch is dropped)."""
    return num_samples // batch_size


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> Tensor:
    """Sample numbers of every global batch of ``epoch``: int64 ``[steps, batch_size]``."""
    gen = torch.Generator().manual_seed(mix_seed(seed, epoch, 0x5A3))
    perm = torch.randperm(num_samples, generator=gen)
    steps = steps_per_epoch(num_samples, batch_size)
    return perm[: steps * batch_size].view(steps, batch_size)


def rank_slice(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """Process ``rank``'s share ``[batch_size / world_size]`` of a global batch ``[batch_size]``."""
    if len(batch) % world_size:
        raise ValueError(
            f"the global batch size {len(batch)} must be divisible by the number of processes "
            f"{world_size}"
        )
    share = len(batch) // world_size
    return batch[rank * share : (rank + 1) * share]


class TrainBatchSampler(Sampler[list[int]]):
    """This process's batches of one epoch, for ``DataLoader(batch_sampler=...)``.

    The order is :func:`epoch_batches` (seeded by ``(seed, epoch)``, last partial batch dropped)
    and each global batch is split by :func:`rank_slice`: the union over the processes is the
    batch one process would read, as with :class:`torch.utils.data.DistributedSampler` (which
    interleaves the shares instead of cutting them in blocks). Call :meth:`set_epoch` before
    each epoch; ``start`` skips the batches a resumed run already trained on, without reading
    them.

    Args:
        num_samples: the data set's length.
        batch_size: the *global* batch (divisible by ``world_size``).
        seed: the run's seed.
        rank, world_size: this process's place (default: from :mod:`torch.distributed`).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        dist = distributed.info()
        self.rank = dist.rank if rank is None else rank
        self.world_size = dist.world_size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        if batch_size < 1 or batch_size % self.world_size:
            raise ValueError(
                f"batch_size {batch_size} (global) must be a positive multiple of the "
                f"{self.world_size} processes"
            )
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Read ``epoch``'s batches from batch number ``start`` on."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}], got {start}")
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return steps_per_epoch(self.num_samples, self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        batches = epoch_batches(self.num_samples, self.batch_size, self.seed, self.epoch)
        for batch in batches[self.start :]:
            yield rank_slice(batch, self.rank, self.world_size).tolist()


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th sample from ``rank`` on, in order: process ``r`` evaluates
    ``r, r + W, r + 2W, ...``, so the processes together see each sample exactly once (unlike
    :class:`~torch.utils.data.DistributedSampler`, which pads the shares to equal length by
    repeating samples, and would count those twice)."""

    def __init__(self, num_samples: int, rank: int | None = None, world_size: int | None = None):
        dist = distributed.info()
        self.rank = dist.rank if rank is None else rank
        self.world_size = dist.world_size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        self.num_samples = num_samples

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.world_size))
