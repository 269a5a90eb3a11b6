"""GPU kernels of the RoI pooling family in Triton (the interface of :mod:`._roi_cpu`).

The input is regrouped into planes (:func:`._roi_common.as_planes`: one per image, or per image
and bin for the position-sensitive ops) and read channels-last, so a bin's read is a contiguous
channel vector. A program owns one RoI and a block of channels and holds all ``ph * pw`` bins of
that RoI as the rows of a ``[BLOCK_B, BLOCK_C]`` tile; geometry comes from :mod:`._roi_common`,
computed once per call in float32, so every kernel agrees with the reference.

* Aligned bins (roi_align, ps_roi_align, deform_roi_pool, deform_ps_roi_pool):
  :mod:`._roi_aligned_triton`.
* Integer bins: average (roi_pool's ``mode="avg"``, ps_roi_pool) :mod:`._roi_avg_triton`; max
  (torchvision's roi_pool) :mod:`._roi_max_triton`.

Under ``torch.use_deterministic_algorithms(True)`` no floating-point atomic is used (the sorted
gather of :mod:`._sorted_gather_triton`, or ``index_put_`` for max). float16/bfloat16 are read as
they are and accumulated in float32; float64 is not handled here (the dispatcher runs the
reference).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _roi_aligned_triton, _roi_avg_triton
from ._roi_max_triton import max_pool, max_pool_backward
from ._triton_launch import on_device
from ._types import Pair


def _check(input: Tensor) -> None:
    if input.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"Triton RoI kernels take float32/float16/bfloat16, got {input.dtype}")


def integer_pool(
    input: Tensor, rois: Tensor, pooled: Pair, spatial_scale: float, mode: str, ps: bool
) -> Tensor:
    """``[R, C_out, ph, pw]``: max or mean over integer bins."""
    _check(input)
    with on_device(input):
        if mode == "max":
            return max_pool(input, rois, pooled, spatial_scale)[0]
        return _roi_avg_triton.average_pool(input, rois, pooled, spatial_scale, ps)


def integer_pool_backward(
    grad: Tensor, input: Tensor, rois: Tensor, pooled: Pair, spatial_scale: float, mode: str,
    ps: bool,
) -> Tensor:  # fmt: skip
    """``[N, C, H, W]``: the gradient of :func:`integer_pool`."""
    _check(input)
    with on_device(input):
        if mode == "max":
            return max_pool_backward(grad, input, rois, pooled, spatial_scale)
        return _roi_avg_triton.average_pool_backward(grad, input, rois, pooled, spatial_scale, ps)


def aligned_pool(
    input: Tensor, rois: Tensor, offset: Tensor | None, mask: Tensor | None, pooled: Pair,
    spatial_scale: float, sampling_ratio: int, aligned: bool, gamma: float, ps: bool,
) -> Tensor:  # fmt: skip
    """``[R, C_out, ph, pw]``: RoIAlign with optional offsets and masks."""
    _check(input)
    args = (pooled, spatial_scale, sampling_ratio, aligned, gamma, ps)
    with on_device(input):
        return _roi_aligned_triton.aligned_pool(input, rois, offset, mask, *args)


def aligned_pool_backward(
    grad: Tensor, input: Tensor, rois: Tensor, offset: Tensor | None, mask: Tensor | None,
    pooled: Pair, spatial_scale: float, sampling_ratio: int, aligned: bool, gamma: float,
    ps: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:  # fmt: skip
    """``(grad_input, grad_offset or None, grad_mask or None)``."""
    _check(input)
    args = (pooled, spatial_scale, sampling_ratio, aligned, gamma, ps)
    with on_device(input):
        return _roi_aligned_triton.aligned_pool_backward(grad, input, rois, offset, mask, *args)
