"""What the training loop reads: a map-style :class:`torch.utils.data.Dataset`.

A data set for :class:`~torchdcn.engine.Trainer` has ``len(ds)`` samples and ``ds[i]`` (for
example ``(image [C, H, W], label)``, or ``(image, {"boxes": ..., "labels": ...})`` for
detection). Optionally:

- ``set_epoch(epoch)``: for sets whose samples change every epoch (random distortions). The loop
  calls it before each epoch. For a resumed run to end with the weights of an uninterrupted one,
  sample ``i`` of epoch ``e`` must depend only on ``(seed, e, i)``: not on the worker process
  that reads it, nor on what was read before (:class:`~torchdcn.data.DistortedDigits` draws its
  distortions from a generator seeded with ``(seed, epoch)``). Augmenting with the global RNGs
  (``torch.rand``, ``random``, ``numpy.random`` in ``__getitem__``) meets this: the trainer
  seeds them from ``(seed, epoch, i)`` before it reads sample ``i``
  (:class:`~torchdcn.engine.seeded_data.SeededSamples`).
- ``__getitems__(indices) -> [sample, ...]``: read a whole batch at once (a DataLoader uses it in
  place of ``ds[i]`` for each ``i``); for sets that are faster batched.

The older *batch source* protocol (``len`` and ``get_batch(indices, epoch) -> (inputs,
targets)``) still works: :func:`as_dataset` wraps such an object.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import Dataset


@runtime_checkable
class BatchSource(Protocol):
    """A data set read a batch at a time: ``len(source)`` samples and ``get_batch``."""

    def __len__(self) -> int: ...

    def get_batch(self, indices: Tensor, epoch: int = 0) -> tuple[Tensor, Tensor]:
        """``(inputs [B, ...], targets [B, ...])`` of samples ``indices`` (int64 ``[B]``)."""
        ...


class TensorSource(Dataset):
    """Fixed tensors as a data set: sample ``i`` is ``(inputs[i], targets[i])``.

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

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.inputs[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        x, y = self.get_batch(torch.as_tensor(indices, dtype=torch.int64))
        return list(zip(x, y, strict=True))

    def get_batch(self, indices: Tensor, epoch: int = 0) -> tuple[Tensor, Tensor]:
        """``(inputs[indices], targets[indices])`` (the epoch is ignored)."""
        return self.inputs[indices], self.targets[indices]


class BatchSourceDataset(Dataset):
    """A :class:`BatchSource` as a data set: ``ds[i]`` is sample ``i`` of ``get_batch`` in the
    current epoch (:meth:`set_epoch`), and a batch is read with one ``get_batch`` call."""

    def __init__(self, source: BatchSource) -> None:
        self.source, self.epoch = source, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, Any]]:
        x, y = self.source.get_batch(torch.as_tensor(indices, dtype=torch.int64), self.epoch)
        return list(zip(x, y, strict=True))


def as_dataset(data: Any) -> Dataset:
    """``data`` if it is a map-style data set (``len`` and ``[i]``), a :class:`BatchSource`
    wrapped in :class:`BatchSourceDataset`; ``TypeError`` for anything else."""
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return data
    if isinstance(data, BatchSource):
        return BatchSourceDataset(data)
    raise TypeError(
        "the data must be a map-style torch.utils.data.Dataset (len and [i]) or have "
        f"get_batch(indices, epoch); got {type(data).__name__}"
    )
