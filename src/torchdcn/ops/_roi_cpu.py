"""Fast CPU kernels of the RoI pooling family (Numba), float32 and float64 CPU tensors.

Kernel interface
================
Every kernel module of the family (this one, the reference ``_roi_ref``, a GPU ``_roi_triton``)
provides these functions; the dispatcher (:func:`._roi_common.kernel_function`) falls back to the
reference for any a module lacks. Arguments arrive validated: tensors on one device with one dtype,
``rois`` ``[R, 5]`` = ``(batch_index, x1, y1, x2, y2)`` in image pixels with integral batch indices
in ``[0, N)``, ``grad`` contiguous. Geometry and conventions: :mod:`._roi_common`.

Integer bins (v1 Eq. 5)::

    forward_roi_pool(input, rois, pooled_h, pooled_w, spatial_scale) -> Tensor[R, C, ph, pw]
    backward_roi_pool(grad, input, rois, pooled_h, pooled_w, spatial_scale) -> Tensor[N, C, H, W]
    forward_ps_roi_pool(input, rois, pooled_h, pooled_w, spatial_scale)
        -> Tensor[R, C / (ph * pw), ph, pw]
    backward_ps_roi_pool(grad, input, rois, pooled_h, pooled_w, spatial_scale)
        -> Tensor[N, C, H, W]

Aligned bins (``sampling_ratio <= 0`` is adaptive; ``aligned`` shifts RoIs by -0.5 cell)::

    forward_roi_align(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned)
        -> Tensor[R, C, ph, pw]
    backward_roi_align(grad, input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio,
                       aligned) -> Tensor[N, C, H, W]
    forward_ps_roi_align(...same as forward_roi_align...) -> Tensor[R, C / (ph * pw), ph, pw]
    backward_ps_roi_align(...same as backward_roi_align...) -> Tensor[N, C, H, W]
    forward_deform_roi_pool(input, rois, offset, mask, pooled_h, pooled_w, spatial_scale,
                            sampling_ratio, aligned, gamma) -> Tensor[R, C, ph, pw]
    backward_deform_roi_pool(grad, input, rois, offset, mask, pooled_h, pooled_w, spatial_scale,
                             sampling_ratio, aligned, gamma)
        -> (grad_input [N, C, H, W], grad_offset [R, 2, ph, pw] or None,
            grad_mask [R, 1, ph, pw] or None)
    forward_deform_ps_roi_pool(input, rois, offset, pooled_h, pooled_w, spatial_scale,
                               sampling_ratio, aligned, gamma) -> Tensor[R, C / (ph * pw), ph, pw]
    backward_deform_ps_roi_pool(grad, input, rois, offset, pooled_h, pooled_w, spatial_scale,
                                sampling_ratio, aligned, gamma)
        -> (grad_input [N, C, H, W], grad_offset [R, 2 * C', ph, pw] or None)

``offset`` and ``mask`` may be None (no shift, no modulation). ``offset`` of the PS op has ``C'``
(x, y) plane pairs, ``C'`` dividing ``C_out = C / (ph * pw)``: output channel ``c`` uses pair
``c // (C_out / C')``. ``grad`` has the forward output's shape.

How these kernels work
======================
The input is regrouped into planes (:func:`._roi_common.as_planes`) and copied once to
channels-last, so every read is a contiguous channel vector; outputs and output gradients are read
and written in their ``[R, C, ph, pw]`` layout directly (one strided pass per bin, no transposed
copies).

* Aligned bins: the copy gets one zero row and column appended, so the four corners of any sample
  are in bounds (the clamp border pins a sample to the last row with a zero weight on the row
  below). Geometry is float64, the channel loops run in the input's dtype. The forward is parallel
  over (RoI, bin row). The backward is parallel over channel runs ("pieces"): each owns its slice
  of the input gradient, so the scatter has no write conflicts, and writes its share of the
  offset/mask gradients (reductions over its channels, reassociated so they vectorise) to its own
  row of a float64 buffer, summed afterwards.
* Integer bins: a float64 summed-area table per plane; a bin's sum is four reads. The backward is
  its adjoint: ``+-grad / area`` at the four corners, then suffix sums, parallel over (plane,
  channel run).

Small calls run on fewer threads (:func:`_threads`): waking a thread costs more than they take.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from ._roi_common import (
    aligned_geometry,
    as_planes,
    batch_index,
    from_planes,
    integer_bins,
    plane_index,
)

# --------------------------------------------------------------------------------------------
# Aligned bins: Numba.


@njit(cache=True, inline="always")
def _corner(y, x, height, width):
    """RoIAlign border (SPEC 1): ``ok`` False where the sample reads 0 (also for NaN); else the
    top-left corner, the fractions, and whether y and x are free (not clamped: gradient flows)."""
    if not (y >= -1.0 and y <= height and x >= -1.0 and x <= width):
        return False, 0, 0, 0.0, 0.0, False, False
    free_y = y > 0.0 and y < height - 1
    free_x = x > 0.0 and x < width - 1
    if y <= 0.0:
        y = 0.0
    elif y >= height - 1:
        y = height - 1.0
    if x <= 0.0:
        x = 0.0
    elif x >= width - 1:
        x = width - 1.0
    y0 = math.floor(y)
    x0 = math.floor(x)
    return True, int(y0), int(x0), y - y0, x - x0, free_y, free_x


@njit(parallel=True, cache=True)
def _align_forward_kernel(xpad, boxes, ints, off, msk, has_off, has_mask, ps, groups, out):
    """``out[r, c, i, j]`` = mask x the mean over bin (i, j)'s samples of the bilinear reads."""
    _, hp, wp, c_out = xpad.shape
    height, width = hp - 1, wp - 1
    n_roi, _, ph, pw = out.shape
    cg = c_out // groups
    for t in prange(n_roi * ph):
        r = t // ph
        i = t - r * ph
        acc = np.empty(c_out, dtype=xpad.dtype)
        b, gh, gw = ints[r, 0], ints[r, 1], ints[r, 2]
        y1, x1, bh, bw = boxes[r, 0], boxes[r, 1], boxes[r, 2], boxes[r, 3]
        sy, sx = boxes[r, 4], boxes[r, 5]
        inv = 1.0 / (gh * gw)
        for j in range(pw):
            p = b * (ph * pw) + i * pw + j if ps else b
            acc[:] = 0
            for g in range(groups):
                dy = sy * off[r, g, 1, i, j] if has_off else 0.0
                dx = sx * off[r, g, 0, i, j] if has_off else 0.0
                lo = g * cg
                dst = acc[lo : lo + cg]
                for iy in range(gh):
                    y = y1 + i * bh + (iy + 0.5) * bh / gh + dy
                    for ix in range(gw):
                        x = x1 + j * bw + (ix + 0.5) * bw / gw + dx
                        ok, y0, x0, ly, lx, _, _ = _corner(y, x, height, width)
                        if not ok:
                            continue
                        w00 = xpad.dtype.type((1 - ly) * (1 - lx))
                        w01 = xpad.dtype.type((1 - ly) * lx)
                        w10 = xpad.dtype.type(ly * (1 - lx))
                        w11 = xpad.dtype.type(ly * lx)
                        r00 = xpad[p, y0, x0, lo : lo + cg]
                        r01 = xpad[p, y0, x0 + 1, lo : lo + cg]
                        r10 = xpad[p, y0 + 1, x0, lo : lo + cg]
                        r11 = xpad[p, y0 + 1, x0 + 1, lo : lo + cg]
                        for c in range(cg):
                            dst[c] += w00 * r00[c] + w01 * r01[c] + w10 * r10[c] + w11 * r11[c]
                scale = xpad.dtype.type(inv * (msk[r, g, i, j] if has_mask else 1.0))
                for c in range(cg):
                    out[r, lo + c, i, j] = dst[c] * scale


