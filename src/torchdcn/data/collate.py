"""How a list of samples becomes a batch (the ``collate_fn`` of a DataLoader).

- :func:`stack_collate` (the default; torch's ``default_collate``): samples ``(image [C, H, W],
  label)`` of one size become ``(images [B, C, H, W], labels [B])``.
- :func:`list_collate` (detection, segmentation): images of different sizes and target dicts stay
  lists, ``([image_0, image_1, ...], [target_0, target_1, ...])``, which is what torchvision's and
  detectron2's detectors take; the model pads them into one tensor itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import default_collate


def stack_collate(batch: Sequence[Any]) -> Any:
    """Stack every field along a new first dimension (torch's ``default_collate``)."""
    return default_collate(batch)


def list_collate(batch: Sequence[Sequence[Any]]) -> tuple[list[Any], ...]:
    """Transpose samples ``[(image, target), ...]`` into fields ``([images], [targets])``,
    without stacking (images may differ in size, targets are dicts of different lengths).

    Raises:
        ValueError: an empty batch, or samples with different numbers of fields.
    """
    if not batch:
        raise ValueError("batch must hold at least one sample, got an empty sequence")
    width = len(batch[0])
    if any(len(sample) != width for sample in batch):
        lengths = sorted({len(sample) for sample in batch})
        raise ValueError(
            f"every sample of a batch must have the same fields, got lengths {lengths}"
        )
    return tuple(list(field) for field in zip(*batch, strict=True))
