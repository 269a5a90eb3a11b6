"""Argument normalisation and validation of the RoI pooling family, one helper for every op.

Errors are ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape or value) and name the
argument, the shape received and the shape expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import (
    CheckedByCaller,
    autocast_dtype,
    check_same,
    check_shape,
    check_tensor,
    pair,
    real_scalar,
)
from ._dispatch import compute_dtype
from ._roi_common import check_sampling_ratio

# Tensor[R, 5] or one Tensor[R_i, 4] per image (any sequence in eager mode; a list when scripted)
RoIs = Tensor | list[Tensor]

# set (per thread) while a registered op runs on RoIs whose values were already checked
_values_checked = CheckedByCaller()


def values_checked() -> AbstractContextManager[None]:
    """Within: :func:`check_kernel_args` skips the value check of ``rois`` (batch indices and
    coordinates; one device sync each), because the caller has just made it.

    Two callers: the eager public functions, whose :func:`check_roi_args` checked the same
    ``rois`` before calling the registered op, and the ops' autograd backward, which calls the
    backward op on the ``rois`` saved by a forward op that checked them (saved tensors cannot be
    changed in place without autograd refusing the backward). Direct ``torch.ops.torchdcn.*``
    calls, TorchScript and ``torch.compile``'d graphs run without it and are checked. Layout and
    scalar checks (no sync) always run.
    """
    return _values_checked.scope()


class RoIArgs(NamedTuple):
    """Validated arguments, all tensors on one device with one float dtype."""

    input: Tensor
    rois: Tensor  # [R, 5]
    offset: Tensor | None
    mask: Tensor | None
    pooled: tuple[int, int]
    spatial_scale: float
    sampling_ratio: int
    gamma: float
    out_dtype: torch.dtype  # the caller's dtype, to cast the result back to


def roi_tensor(rois: RoIs, input: Tensor, name: str = "rois") -> Tensor:
    """``rois`` as ``[R, 5]`` = ``(batch_index, x1, y1, x2, y2)``: a ``[R, 5]`` tensor as it is, a
    list of per-image ``[R_i, 4]`` boxes with the list position as the batch index. ``name``: the
    argument's name in error messages (``boxes`` for the torchvision-named ops)."""
    if isinstance(rois, Tensor):
        check_tensor(rois, name, 2, "[R, 5]")
        if rois.shape[1] != 5:
            raise ValueError(
                f"{name} must have shape [R, 5] = (batch_index, x1, y1, x2, y2), "
                f"got {tuple(rois.shape)}"
            )
        return rois
    if not isinstance(rois, Sequence) or not all(isinstance(b, Tensor) for b in rois):
        raise TypeError(
            f"{name} must be a Tensor [R, 5] or a list of per-image Tensors [R_i, 4], "
            f"got {type(rois).__name__}"
        )
    if len(rois) > input.shape[0]:
        raise ValueError(
            f"{name} is a list of {len(rois)} per-image box tensors but input has batch size "
            f"{input.shape[0]} (input shape {tuple(input.shape)})"
        )
    if not rois:
        return input.new_zeros(0, 5)
    for i, boxes in enumerate(rois):
        check_tensor(boxes, f"{name}[{i}]", 2, "[R_i, 4]")
        if boxes.shape[1] != 4:
            raise ValueError(
                f"{name}[{i}] must have shape [R_i, 4] = (x1, y1, x2, y2), got {tuple(boxes.shape)}"
            )
        check_same(rois[0], f"{name}[0]", **{f"{name}[{i}]": boxes})
    index = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(rois)])
    return torch.cat([index, torch.cat(list(rois))], 1)


def script_rois(rois: RoIs, input: Tensor) -> Tensor:
    """TorchScript's :func:`roi_tensor`: ``[R, 5]`` from a tensor or a list, in ``input``'s dtype
    when empty. Only the list form is checked here; the registered op checks the ``[R, 5]`` tensor
    (shape, dtype, device, batch indices, coordinates) before any kernel runs."""
    if isinstance(rois, Tensor):
        return rois
    if len(rois) > input.shape[0]:
        raise ValueError(
            f"rois is a list of {len(rois)} per-image box tensors but input has batch size "
            f"{input.shape[0]}"
        )
    parts: list[Tensor] = []
    for i, b in enumerate(rois):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(
                f"rois[{i}] must have shape [R_i, 4] = (x1, y1, x2, y2), got {b.shape}"
            )
        parts.append(torch.cat([torch.full_like(b[:, :1], i), b], 1))
    if len(parts) == 0:
        return input.new_zeros(0, 5)
    return torch.cat(parts)


