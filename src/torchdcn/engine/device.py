"""Devices: which one a run uses (:func:`resolve_device`) and moving nested batches to it
(:func:`to_device`).

A batch is whatever a data loader's ``collate_fn`` made: a tensor, a tuple ``(images, labels)``,
or for detection a list of images of different sizes and a list of target dicts (``boxes``,
``labels``, ``masks``). :func:`to_device` walks it, so the training loop never assumes its shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import Tensor

DEVICE_PATTERN = re.compile(r"(auto|cpu|cuda)(:\d+)?")

T = TypeVar("T")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> this process's GPU if CUDA is available, else the CPU; ``"cpu"``,
    ``"cuda"`` and ``"cuda:N"`` as given.

    Raises:
        ValueError: another name (``"tpu"``), or a CUDA device that this machine lacks (checked
            here, so a run fails before it reads data, not at its first step).
    """
    match = DEVICE_PATTERN.fullmatch(str(name))
    if match is None or (match[1] == "auto" and match[2]):
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {name!r}")
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if match[1] == "cuda":
        if not torch.cuda.is_available():
            why = "no CUDA device is visible" if torch.version.cuda else "torch has no CUDA"
            raise ValueError(f"device {name!r} asked for, but {why}; use cpu or auto")
        index = int(match[2][1:]) if match[2] else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible"
            )
    return torch.device(name)


def to_device(obj: T, device: torch.device | str, non_blocking: bool = False) -> T:
    """``obj`` with every tensor in it moved to ``device``.

    Walks dicts (any mapping; rebuilt as a plain ``dict`` keeping the key order), lists, tuples
    and named tuples (rebuilt as the same type); tensors go through ``Tensor.to``; anything else
    (strings, numbers, ``None``, image ids) is returned as is. Tensors already on ``device`` are
    returned unchanged, not copied.

    Example:
        >>> images = [torch.rand(3, 480, 640), torch.rand(3, 512, 512)]
        >>> targets = [{"boxes": torch.rand(2, 4), "labels": torch.tensor([1, 5])}] * 2
        >>> images, targets = to_device((images, targets), "cuda")
    """
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=non_blocking)  # type: ignore[return-value]
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}  # type: ignore[return-value]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(to_device(v, device, non_blocking) for v in obj))  # type: ignore[return-value]
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)  # type: ignore[return-value]
    return obj
