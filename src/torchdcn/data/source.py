"""What the training loop reads: a *batch source*, indexed by sample numbers and an epoch.

The loop draws the sample numbers itself (seeded, see :mod:`torchdcn.engine.sampler`) and asks the
source for the tensors. A source whose batch depends only on ``(indices, epoch)`` makes runs
reproducible whatever the batch size, the process count or an interruption in between.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class BatchSource(Protocol):
    """A data set the training loop can read: ``len(source)`` samples and ``get_batch``."""

    def __len__(self) -> int: ...

    def get_batch(self, indices: Tensor, epoch: int = 0) -> tuple[Tensor, Tensor]:
        """``(inputs [B, ...], targets [B, ...])`` of samples ``indices`` (int64 ``[B]``)."""
        ...


class TensorSource:
    """Fixed tensors as a :class:`BatchSource` (the epoch is ignored).

    Args:
        inputs (Tensor[N, ...]) and targets (Tensor[N, ...]): samples along dim 0.
    """

    def __init__(self, inputs: Tensor, targets: Tensor) -> None:
        if len(inputs) != len(targets):
            raise ValueError(
                f"inputs and targets must have the same length, got {len(inputs)} and "
                f"{len(targets)}"
            )
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def get_batch(self, indices: Tensor, epoch: int = 0) -> tuple[Tensor, Tensor]:
        """``(inputs[indices], targets[indices])``."""
        return self.inputs[indices], self.targets[indices]