def _sampling_ratio(value: object) -> int:
    """``value`` as an int (:func:`._checks.real_scalar`: a Python or NumPy integer or a 0-d
    integer tensor, not bool), at most :data:`._roi_common.MAX_ADAPTIVE_GRID`."""
    ratio = real_scalar(value, "sampling_ratio", integral=True)
    check_sampling_ratio(ratio)
    return ratio


def check_roi_args(
    input: Tensor,
    rois: RoIs,
    output_size: int | Sequence[int],
    spatial_scale: float,
    sampling_ratio: int = 0,
    gamma: float = 0.0,
    offset: Tensor | None = None,
    mask: Tensor | None = None,
    position_sensitive: bool = False,
    rois_name: str = "rois",
) -> RoIArgs:
    """Validate and normalise the arguments of any op of the family.

    ``rois`` becomes ``[R, 5]``; ``output_size`` a pair ``(ph, pw)``. Under ``torch.autocast`` every
    tensor is cast to float32 (RoI coordinates need it); float16/bfloat16 are computed in float32
    except by the Triton kernels. ``offset`` is ``[R, 2, ph, pw]``, or ``[R, 2 * C', ph, pw]`` with
    ``C'`` dividing ``C_out`` for the PS op; ``mask`` is ``[R, 1, ph, pw]``; ``spatial_scale`` and
    ``gamma`` are real numbers (Python, NumPy or 0-d tensors), ``sampling_ratio`` an integer (the
    same) at most :data:`._roi_common.MAX_ADAPTIVE_GRID` (64), returned as Python numbers. The
    batch indices must be integers in ``[0, N)`` and the coordinates finite: a data-dependent
    check, skipped while ``torch.compile`` traces and for meta tensors (shape inference only; the
    registered op checks them again on the real tensors, :func:`check_kernel_args`).
    """
    check_tensor(input, "input", 4, "[N, C, H, W]")
    ph, pw = pooled = pair(output_size, "output_size")
    if ph < 1 or pw < 1:
        raise ValueError(f"output_size must be positive, got {output_size}")
    spatial_scale = _scale(spatial_scale)
    sampling_ratio = _sampling_ratio(sampling_ratio)
    gamma = _real(gamma, "gamma")
    rois = roi_tensor(rois, input, rois_name)
    if offset is not None:
        layout = "[R, 2 * C', ph, pw]" if position_sensitive else "[R, 2, ph, pw]"
        check_tensor(offset, "offset", 4, layout)
    if mask is not None:
        check_tensor(mask, "mask", 4, "[R, 1, ph, pw]")

    out_dtype = input.dtype
    if autocast_dtype(input) is not None:
        input, rois, offset, mask = (_float(t) for t in (input, rois, offset, mask))
    check_same(input, "input", **{rois_name: rois}, offset=offset, mask=mask)

    _check_layout(input, rois.shape[0], pooled, offset, mask, position_sensitive)
    if not torch.compiler.is_compiling() and rois.device.type != "meta":  # values exist
        _check_values(rois, input.shape[0], rois_name)
    if compute_dtype(input.device, input.dtype) != input.dtype:
        input, rois, offset, mask = (_float(t) for t in (input, rois, offset, mask))
    return RoIArgs(
        input, rois, offset, mask, pooled, spatial_scale, sampling_ratio, gamma, out_dtype
    )


