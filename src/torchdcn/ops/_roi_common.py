"""What every kernel of the RoI pooling family shares: RoI geometry, plane layout, dispatch.

Geometry (SPEC sections 1 and 4), written once so the reference and the fast kernels cannot drift:

* Integer bins (``roi_pool`` max and average, ``ps_roi_pool``): :func:`integer_bins`.
* Real-valued bins with a grid of bilinear samples (``roi_align`` and everything built on it):
  :func:`aligned_geometry` and :func:`sample_coords`.

Planes: the position-sensitive ops read, for bin ``(i, j)`` of output channel ``c``, input channel
``(c * ph + i) * pw + j``. :func:`as_planes` regroups the input into ``P`` planes of ``C_out``
channels (``P = N`` for the plain ops, ``P = N * ph * pw`` for the PS ones, plane ``n * ph * pw +
i * pw + j``), so every kernel reads "plane ``plane_index[r, i, j]``, all its channels" and the PS
ops are the plain ones with another plane index (the ``plane`` of :mod:`._bilinear`).

The registered ops and the choice of kernel module: :mod:`._roi_ops`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._types import Pair

# torchvision's max pooling starts every bin at -FLT_MAX (float32's largest finite, in any dtype)
FLT_MAX = 3.4028234663852886e38


def batch_index(rois: Tensor) -> Tensor:
    """``[R]`` long: the image of each RoI (column 0 of ``rois [R, 5]``)."""
    return rois[:, 0].long()


def _round_half_away(v: Tensor) -> Tensor:
    """C's ``round`` (halves away from zero, as Caffe and torchvision round RoIs), exact in any
    float dtype: ``v - trunc(v)`` is exact, so no ``v + 0.5`` rounding can carry."""
    t = torch.trunc(v)
    return t + torch.sign(v) * ((v - t).abs() >= 0.5).to(v.dtype)


# Adaptive sampling (``sampling_ratio <= 0``) takes ``ceil(roi_size / bins)`` samples per bin along
# each axis; torchvision does not bound it, so one RoI of +-1e6 cells costs ~1e10 samples per bin.
# Here the grid is capped at this many samples per axis: results equal torchvision's whenever a bin
# spans at most 64 feature cells (any RoI up to 448 cells with 7 x 7 bins) and differ only beyond.
MAX_ADAPTIVE_GRID = 64


def check_sampling_ratio(sampling_ratio: int) -> None:
    """An explicit grid (``sampling_ratio > 0``) is bounded by the same cap as the adaptive one:
    ``sampling_ratio`` above :data:`MAX_ADAPTIVE_GRID` is a ValueError (a grid of 100000 x 100000
    samples per bin would run for minutes and overflow a float32 sum)."""
    if sampling_ratio > MAX_ADAPTIVE_GRID:
        raise ValueError(
            f"sampling_ratio must be at most {MAX_ADAPTIVE_GRID} samples per bin along each axis "
            f"(MAX_ADAPTIVE_GRID, the adaptive grid's cap; <= 0 for adaptive), got {sampling_ratio}"
        )


def integer_bins(
    rois: Tensor,
    spatial_scale: float,
    pooled: Pair,
    height: int,
    width: int,
    position_sensitive: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Integer bins of torchvision's ``roi_pool`` / ``ps_roi_pool``, clipped to the map.

    The scaled corners (``rois * spatial_scale`` in the RoIs' dtype) are rounded, halves away from
    zero, to cells ``x1, x2``. ``roi_pool`` (and v1 Eq. 5's average) counts both ends: the RoI is
    ``w = max(x2 - x1 + 1, 1)`` cells wide; ``ps_roi_pool`` does not: ``w = max(x2 - x1, 1)``. Bin
    ``j`` spans ``x1 + floor(j * b) <= x < x1 + ceil((j + 1) * b)`` with ``b = w / pw`` computed in
    the RoIs' dtype (as torchvision, so the edges round alike), rows likewise. The edges are clipped
    to ``[0, width]``; ``ps_roi_pool`` clips to ``[0, width - 1]``, so (as in torchvision) it never
    reads the last row or column of the map.

    Returns:
        ``y_lo, y_hi`` (``[R, ph]``) and ``x_lo, x_hi`` (``[R, pw]``), long: bin ``(i, j)`` covers
        rows ``y_lo[r, i] <= y < y_hi[r, i]`` and columns ``x_lo[r, j] <= x < x_hi[r, j]``;
        ``hi >= lo`` always, an empty range where the bin lies off the map.
    """
    dtype = rois.dtype
    scale = torch.tensor(spatial_scale, dtype=dtype, device=rois.device)
    # clamped first so absurd coordinates cannot overflow int64
    corners = _round_half_away(rois[:, 1:] * scale).clamp(-(2**31), 2**31).long()
    x1, y1, x2, y2 = corners.unbind(1)
    extra = 0 if position_sensitive else 1

    def edges(start: Tensor, end: Tensor, bins: int, limit: int) -> tuple[Tensor, Tensor]:
        size = (end - start + extra).clamp(min=1).to(dtype)[:, None]
        step = size / bins
        k = torch.arange(bins + 1, device=rois.device).to(dtype)
        lo = start[:, None] + torch.floor(k[:-1] * step).long()
        hi = start[:, None] + torch.ceil(k[1:] * step).long()
        top = limit - 1 if position_sensitive else limit
        lo, hi = lo.clamp(0, max(top, 0)), hi.clamp(0, max(top, 0))
        return lo, torch.maximum(hi, lo)

    return (*edges(y1, y2, pooled[0], height), *edges(x1, x2, pooled[1], width))


