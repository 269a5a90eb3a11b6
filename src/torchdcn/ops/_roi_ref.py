"""The readable reference of the RoI pooling family (SPEC sections 1 and 4), in plain PyTorch.

It runs on any device, its gradients are autograd's (the exact derivatives of the definitions) and
every fast kernel is tested against it. It implements the kernel interface documented in
:mod:`._roi_cpu` (:func:`integer_pool`, :func:`aligned_pool` and their backward functions, which
are ``torch.func.vjp`` of the forward ones: plain autograd is off inside a custom op's backward).

* Integer bins, average: each bin is a pair of 0/1 row and column indicators, so a RoI's pooled
  map is ``rows @ plane @ cols^T`` divided by the bin areas.
* Integer bins, max (torchvision's ``roi_pool``): bin by bin, the cells outside the bin are masked
  and ``argmax`` picks the first largest cell in row-major order; the value is gathered from
  there, so autograd sends the gradient to that one cell.
* Aligned bins: every sample point of every bin is computed explicitly and read with
  :func:`._bilinear.bilinear_gather` (``"clamp"`` border). RoIs are grouped by their grid size
  (adaptive ``sampling_ratio`` gives each RoI its own), so each group is one gather.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._backend import batch_chunks
from ._bilinear import bilinear_gather, to_table
from ._roi_common import (
    FLT_MAX,
    aligned_geometry,
    as_planes,
    batch_index,
    integer_bins,
    plane_index,
    sample_coords,
)
from ._types import Pair


def average_pool(
    input: Tensor, rois: Tensor, pooled: Pair, spatial_scale: float, position_sensitive: bool
) -> Tensor:
    """Average over integer bins (v1 Eq. 5; ``ps_roi_pool``): ``[R, C_out, ph, pw]``, 0 for a bin
    off the map. Bins: :func:`._roi_common.integer_bins`."""
    _, _, h, w = input.shape
    feat = as_planes(input, pooled, position_sensitive)
    y_lo, y_hi, x_lo, x_hi = integer_bins(rois, spatial_scale, pooled, h, w, position_sensitive)
    ys = torch.arange(h, device=input.device)
    xs = torch.arange(w, device=input.device)
    rows = ((ys >= y_lo[..., None]) & (ys < y_hi[..., None])).to(input.dtype)  # [R, ph, H]
    cols = ((xs >= x_lo[..., None]) & (xs < x_hi[..., None])).to(input.dtype)  # [R, pw, W]
    area = rows.sum(-1)[:, :, None] * cols.sum(-1)[:, None, :]  # [R, ph, pw]
    planes = plane_index(rois, pooled, position_sensitive)
    c_out = feat.shape[1]
    outs = []
    per_roi = 3 * feat.shape[1:].numel() * input.element_size()
    for a, b in batch_chunks(rois.shape[0], per_roi):
        if position_sensitive:  # bin (i, j) reads its own plane
            sums = torch.einsum("riy,rijcyx,rjx->rcij", rows[a:b], feat[planes[a:b]], cols[a:b])
        else:
            sums = torch.einsum("riy,rcyx,rjx->rcij", rows[a:b], feat[planes[a:b, 0, 0]], cols[a:b])
        outs.append(sums)
    sums = torch.cat(outs) if outs else input.new_zeros(0, c_out, *pooled)
    return (sums / area.clamp(min=1)[:, None]).contiguous()  # an empty bin sums to 0


def max_pool(input: Tensor, rois: Tensor, pooled: Pair, spatial_scale: float) -> Tensor:
    """torchvision's ``roi_pool``: the maximum over each integer bin, ``[R, C, ph, pw]``.

    Exactly torchvision's rule: the running maximum starts at ``-FLT_MAX`` and takes a cell only
    when strictly larger (so NaN cells and cells ``<= -FLT_MAX`` are skipped and the first largest
    cell in row-major order wins); an empty bin is 0, a bin with no cell taken is ``-FLT_MAX``.
    The gradient goes to the cell taken.
    """
    _, c, h, w = input.shape
    ph, pw = pooled
    r = rois.shape[0]
    y_lo, y_hi, x_lo, x_hi = integer_bins(rois, spatial_scale, pooled, h, w)
    ys = torch.arange(h, device=input.device)
    xs = torch.arange(w, device=input.device)
    rows = (ys >= y_lo[..., None]) & (ys < y_hi[..., None])  # [R, ph, H]
    cols = (xs >= x_lo[..., None]) & (xs < x_hi[..., None])  # [R, pw, W]
    images = batch_index(rois)
    parts = []
    per_roi = 4 * c * h * w * input.element_size()
    for a, b in batch_chunks(r, per_roi):
        flat = input[images[a:b]].flatten(2)  # [Rs, C, H * W]
        valid = (flat > -FLT_MAX) & ~torch.isnan(flat)
        bins = []
        for i in range(ph):
            for j in range(pw):
                cells = (rows[a:b, i, :, None] & cols[a:b, j, None, :]).flatten(1)  # [Rs, HW]
                take = valid & cells[:, None]
                keyed = torch.where(take, flat.detach(), float("-inf"))
                idx = keyed.argmax(2, keepdim=True)  # the first of equal maxima
                value = flat.gather(2, idx)[..., 0]  # [Rs, C]
                value = torch.where(take.any(2), value, torch.full_like(value, -FLT_MAX))
                empty = ~cells.any(1)[:, None]
                bins.append(torch.where(empty, torch.zeros_like(value), value))
        parts.append(torch.stack(bins, 2).view(b - a, c, ph, pw))
    out = torch.cat(parts) if parts else input.new_zeros(0, c, ph, pw)
    return out.contiguous()


def aligned_pool(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    mask: Tensor | None,
    pooled: Pair,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    gamma: float,
    position_sensitive: bool,
) -> Tensor:
    """RoIAlign with optional per-bin offsets and masks: ``[R, C_out, ph, pw]``.

    ``offset [R, 2 * G, ph, pw]`` (x, y planes per channel group of ``C_out / G`` channels) moves
    every sample of a bin by ``(gamma * off_x * roi_w, gamma * off_y * roi_h)`` cells; ``mask
    [R, G, ph, pw]`` multiplies the bin's average.
    """
    _, _, h, w = input.shape
    ph, pw = pooled
    r = rois.shape[0]
    feat = as_planes(input, pooled, position_sensitive)
    n_planes, c_out = feat.shape[:2]
    groups = 1 if offset is None else offset.shape[1] // 2
    cg = c_out // groups
    # one table row per (plane, group): a sample reads only its group's channels
    table = to_table(feat.reshape(n_planes * groups, cg, h, w))
    plane = plane_index(rois, pooled, position_sensitive)[:, None] * groups
    plane = plane + torch.arange(groups, device=input.device).view(1, groups, 1, 1)
    y1, x1, roi_h, roi_w, grid_h, grid_w = aligned_geometry(
        rois, spatial_scale, pooled, sampling_ratio, aligned
    )
    if offset is None:
        dy = dx = input.new_zeros(r, groups, ph, pw)
    else:
        off = offset.view(r, groups, 2, ph, pw)
        dx = (gamma * roi_w)[:, None, None, None] * off[:, :, 0]
        dy = (gamma * roi_h)[:, None, None, None] * off[:, :, 1]

    parts, order = [], []
    grids = torch.stack([grid_h, grid_w], 1)
    for gh, gw in torch.unique(grids, dim=0).tolist() if r else []:
        idx = torch.nonzero((grids[:, 0] == gh) & (grids[:, 1] == gw)).flatten()
        # the gather holds about six copies of [.., gh, gw, cg] per RoI
        per_roi = 6 * groups * ph * pw * gh * gw * cg * input.element_size()
        for a, b in batch_chunks(len(idx), per_roi):
            sel = idx[a:b]
            ys = sample_coords(y1[sel], roi_h[sel], ph, gh)  # [Rs, ph, gh]
            xs = sample_coords(x1[sel], roi_w[sel], pw, gw)  # [Rs, pw, gw]
            y = ys[:, None, :, None, :, None] + dy[sel][..., None, None]  # [Rs, G, ph, pw, gh, gw]
            x = xs[:, None, None, :, None, :] + dx[sel][..., None, None]
            vals = bilinear_gather(table, plane[sel][..., None, None], y, x, h, w, "clamp")
            parts.append(vals.sum((4, 5)) / max(gh * gw, 1))  # [Rs, G, ph, pw, cg]
            order.append(sel)
    if parts:
        out = torch.cat(parts)[torch.argsort(torch.cat(order))]
    else:
        out = input.new_zeros(0, groups, ph, pw, cg)
    if mask is not None:
        out = out * mask[..., None]
    return out.permute(0, 1, 4, 2, 3).reshape(r, c_out, ph, pw).contiguous()


# --------------------------------------------------------------------------------------------
# The kernel interface (documented in _roi_cpu).


def integer_pool(
    input: Tensor, rois: Tensor, pooled: Pair, spatial_scale: float, mode: str, ps: bool
) -> Tensor:
    """Integer bins: ``mode="max"`` (:func:`max_pool`) or ``"avg"`` (:func:`average_pool`)."""
    if mode == "max":
        return max_pool(input, rois, pooled, spatial_scale)
    return average_pool(input, rois, pooled, spatial_scale, ps)


def integer_pool_backward(
    grad: Tensor, input: Tensor, rois: Tensor, pooled: Pair, spatial_scale: float, mode: str,
    ps: bool,
) -> Tensor:  # fmt: skip
    """``[N, C, H, W]``: the gradient of :func:`integer_pool` for its input."""
    _, vjp = torch.func.vjp(lambda x: integer_pool(x, rois, pooled, spatial_scale, mode, ps), input)
    return vjp(grad)[0]


def aligned_pool_backward(
    grad: Tensor, input: Tensor, rois: Tensor, offset: Tensor | None, mask: Tensor | None,
    *values: Any,
) -> tuple[Tensor, Tensor | None, Tensor | None]:  # fmt: skip
    """Gradients of :func:`aligned_pool` (``values``: its arguments after ``mask``) for input,
    offset and mask; None for an absent offset or mask. ``torch.func.vjp``: plain autograd is off
    inside a custom op's backward."""
    present = [t for t in (input, offset, mask) if t is not None]

    def f(*ts: Tensor) -> Tensor:
        it = iter(ts)
        x, off, msk = (None if t is None else next(it) for t in (input, offset, mask))
        return aligned_pool(x, rois, off, msk, *values)

    _, vjp = torch.func.vjp(f, *present)
    it = iter(vjp(grad))
    return tuple(None if t is None else next(it) for t in (input, offset, mask))  # type: ignore[return-value]
