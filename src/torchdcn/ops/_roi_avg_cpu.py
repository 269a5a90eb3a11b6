"""Average pooling over integer bins on CPU (Numba): v1 Eq. 5 (``roi_pool(mode="avg")``) and
``ps_roi_pool``. Interface: :mod:`._roi_cpu`.

A float64 summed-area table per plane makes a bin's sum four reads. The backward is its adjoint:
``+-grad / area`` at the four corners, then suffix sums, parallel over (plane, channel run).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from ._numba_threads import threads
from ._roi_common import from_planes, integer_bins, plane_index, planes_channels_last

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


class AverageBins:
    """Each bin sum is four reads of its plane's summed-area table; the backward is the adjoint."""

    def __init__(self, input, rois, pooled, scale, ps):
        _, _, h, w = input.shape
        self.pooled, self.ps = pooled, ps
        self.feat = planes_channels_last(input, pooled, ps)
        self.bins = tuple(t.numpy() for t in integer_bins(rois, scale, pooled, h, w, ps))
        self.plane = plane_index(rois, pooled, ps).contiguous().numpy()
        n_roi, (ph, pw) = rois.shape[0], pooled
        self.work = n_roi * ph * pw * self.feat.shape[-1] + self.feat.numel()

    def forward(self) -> Tensor:
        n_planes, h, w, c = self.feat.shape
        table = np.zeros((n_planes, h + 1, w + 1, c), dtype=np.float64)
        out = self.feat.new_empty(self.plane.shape[0], c, *self.pooled)
        with threads(self.work):
            _table_kernel(self.feat.numpy(), table)
            _integer_forward_kernel(table, *self.bins, self.plane, out.numpy())
        return out

    def backward(self, grad: Tensor) -> Tensor:
        n_planes, h, w, c = self.feat.shape
        acc = np.zeros((n_planes, h + 1, w + 1, c), dtype=np.float64)
        gfeat = torch.empty_like(self.feat)
        with threads(self.work):
            _integer_backward_kernel(
                grad.contiguous().numpy(), *self.bins, self.plane, acc, gfeat.numpy()
            )
        return from_planes(gfeat, self.pooled, self.ps)


def average_pool(input, rois, pooled, spatial_scale, ps):
    """``[R, C_out, ph, pw]``: the mean of every integer bin (0 for an empty one)."""
    return AverageBins(input, rois, pooled, spatial_scale, ps).forward()


def average_pool_backward(grad, input, rois, pooled, spatial_scale, ps):
    """``[N, C, H, W]``: the gradient of :func:`average_pool`."""
    return AverageBins(input, rois, pooled, spatial_scale, ps).backward(grad)
