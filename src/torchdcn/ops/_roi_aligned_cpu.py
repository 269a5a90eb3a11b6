"""RoIAlign-style kernels of the RoI pooling family on CPU (Numba): real-valued bins of bilinear
samples, with optional position-sensitive planes, per-bin offsets and masks (roi_align,
ps_roi_align, deform_roi_pool, deform_ps_roi_pool). Interface and design: :mod:`._roi_cpu`.

The input planes are copied channels-last with one zero row and column appended, so the four
corners of any sample are in bounds (the clamp border pins a sample to the last row with a zero
weight on the row below). Geometry is float64, the channel loops run in the input's dtype. The
forward is parallel over (RoI, bin row). The backward is parallel over channel runs ("pieces"):
each owns its slice of the input gradient, so the scatter has no write conflicts, and writes its
share of the offset/mask gradients (reductions over its channels, reassociated so they vectorise)
to its own row of a float64 buffer, summed afterwards.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from ._numba_threads import threads
from ._roi_common import aligned_tables, as_planes, from_planes

#: below this many channels per offset group (forward) or per channel run of the backward's
#: pieces (a group cut for the threads: ``_pieces``) the kernels index elements directly; from
#: it on they take channel slices, whose loops vectorise but each of which is a new array view.
#: With one channel per group (R-FCN's deformable PS pooling of the class score maps) the slices
#: made its forward+backward 61 ms instead of 41 on one thread (benchmarks/bench_roi_pool.py)
_SLICE_MIN = 8


@njit(cache=True, inline="always")
def _corner(y, x, height, width):
    """RoIAlign border (SPEC 1): ``ok`` False where the sample reads 0 (also for NaN); else the
    top-left corner, the fractions, and whether y and x are free (not clamped: gradient flows).
    Free on ``[0, H - 1)``: at 0 itself the gradient is the right derivative (:mod:`._bilinear`)."""
    if not (y >= -1.0 and y <= height and x >= -1.0 and x <= width):
        return False, 0, 0, 0.0, 0.0, False, False
    free_y = y >= 0.0 and y < height - 1
    free_x = x >= 0.0 and x < width - 1
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
    n_planes, hp, wp, c_out = xpad.shape
    height, width = hp - 1, wp - 1
    xf = xpad.reshape(n_planes * hp * wp, c_out)
    n_roi, _, ph, pw = out.shape
    cg = c_out // groups
    few = cg < _SLICE_MIN
    for t in prange(n_roi * ph):
        r = t // ph
        i = t - r * ph
        acc = np.empty(c_out, dtype=xpad.dtype)
        b, gh, gw = ints[r, 0], ints[r, 1], ints[r, 2]
        y1, x1, bh, bw = boxes[r, 0], boxes[r, 1], boxes[r, 2], boxes[r, 3]
        sy, sx = boxes[r, 4], boxes[r, 5]
        inv = 1.0 / max(gh * gw, 1)
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
                        if few:  # plain element reads
                            row = (p * hp + y0) * wp + x0
                            for c in range(lo, lo + cg):
                                top = w00 * xf[row, c] + w01 * xf[row + 1, c]
                                acc[c] += top + w10 * xf[row + wp, c] + w11 * xf[row + wp + 1, c]
                            continue
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
    n_planes, hp, wp, c_out = xpad.shape
    height, width = hp - 1, wp - 1
    xf = xpad.reshape(n_planes * hp * wp, c_out)
    gxf = gxpad.reshape(n_planes * hp * wp, c_out)
    n_roi, _, ph, pw = grad.shape
    for t in prange(pieces.shape[0]):
        g, s, lo, hi = pieces[t, 0], pieces[t, 1], pieces[t, 2], pieces[t, 3]
        go = np.empty(hi - lo, dtype=xpad.dtype)
        few = hi - lo < _SLICE_MIN
        for r in range(n_roi):
            b, gh, gw = ints[r, 0], ints[r, 1], ints[r, 2]
            y1, x1, bh, bw = boxes[r, 0], boxes[r, 1], boxes[r, 2], boxes[r, 3]
            sy, sx = boxes[r, 4], boxes[r, 5]
            inv = 1.0 / max(gh * gw, 1)
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
                            if few:  # plain element access
                                row = (p * hp + y0) * wp + x0
                                d00 = d01 = d10 = d11 = xpad.dtype.type(0.0)
                                for c in range(lo, hi):
                                    v = go[c - lo]
                                    gxf[row, c] += w00 * v
                                    gxf[row + 1, c] += w01 * v
                                    gxf[row + wp, c] += w10 * v
                                    gxf[row + wp + 1, c] += w11 * v
                                    if need_geo:
                                        d00 += v * xf[row, c]
                                        d01 += v * xf[row + 1, c]
                                        d10 += v * xf[row + wp, c]
                                        d11 += v * xf[row + wp + 1, c]
                                if not need_geo:
                                    continue
                            else:
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


class AlignedBins:
    """The arrays both aligned kernels take, built once per call."""

    def __init__(
        self, input, rois, offset, mask, pooled, scale, sampling_ratio, aligned, gamma, ps
    ):
        n_roi = rois.shape[0]
        ph, pw = pooled
        self.pooled, self.ps = pooled, ps
        geo, ints = aligned_tables(rois, scale, pooled, sampling_ratio, aligned, gamma)
        self.boxes, self.ints = geo.double().numpy(), ints.numpy()
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
        with threads(self._work()):
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
        with threads(self._work()) as n_threads:
            pieces, splits = _pieces(self.xpad.shape[-1], self.groups, n_threads)
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
        # copies (not views of one buffer): outputs of a custom op may not alias. ``clone``, not
        # ``contiguous``: with one RoI and one group both slices are already contiguous views
        g_offset = geo[:, :, :2].clone().view(n_roi, 2 * self.groups, ph, pw)
        return g_input, g_offset, geo[:, :, 2].clone()


def aligned_pool(input, rois, offset, mask, pooled, spatial_scale, sampling_ratio, aligned, gamma,
                 ps):  # fmt: skip
    """``[R, C_out, ph, pw]``; see :mod:`._roi_cpu`."""
    args = (pooled, spatial_scale, sampling_ratio, aligned, gamma, ps)
    return AlignedBins(input, rois, offset, mask, *args).forward()


def aligned_pool_backward(grad, input, rois, offset, mask, pooled, spatial_scale, sampling_ratio,
                          aligned, gamma, ps):  # fmt: skip
    """``(grad_input, grad_offset or None, grad_mask or None)``; see :mod:`._roi_cpu`."""
    args = (pooled, spatial_scale, sampling_ratio, aligned, gamma, ps)
    kernel = AlignedBins(input, rois, offset, mask, *args)
    g_input, g_offset, g_mask = kernel.backward(grad, offset is not None or mask is not None)
    return g_input, None if offset is None else g_offset, None if mask is None else g_mask
