"""Small argument checks shared by the op families; each family has one validation helper built
from these, so every error names the argument, the shape received and the shape expected."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``, ``(1, 2) -> (1, 2)``; anything else is a TypeError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return value, value
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def check_tensor(t: object, name: str, ndim: int, layout: str) -> Tensor:
    """``t`` is a floating-point tensor with ``ndim`` dimensions (``layout`` describes them)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor of shape {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D with shape {layout}, got {t.dim()}-D shape {tuple(t.shape)}"
        )
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def check_same(reference: Tensor, ref_name: str, **others: Tensor | None) -> None:
    """Every tensor in ``others`` has ``reference``'s device and dtype."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != reference.device:
            raise ValueError(
                f"{name} is on {t.device} but {ref_name} is on {reference.device}; "
                "all tensors must be on one device"
            )
        if t.dtype != reference.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but {ref_name} has dtype {reference.dtype}; "
                "all tensors must share one dtype (cast them, or use torch.autocast)"
            )


def check_shape(t: Tensor, name: str, expected: Sequence[int], layout: str) -> None:
    """``t.shape == expected``; ``layout`` spells the expected shape symbolically."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {layout} = {tuple(expected)}, got {tuple(t.shape)}"
        )


def autocast_dtype(input: object) -> torch.dtype | None:
    """The autocast dtype in force for ``input``'s device, or None (also on devices, such as
    ``meta``, that have no autocast)."""
    if not isinstance(input, Tensor):
        return None
    try:
        enabled = torch.is_autocast_enabled(input.device.type)
    except RuntimeError:
        return None
    return torch.get_autocast_dtype(input.device.type) if enabled else None


def autocast_off(input: Tensor) -> AbstractContextManager:
    """A context in which the kernels' own products are not recast by an enclosing autocast
    (a no-op when autocast is off for ``input``'s device, or that device has none)."""
    if autocast_dtype(input) is None:
        return nullcontext()
    return torch.autocast(input.device.type, enabled=False)