def check_kernel_args(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    mask: Tensor | None,
    pooled: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
    position_sensitive: bool,
    grad: Tensor | None = None,
) -> None:
    """The registered ops' own check of what a kernel indexes with, forward and backward.

    Eager calls are checked by :func:`check_roi_args` first (and skip the value check here, see
    :func:`values_checked`); TorchScript, ``torch.ops.torchdcn.*`` called directly and
    ``torch.compile`` (which traces with fake tensors, so cannot test values) reach the op
    unchecked, and the kernels read raw memory at the batch index of every RoI. The op's
    implementation runs on real tensors only (fake ones get its fake implementation), so the
    values are tested here: ``rois [R, 5]`` with integer batch indices in ``[0, N)`` and finite
    coordinates, the layout of ``offset``, ``mask`` and (backward) ``grad [R, C_out, ph, pw]``,
    one device and dtype. Errors are :func:`check_roi_args`'s (``rois`` named as the op names it).
    """
    check_tensor(input, "input", 4, "[N, C, H, W]")
    ph, pw = pooled
    if ph < 1 or pw < 1:
        raise ValueError(f"output_size must be positive, got {pooled}")
    _scale(spatial_scale)
    check_sampling_ratio(sampling_ratio)
    real_scalar(gamma, "gamma")
    rois = roi_tensor(rois, input)
    if offset is not None:
        layout = "[R, 2 * C', ph, pw]" if position_sensitive else "[R, 2, ph, pw]"
        check_tensor(offset, "offset", 4, layout)
    if mask is not None:
        check_tensor(mask, "mask", 4, "[R, 1, ph, pw]")
    if grad is not None:
        check_tensor(grad, "grad", 4, "[R, C_out, ph, pw]")
    check_same(input, "input", rois=rois, offset=offset, mask=mask, grad=grad)
    c_out = _check_layout(input, rois.shape[0], pooled, offset, mask, position_sensitive)
    if grad is not None:
        check_shape(grad, "grad", (rois.shape[0], c_out, ph, pw), "[R, C_out, ph, pw]")
    if rois.device.type != "meta" and not _values_checked:
        _check_values(rois, input.shape[0], "rois")


def _real(value: object, name: str) -> float:
    """:func:`._checks.real_scalar` as a float (an int ``1`` becomes ``1.0``; a symbolic value
    under ``torch.compile`` stays as it is)."""
    number = real_scalar(value, name)
    return float(number) if isinstance(number, int) else number


def _scale(value: object) -> float:
    """``spatial_scale``: a finite real number (:func:`._checks.real_scalar`), positive."""
    scale = _real(value, "spatial_scale")
    if scale <= 0:
        raise ValueError(f"spatial_scale must be positive, got {scale}")
    return scale


def _check_layout(
    input: Tensor,
    r: int,
    pooled: tuple[int, int],
    offset: Tensor | None,
    mask: Tensor | None,
    position_sensitive: bool,
) -> int:
    """Channels divisible by ``ph * pw`` (PS ops), ``offset`` and ``mask`` shapes for ``r``
    RoIs; returns ``C_out``."""
    ph, pw = pooled
    c = input.shape[1]
    c_out = c
    if position_sensitive:
        if c % (ph * pw):
            raise ValueError(
                f"position-sensitive pooling needs input channels divisible by ph * pw = "
                f"{ph * pw} (output_size {pooled}), got input of shape {tuple(input.shape)}"
            )
        c_out = c // (ph * pw)
    pairs = 1
    if offset is not None:
        if position_sensitive:
            pairs = offset.shape[1] // 2
            if offset.shape[1] % 2 or pairs == 0 or c_out % pairs:
                raise ValueError(
                    f"offset must have shape [R, 2 * C', ph, pw] with C' dividing the "
                    f"{c_out} output channels (1: class-agnostic), got {tuple(offset.shape)}"
                )
            check_shape(offset, "offset", (r, 2 * pairs, ph, pw), "[R, 2 * C', ph, pw]")
        else:
            check_shape(offset, "offset", (r, 2, ph, pw), "[R, 2, ph, pw]")
    if mask is not None:
        # the kernels scale offset class k's bins by mask[:, k]: one plane per offset pair
        layout = "[R, 1, ph, pw]" if pairs == 1 else "[R, C', ph, pw] (one per offset pair)"
        check_shape(mask, "mask", (r, pairs, ph, pw), layout)
    return c_out


def _float(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.float()


def _check_values(rois: Tensor, batch: int, name: str) -> None:
    """Integral batch indices in ``[0, batch)`` and finite coordinates (one device sync)."""
    if rois.shape[0] == 0:
        return
    b = rois[:, 0]
    bad_index = (b != b.floor()) | (b < 0) | (b >= batch)
    bad_coord = ~torch.isfinite(rois[:, 1:]).all(1)
    bad = torch.nonzero(bad_index | bad_coord).flatten()
    if bad.numel():
        k = int(bad[0])
        raise ValueError(
            f"{name} row {k} = {rois[k].tolist()} is invalid: {name} [R, 5] need an integer batch "
            f"index in [0, {batch}) (input batch size) and finite coordinates; "
            f"{bad.numel()} of {rois.shape[0]} rows are invalid"
        )