@njit(cache=True, fastmath={"reassoc", "contract"})
def _dots(go, r00, r01, r10, r11):
    """``go . r`` for the four corner vectors; reassociation lets these reductions vectorise (only
    here: the geometry keeps strict IEEE order, as in the forward)."""
    d00 = d01 = d10 = d11 = go.dtype.type(0.0)
    for c in range(go.shape[0]):
        v = go[c]
        d00 += v * r00[c]
        d01 += v * r01[c]
        d10 += v * r10[c]
        d11 += v * r11[c]
    return d00, d01, d10, d11


@njit(parallel=True, cache=True)
def _align_backward_kernel(
    grad, xpad, boxes, ints, off, msk, has_off, has_mask, ps, need_geo, pieces, gxpad, part
):
    """Input gradient into ``gxpad``; with ``need_geo``, piece ``(g, s)``'s share of the offset
    (x, y) and mask gradients of group ``g`` into ``part[s, r, g, 0:3]``."""
    _, hp, wp, _ = xpad.shape
    height, width = hp - 1, wp - 1
    n_roi, _, ph, pw = grad.shape
    for t in prange(pieces.shape[0]):
        g, s, lo, hi = pieces[t, 0], pieces[t, 1], pieces[t, 2], pieces[t, 3]
        go = np.empty(hi - lo, dtype=xpad.dtype)
        for r in range(n_roi):
            b, gh, gw = ints[r, 0], ints[r, 1], ints[r, 2]
            y1, x1, bh, bw = boxes[r, 0], boxes[r, 1], boxes[r, 2], boxes[r, 3]
            sy, sx = boxes[r, 4], boxes[r, 5]
            inv = 1.0 / (gh * gw)
            for i in range(ph):
                for j in range(pw):
                    p = b * (ph * pw) + i * pw + j if ps else b
                    dy = sy * off[r, g, 1, i, j] if has_off else 0.0
                    dx = sx * off[r, g, 0, i, j] if has_off else 0.0
                    coef = inv * (msk[r, g, i, j] if has_mask else 1.0)
                    for c in range(hi - lo):
                        go[c] = grad[r, lo + c, i, j]
                    acc_y = 0.0
                    acc_x = 0.0
                    acc_v = 0.0
                    for iy in range(gh):
                        y = y1 + i * bh + (iy + 0.5) * bh / gh + dy
                        for ix in range(gw):
                            x = x1 + j * bw + (ix + 0.5) * bw / gw + dx
                            ok, y0, x0, ly, lx, free_y, free_x = _corner(y, x, height, width)
                            if not ok:
                                continue
                            w00 = xpad.dtype.type((1 - ly) * (1 - lx) * coef)
                            w01 = xpad.dtype.type((1 - ly) * lx * coef)
                            w10 = xpad.dtype.type(ly * (1 - lx) * coef)
                            w11 = xpad.dtype.type(ly * lx * coef)
                            a00 = gxpad[p, y0, x0, lo:hi]
                            a01 = gxpad[p, y0, x0 + 1, lo:hi]
                            a10 = gxpad[p, y0 + 1, x0, lo:hi]
                            a11 = gxpad[p, y0 + 1, x0 + 1, lo:hi]
                            for c in range(hi - lo):
                                v = go[c]
                                a00[c] += w00 * v
                                a01[c] += w01 * v
                                a10[c] += w10 * v
                                a11[c] += w11 * v
                            if not need_geo:
                                continue
                            # dot products of the output gradient with the four corners
                            r00 = xpad[p, y0, x0, lo:hi]
                            r01 = xpad[p, y0, x0 + 1, lo:hi]
                            r10 = xpad[p, y0 + 1, x0, lo:hi]
                            r11 = xpad[p, y0 + 1, x0 + 1, lo:hi]
                            d00, d01, d10, d11 = _dots(go, r00, r01, r10, r11)
                            if free_y:
                                acc_y += (1 - lx) * (d10 - d00) + lx * (d11 - d01)
                            if free_x:
                                acc_x += (1 - ly) * (d01 - d00) + ly * (d11 - d10)
                            top = (1 - lx) * d00 + lx * d01
                            acc_v += (1 - ly) * top + ly * ((1 - lx) * d10 + lx * d11)
                    if need_geo:
                        part[s, r, g, 0, i, j] = acc_x * coef * sx
                        part[s, r, g, 1, i, j] = acc_y * coef * sy
                        part[s, r, g, 2, i, j] = acc_v * inv


