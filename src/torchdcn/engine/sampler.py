"""Which samples each step reads: a seeded permutation per epoch, cut into global batches, each
split evenly over the processes.

Process ``r`` of ``W`` reads the ``r``-th of ``W`` equal slices of every global batch, so the union
over the processes is exactly the batch that a single process would read. The order depends only
on ``(seed, epoch)``: a resumed run skips the batches already done and reads the same ones next.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


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