def aligned_geometry(
    rois: Tensor,
    spatial_scale: float,
    pooled: Pair,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """RoIAlign geometry in feature cells, all ``[R]`` (input's dtype; grids long), torchvision's.

    ``y1 = rois_y1 * spatial_scale - 0.5`` (no shift when ``aligned`` is False), ``roi_h = y2 - y1``
    at least 1 when not ``aligned`` (the legacy Detectron rule: an inverted RoI is the cell at its
    first corner) and unclamped when ``aligned`` (an inverted RoI steps backwards). The grid has
    ``sampling_ratio`` rows per bin, or ``ceil(roi_h / ph)`` when ``sampling_ratio <= 0``: 0 for a
    zero-size or inverted aligned RoI (no samples: the bin is 0, as in torchvision), at most
    :data:`MAX_ADAPTIVE_GRID`. Kernels divide a bin's sum by ``max(grid_h * grid_w, 1)``. An
    explicit ``sampling_ratio`` above :data:`MAX_ADAPTIVE_GRID` is a ValueError
    (:func:`check_sampling_ratio`; checked here too for calls of the registered op itself).

    Returns:
        ``y1, x1, roi_h, roi_w, grid_h, grid_w``.
    """
    check_sampling_ratio(sampling_ratio)
    shift = 0.5 if aligned else 0.0
    box = rois[:, 1:] * spatial_scale - shift
    x1, y1, x2, y2 = box.unbind(1)
    roi_h = y2 - y1
    roi_w = x2 - x1
    if not aligned:
        roi_h = roi_h.clamp(min=1.0)
        roi_w = roi_w.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full_like(batch_index(rois), sampling_ratio)
        grid_w = grid_h
    else:
        # clamped in floating point first: a huge RoI's ceil may not fit in int64
        grid_h = torch.ceil(roi_h / pooled[0]).clamp(0, MAX_ADAPTIVE_GRID).long()
        grid_w = torch.ceil(roi_w / pooled[1]).clamp(0, MAX_ADAPTIVE_GRID).long()
    return y1, x1, roi_h, roi_w, grid_h, grid_w


def aligned_tables(
    rois: Tensor, spatial_scale: float, pooled: Pair, sampling_ratio: int, aligned: bool,
    gamma: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Per-RoI constants of the fast aligned kernels, from :func:`aligned_geometry`: ``geo [R, 6]``
    = ``(y1, x1, bin_h, bin_w, gamma * roi_h, gamma * roi_w)`` in the RoIs' dtype (the last two
    scale the normalised offsets) and ``ints [R, 3]`` = ``(image, grid_h, grid_w)``, long."""
    y1, x1, roi_h, roi_w, gh, gw = aligned_geometry(
        rois, spatial_scale, pooled, sampling_ratio, aligned
    )
    geo = (y1, x1, roi_h / pooled[0], roi_w / pooled[1], gamma * roi_h, gamma * roi_w)
    return torch.stack(geo, 1), torch.stack([batch_index(rois), gh, gw], 1)


def sample_coords(start: Tensor, size: Tensor, bins: int, grid: int) -> Tensor:
    """``[R, bins, grid]`` sample positions along one axis for RoIs sharing one grid size:
    ``start + i * bin + (g + 0.5) * bin / grid`` with ``bin = size / bins``."""
    bin_size = (size / bins)[:, None, None]
    i = torch.arange(bins, device=start.device, dtype=start.dtype)[None, :, None]
    g = torch.arange(grid, device=start.device, dtype=start.dtype)[None, None, :]
    return start[:, None, None] + i * bin_size + (g + 0.5) * bin_size / grid


def as_planes(input: Tensor, pooled: Pair, position_sensitive: bool) -> Tensor:
    """``[N, C, H, W]`` -> planes ``[P, C_out, H, W]`` (a view; see the module docstring)."""
    if not position_sensitive:
        return input
    n, c, h, w = input.shape
    k = pooled[0] * pooled[1]
    return input.view(n, c // k, k, h, w).transpose(1, 2).reshape(n * k, c // k, h, w)


def planes_channels_last(input: Tensor, pooled: Pair, position_sensitive: bool) -> Tensor:
    """The planes of :func:`as_planes` copied channels-last, ``[P, H, W, C_out]`` contiguous."""
    return as_planes(input, pooled, position_sensitive).permute(0, 2, 3, 1).contiguous()


def from_planes(grad_cl: Tensor, pooled: Pair, position_sensitive: bool) -> Tensor:
    """Gradient of the planes, channels-last ``[P, H, W, C_out]`` -> ``[N, C, H, W]``."""
    p, h, w, c = grad_cl.shape
    if not position_sensitive:
        return grad_cl.permute(0, 3, 1, 2).contiguous()
    k = pooled[0] * pooled[1]
    # [N, k, H, W, C_out] -> [N, C_out, k, H, W]: input channel c * k + bin
    return grad_cl.reshape(p // k, k, h, w, c).permute(0, 4, 1, 2, 3).reshape(p // k, c * k, h, w)


def plane_index(rois: Tensor, pooled: Pair, position_sensitive: bool) -> Tensor:
    """``[R, ph, pw]`` long: the plane (of :func:`as_planes`) bin ``(i, j)`` of RoI ``r`` reads."""
    ph, pw = pooled
    b = batch_index(rois)[:, None, None]
    if not position_sensitive:
        return b.expand(-1, ph, pw)
    bins = torch.arange(ph * pw, device=rois.device).view(1, ph, pw)
    return b * (ph * pw) + bins