def _pieces(c_out: int, groups: int, threads: int) -> tuple[np.ndarray, int]:
    """Channel runs ``[n, 4] = (group, split, lo, hi)`` for the backward and the number of splits
    per group: enough runs for every thread, each at least 32 channels, starts 16-aligned (so two
    threads rarely write one cache line)."""
    cg = c_out // groups
    want = 2 * threads
    splits = max(1, min(-(-want // groups), cg // 32))
    step = -(-cg // splits)
    if cg > 16:
        step = -(-step // 16) * 16
    rows = [
        (g, s, g * cg + lo, g * cg + min(cg, lo + step))
        for g in range(groups)
        for s, lo in enumerate(range(0, cg, step))
    ]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4), -(-cg // step)


# Below this many channel-sample products per thread, waking more threads costs more than it saves
# (a parallel launch costs milliseconds on a loaded machine; a tiny RoI batch takes microseconds).
_WORK_PER_THREAD = 1 << 16


@contextlib.contextmanager
def _threads(work: int) -> Iterator[int]:
    """Run the kernels inside on as many Numba threads as ``work`` deserves; yields that number."""
    available = numba.get_num_threads()
    use = max(1, min(available, work // _WORK_PER_THREAD))
    numba.set_num_threads(use)
    try:
        yield use
    finally:
        numba.set_num_threads(available)


class _Aligned:
    """The arrays both aligned kernels take, built once per call."""

    def __init__(
        self, input, rois, offset, mask, pooled, scale, sampling_ratio, aligned, gamma, ps
    ):
        n_roi = rois.shape[0]
        ph, pw = pooled
        self.pooled, self.ps = pooled, ps
        y1, x1, roi_h, roi_w, gh, gw = aligned_geometry(
            rois, scale, pooled, sampling_ratio, aligned
        )
        geo = (y1, x1, roi_h / ph, roi_w / pw, gamma * roi_h, gamma * roi_w)
        self.boxes = torch.stack(geo, 1).double().numpy()
        self.ints = torch.stack([batch_index(rois), gh, gw], 1).numpy()
        feat = as_planes(input, pooled, ps)
        n_planes, c_out, h, w = feat.shape
        self.xpad = input.new_zeros(n_planes, h + 1, w + 1, c_out)
        self.xpad[:, :h, :w] = feat.permute(0, 2, 3, 1)
        self.groups = 1
        dummy = np.zeros((1, 1, 1, 1), dtype=self.xpad.numpy().dtype)
        self.off = dummy[..., None]
        self.msk = dummy
        if offset is not None:
            self.groups = offset.shape[1] // 2
            self.off = offset.reshape(n_roi, self.groups, 2, ph, pw).contiguous().numpy()
        if mask is not None:
            self.msk = mask.contiguous().numpy()
        self.has_off, self.has_mask = offset is not None, mask is not None

    def _work(self) -> int:
        """Channel-sample products of one pass (samples counted per group)."""
        grids = self.ints[:, 1] * self.ints[:, 2]
        return int(grids.sum()) * self.pooled[0] * self.pooled[1] * self.xpad.shape[-1]

    def forward(self) -> Tensor:
        n_roi = self.ints.shape[0]
        out = self.xpad.new_empty(n_roi, self.xpad.shape[-1], *self.pooled)
        with _threads(self._work()):
            _align_forward_kernel(
                self.xpad.numpy(), self.boxes, self.ints, self.off, self.msk, self.has_off,
                self.has_mask, self.ps, self.groups, out.numpy(),
            )  # fmt: skip
        return out

    def backward(self, grad: Tensor, need_geo: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Gradients of input ``[N, C, H, W]``, offset ``[R, 2G, ph, pw]``, mask ``[R, G, ph, pw]``
        (the last two zero-sized when ``need_geo`` is False)."""
        n_roi, (ph, pw) = self.ints.shape[0], self.pooled
        gxpad = torch.zeros_like(self.xpad)
        with _threads(self._work()) as threads:
            pieces, splits = _pieces(self.xpad.shape[-1], self.groups, threads)
            shape = (splits, n_roi, self.groups, 3, ph, pw) if need_geo else (1, 1, 1, 1, 1, 1)
            part = np.zeros(shape, dtype=np.float64)
            _align_backward_kernel(
                grad.contiguous().numpy(), self.xpad.numpy(), self.boxes, self.ints, self.off,
                self.msk, self.has_off, self.has_mask, self.ps, need_geo, pieces, gxpad.numpy(),
                part,
            )  # fmt: skip
        g_input = from_planes(gxpad[:, :-1, :-1], self.pooled, self.ps)
        geo = torch.from_numpy(part.sum(0)).to(grad.dtype)
        if not need_geo:
            return g_input, geo, geo
        # copies (not views of one buffer): outputs of a custom op may not alias
        g_offset = geo[:, :, :2].contiguous().view(n_roi, 2 * self.groups, ph, pw)
        return g_input, g_offset, geo[:, :, 2].contiguous()


def forward_roi_align(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    pooled = (pooled_h, pooled_w)
    args = (spatial_scale, sampling_ratio, aligned, 0.0, False)
    return _Aligned(input, rois, None, None, pooled, *args).forward()


def backward_roi_align(
    grad, input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned
):
    pooled = (pooled_h, pooled_w)
    args = (spatial_scale, sampling_ratio, aligned, 0.0, False)
    return _Aligned(input, rois, None, None, pooled, *args).backward(grad, False)[0]


def forward_ps_roi_align(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    pooled = (pooled_h, pooled_w)
    args = (spatial_scale, sampling_ratio, aligned, 0.0, True)
    return _Aligned(input, rois, None, None, pooled, *args).forward()


def backward_ps_roi_align(
    grad, input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned
):
    pooled = (pooled_h, pooled_w)
    args = (spatial_scale, sampling_ratio, aligned, 0.0, True)
    return _Aligned(input, rois, None, None, pooled, *args).backward(grad, False)[0]


def forward_deform_roi_pool(
    input, rois, offset, mask, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, gamma
):
    pooled = (pooled_h, pooled_w)
    args = (spatial_scale, sampling_ratio, aligned, gamma, False)
    return _Aligned(input, rois, offset, mask, pooled, *args).forward()


def backward_deform_roi_pool(
    grad, input, rois, offset, mask, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned,
    gamma,
):  # fmt: skip
    pooled = (pooled_h, pooled_w)
    args = (spatial_scale, sampling_ratio, aligned, gamma, False)
    kernel = _Aligned(input, rois, offset, mask, pooled, *args)
    need_geo = offset is not None or mask is not None
    g_input, g_offset, g_mask = kernel.backward(grad, need_geo)
    return (
        g_input,
        None if offset is None else g_offset,
        None if mask is None else g_mask,
    )


def forward_deform_ps_roi_pool(
    input, rois, offset, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, gamma
):
    pooled = (pooled_h, pooled_w)
    args = (spatial_scale, sampling_ratio, aligned, gamma, True)
    return _Aligned(input, rois, offset, None, pooled, *args).forward()


def backward_deform_ps_roi_pool(
    grad, input, rois, offset, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, gamma
):
    pooled = (pooled_h, pooled_w)
    args = (spatial_scale, sampling_ratio, aligned, gamma, True)
    kernel = _Aligned(input, rois, offset, None, pooled, *args)
    g_input, g_offset, _ = kernel.backward(grad, offset is not None)
    return g_input, None if offset is None else g_offset


# --------------------------------------------------------------------------------------------
# Integer bins: summed-area tables (float64), Numba.

_CHUNK = 32  # channels per task of the table kernels


@njit(parallel=True, cache=True)
def _table_kernel(feat, table):
    """``table[p, y, x, c]`` = sum of ``feat[p, :y, :x, c]`` (row 0 and column 0 stay 0)."""
    n_planes, h, w, c_all = feat.shape
    n_chunks = -(-c_all // _CHUNK)
    for t in prange(n_planes * n_chunks):
        p = t // n_chunks
        lo = (t - p * n_chunks) * _CHUNK
        hi = min(c_all, lo + _CHUNK)
        run = np.empty(hi - lo, dtype=np.float64)
        for y in range(h):
            run[:] = 0.0
            for x in range(w):
                src = feat[p, y, x, lo:hi]
                above = table[p, y, x + 1, lo:hi]
                dst = table[p, y + 1, x + 1, lo:hi]
                for c in range(hi - lo):
                    run[c] += src[c]
                    dst[c] = above[c] + run[c]


@njit(parallel=True, cache=True)
def _integer_forward_kernel(table, y_lo, y_hi, x_lo, x_hi, plane, out):
    """``out[r, c, i, j]``: the bin's sum (four table reads) over its cell count, 0 if empty."""
    n_roi, _, ph, pw = out.shape
    for t in prange(n_roi * ph):
        r = t // ph
        i = t - r * ph
        ya, yb = y_lo[r, i], y_hi[r, i]
        for j in range(pw):
            xa, xb = x_lo[r, j], x_hi[r, j]
            area = (yb - ya) * (xb - xa)
            inv = 1.0 / area if area > 0 else 0.0
            p = plane[r, i, j]
            s11, s01 = table[p, yb, xb], table[p, ya, xb]
            s10, s00 = table[p, yb, xa], table[p, ya, xa]
            for c in range(out.shape[1]):
                out[r, c, i, j] = (s11[c] - s01[c] - s10[c] + s00[c]) * inv


@njit(parallel=True, cache=True)
def _integer_backward_kernel(grad, y_lo, y_hi, x_lo, x_hi, plane, acc, gfeat):
    """The adjoint of the forward: ``+-grad / area`` at each bin's four table corners of ``acc``
    (float64, zero), then suffix sums give ``gfeat[p, y, x, c]``. A task owns one plane and one
    channel run, so no two tasks write one cell."""
    n_planes, hp, wp, c_all = acc.shape
    n_roi, _, ph, pw = grad.shape
    n_chunks = -(-c_all // _CHUNK)
    for t in prange(n_planes * n_chunks):
        p = t // n_chunks
        lo = (t - p * n_chunks) * _CHUNK
        hi = min(c_all, lo + _CHUNK)
        for r in range(n_roi):
            for i in range(ph):
                ya, yb = y_lo[r, i], y_hi[r, i]
                for j in range(pw):
                    xa, xb = x_lo[r, j], x_hi[r, j]
                    area = (yb - ya) * (xb - xa)
                    if plane[r, i, j] != p or area == 0:
                        continue
                    for c in range(lo, hi):
                        v = grad[r, c, i, j] / area
                        acc[p, yb, xb, c] += v
                        acc[p, ya, xb, c] -= v
                        acc[p, yb, xa, c] -= v
                        acc[p, ya, xa, c] += v
        for y in range(hp - 1, 0, -1):  # suffix sums along x, then y
            for x in range(wp - 2, 0, -1):
                for c in range(lo, hi):
                    acc[p, y, x, c] += acc[p, y, x + 1, c]
        for y in range(hp - 2, 0, -1):
            for x in range(1, wp):
                for c in range(lo, hi):
                    acc[p, y, x, c] += acc[p, y + 1, x, c]
        for y in range(hp - 1):
            for x in range(wp - 1):
                for c in range(lo, hi):
                    gfeat[p, y, x, c] = acc[p, y + 1, x + 1, c]


class _Integer:
    """Each bin sum is four reads of its plane's summed-area table; the backward is the adjoint."""

    def __init__(self, input, rois, pooled, scale, ps):
        _, _, h, w = input.shape
        self.pooled, self.ps = pooled, ps
        self.feat = as_planes(input, pooled, ps).permute(0, 2, 3, 1).contiguous()
        self.bins = tuple(t.numpy() for t in integer_bins(rois, scale, pooled, h, w))
        self.plane = plane_index(rois, pooled, ps).contiguous().numpy()
        n_roi, (ph, pw) = rois.shape[0], pooled
        self.work = n_roi * ph * pw * self.feat.shape[-1] + self.feat.numel()

    def forward(self) -> Tensor:
        n_planes, h, w, c = self.feat.shape
        table = np.zeros((n_planes, h + 1, w + 1, c), dtype=np.float64)
        out = self.feat.new_empty(self.plane.shape[0], c, *self.pooled)
        with _threads(self.work):
            _table_kernel(self.feat.numpy(), table)
            _integer_forward_kernel(table, *self.bins, self.plane, out.numpy())
        return out

    def backward(self, grad: Tensor) -> Tensor:
        n_planes, h, w, c = self.feat.shape
        acc = np.zeros((n_planes, h + 1, w + 1, c), dtype=np.float64)
        gfeat = torch.empty_like(self.feat)
        with _threads(self.work):
            _integer_backward_kernel(
                grad.contiguous().numpy(), *self.bins, self.plane, acc, gfeat.numpy()
            )
        return from_planes(gfeat, self.pooled, self.ps)


def forward_roi_pool(input, rois, pooled_h, pooled_w, spatial_scale):
    return _Integer(input, rois, (pooled_h, pooled_w), spatial_scale, False).forward()


def backward_roi_pool(grad, input, rois, pooled_h, pooled_w, spatial_scale):
    return _Integer(input, rois, (pooled_h, pooled_w), spatial_scale, False).backward(grad)


def forward_ps_roi_pool(input, rois, pooled_h, pooled_w, spatial_scale):
    return _Integer(input, rois, (pooled_h, pooled_w), spatial_scale, True).forward()


def backward_ps_roi_pool(grad, input, rois, pooled_h, pooled_w, spatial_scale):
    return _Integer(input, rois, (pooled_h, pooled_w), spatial_scale, True).backward(grad)
