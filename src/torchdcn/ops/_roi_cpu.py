"""Fast CPU kernels of the RoI pooling family (Numba), float32 and float64 CPU tensors.

Kernel interface
================
Every kernel module of the family (this one, the reference ``_roi_ref`` and the GPU
``_roi_triton``) provides these four functions; :mod:`._roi_ops` picks the module. Arguments
arrive validated: tensors on one device with one dtype, ``rois`` ``[R, 5]`` = ``(batch_index, x1,
y1, x2, y2)`` in image pixels with integral batch indices in ``[0, N)``, ``grad`` contiguous,
``pooled = (ph, pw)``. ``ps`` (position-sensitive) regroups the input into planes
(:func:`._roi_common.as_planes`): ``C_out = C / (ph * pw)``, else ``C_out = C``. Geometry and
conventions: :mod:`._roi_common`. ::

    integer_pool(input, rois, pooled, spatial_scale, mode, ps) -> Tensor[R, C_out, ph, pw]
    integer_pool_backward(grad, input, rois, pooled, spatial_scale, mode, ps)
        -> Tensor[N, C, H, W]
    aligned_pool(input, rois, offset, mask, pooled, spatial_scale, sampling_ratio, aligned,
                 gamma, ps) -> Tensor[R, C_out, ph, pw]
    aligned_pool_backward(grad, input, rois, offset, mask, pooled, spatial_scale,
                          sampling_ratio, aligned, gamma, ps)
        -> (grad_input [N, C, H, W], grad_offset or None, grad_mask or None)

* Integer bins: ``mode="max"`` is torchvision's ``roi_pool`` (``ps`` False), ``mode="avg"`` v1
  Eq. 5 (``roi_pool(mode="avg")``) or, with ``ps``, ``ps_roi_pool``.
* Aligned bins (``sampling_ratio <= 0`` is adaptive; ``aligned`` shifts RoIs by -0.5 cell):
  ``roi_align`` and ``ps_roi_align`` (no offset, no mask, ``gamma`` unused), ``deform_roi_pool``
  (``offset [R, 2, ph, pw]``, ``mask [R, 1, ph, pw]``, either may be None) and
  ``deform_ps_roi_pool`` (``offset [R, 2 * C', ph, pw]``, ``C'`` dividing ``C_out``: output
  channel ``c`` uses pair ``c // (C_out / C')``; no mask).

How the CPU kernels work
========================
The input planes are copied once to channels-last, so every read is a contiguous channel vector;
outputs and output gradients are read and written in their ``[R, C, ph, pw]`` layout directly.
Aligned bins: :mod:`._roi_aligned_cpu`; integer bins, average (summed-area tables):
:mod:`._roi_avg_cpu`; max: :mod:`._roi_max_cpu`. Small calls run on fewer threads
(:mod:`._numba_threads`).
"""

from __future__ import annotations

from torch import Tensor

from ._roi_aligned_cpu import aligned_pool, aligned_pool_backward
from ._roi_avg_cpu import average_pool, average_pool_backward
from ._roi_max_cpu import max_pool, max_pool_backward
from ._types import Pair

__all__ = ["aligned_pool", "aligned_pool_backward", "integer_pool", "integer_pool_backward"]


def integer_pool(
    input: Tensor, rois: Tensor, pooled: Pair, spatial_scale: float, mode: str, ps: bool
) -> Tensor:
    """``[R, C_out, ph, pw]``: max or mean over integer bins."""
    if mode == "max":
        return max_pool(input, rois, pooled, spatial_scale)[0]
    return average_pool(input, rois, pooled, spatial_scale, ps)


def integer_pool_backward(
    grad: Tensor, input: Tensor, rois: Tensor, pooled: Pair, spatial_scale: float, mode: str,
    ps: bool,
) -> Tensor:  # fmt: skip
    """``[N, C, H, W]``: the gradient of :func:`integer_pool`."""
    if mode == "max":
        return max_pool_backward(grad, input, rois, pooled, spatial_scale)
    return average_pool_backward(grad, input, rois, pooled, spatial_scale, ps)
