"""Small argument checks shared by the op families; each family has one validation helper built
from these, so every error names the argument, the shape received and the shape expected."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def integer_scalar(value: object) -> int | None:
    """``value`` as an int if it is an integer scalar (int, NumPy integer, 0-d integer tensor;
    not bool), else None."""
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_floating_point():
        if value.is_complex():
            return None
        return int(value.item())
    return None


def pair(value: object, name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``, ``(1, 2) -> (1, 2)``, ``(1,) -> (1, 1)``, as ``torch.nn.functional.conv2d``
    takes them: an integer scalar (int, NumPy integer, 0-d integer tensor) or a sequence (or 1-D
    integer tensor) of one or two of them; anything else is a TypeError naming ``name``."""
    single = integer_scalar(value)
    if single is not None:
        return single, single
    items = None
    if isinstance(value, Tensor) and value.dim() == 1:
        items = list(value.unbind())
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = list(value)
    if items is not None and len(items) in (1, 2):
        ints = [integer_scalar(v) for v in items]
        if all(i is not None for i in ints):
            return (ints[0], ints[-1])  # type: ignore[return-value]
    raise TypeError(
        f"{name} must be an int or a pair of ints (or a sequence of one int, as conv2d takes), "
        f"got {value!r}"
    )


def script_pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """TorchScript's :func:`pair` (an int or a pair of ints, no validation)."""
    if isinstance(value, int):
        return value, value
    return value


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
