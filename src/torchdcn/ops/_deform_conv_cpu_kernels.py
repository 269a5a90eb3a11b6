"""Numba kernels of the CPU deformable convolution (:mod:`._deform_conv_cpu` drives them).

The input is copied once to channels-last with a one-cell zero border (``xpad [N, H+2, W+2, C]``),
so every corner read is in bounds and reads a contiguous channel vector; bilinear weights (mask
folded in) are computed once per (offset group, kernel point, output position) and reused for all
channels of the group.

Column layout: for conv group ``q`` and kernel point ``k`` the channels of ``q`` are contiguous,
``col[q*K*Cq + k*Cq + c']``. A *piece* is a contiguous channel run inside one offset group and one
conv group: ``(offset_group, lo, hi, base)`` with the column index of channel ``cc`` at kernel
point ``k`` being ``base + k*Cq + cc``. Kernels address output rows by ``t = n * Ho + oy`` and take
the first row ``t0`` of their block; ``cols`` / ``gcols`` are ``[rows, W_out, columns]``.

Backward is one pass over the columns' gradient (:func:`_grad_row`): each sampling point's corners
and weights are computed once and give the input gradient (scattered into ``gxpad``) and the
offset and mask gradients (reductions over channels) together.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from numba import njit, prange


def pieces(channels: int, groups: int, offset_groups: int, k: int) -> np.ndarray:
    """Channel runs ``[n, 4] = (offset_group, lo, hi, base)`` (module docstring)."""
    cq, cg = channels // groups, channels // offset_groups
    bounds = sorted({*range(0, channels, cq), *range(0, channels, cg), channels})
    rows = []
    for lo, hi in itertools.pairwise(bounds):
        q = lo // cq
        rows.append((lo // cg, lo, hi, q * k * cq - q * cq))
    return np.asarray(rows, dtype=np.int64)


@njit(cache=True, inline="always")
def _point(offset, n, g, kk, oy, ox, geom, height, width):
    """Top-left corner (row, col) in the padded map and the fractions (ly, lx) of one sampling
    point; ``ok`` is False for a point outside [-1, H) x [-1, W) or with a NaN/inf offset. A point
    exactly on -1 is kept: it reads 0 (its only in-map corners have weight 0) but its gradient is
    the right derivative, as in torchvision (SPEC 1; :mod:`._bilinear`)."""
    kh, kw, sh, sw, ph, pw, dh, dw = geom
    i = kk // kw
    j = kk - i * kw
    y = oy * sh - ph + i * dh + offset[n, 2 * (g * kh * kw + kk), oy, ox]
    x = ox * sw - pw + j * dw + offset[n, 2 * (g * kh * kw + kk) + 1, oy, ox]
    if y >= -1 and y < height and x >= -1 and x < width:
        y0 = math.floor(y)
        x0 = math.floor(x)
        return int(y0) + 1, int(x0) + 1, y - y0, x - x0, True
    return 0, 0, y - y, x - x, False


@njit(parallel=True, cache=True)
def columns_kernel(xpad, offset, mask, use_mask, pieces, geom, cq, t0, cols):
    """cols[r, ox, base + k*cq + c] = 4 corners of xpad[n, :, :, c] at row t0 + r (x mask)."""
    _, hp, wp, _ = xpad.shape
    ho = offset.shape[2]
    rows, wo, _ = cols.shape
    nk = geom[0] * geom[1]
    for r in prange(rows):
        n = (t0 + r) // ho
        oy = t0 + r - n * ho
        for ox in range(wo):
            row = cols[r, ox]
            for p in range(pieces.shape[0]):
                g, lo, hi, base = pieces[p, 0], pieces[p, 1], pieces[p, 2], pieces[p, 3]
                for kk in range(nk):
                    iy, ix, ly, lx, ok = _point(offset, n, g, kk, oy, ox, geom, hp - 2, wp - 2)
                    dst = row[base + kk * cq + lo : base + kk * cq + hi]
                    if not ok:
                        dst[:] = 0
                        continue
                    m = mask[n, g * nk + kk, oy, ox] if use_mask else 1.0
                    w00 = (1 - ly) * (1 - lx) * m
                    w01 = (1 - ly) * lx * m
                    w10 = ly * (1 - lx) * m
                    w11 = ly * lx * m
                    r00 = xpad[n, iy, ix, lo:hi]
                    r01 = xpad[n, iy, ix + 1, lo:hi]
                    r10 = xpad[n, iy + 1, ix, lo:hi]
                    r11 = xpad[n, iy + 1, ix + 1, lo:hi]
                    for c in range(hi - lo):
                        dst[c] = w00 * r00[c] + w01 * r01[c] + w10 * r10[c] + w11 * r11[c]


# Channel reductions (offset and mask gradients) may be reassociated so they vectorise, and
# multiply-adds contracted; NaN/inf semantics are kept (no "fast" flags beyond these two).
@njit(cache=True, inline="always", fastmath={"reassoc", "contract"})
def _grad_row(gcols, xpad, offset, mask, use_mask, pieces, geom, cq, t0, r, gxpad, goff, gmask):
    """Output row ``t0 + r``: ``gxpad[n, corner, c] += weight * gcols[r, ox, col]`` and the
    offset / mask gradients of the row (``goff``/``gmask`` add up, as pieces of one offset group
    share a sampling point)."""
    _, hp, wp, _ = xpad.shape
    ho = offset.shape[2]
    wo = gcols.shape[1]
    nk = geom[0] * geom[1]
    n = (t0 + r) // ho
    oy = t0 + r - n * ho
    for ox in range(wo):
        for p in range(pieces.shape[0]):
            g, lo, hi, base = pieces[p, 0], pieces[p, 1], pieces[p, 2], pieces[p, 3]
            for kk in range(nk):
                iy, ix, ly, lx, ok = _point(offset, n, g, kk, oy, ox, geom, hp - 2, wp - 2)
                if not ok:
                    continue
                m = mask[n, g * nk + kk, oy, ox] if use_mask else 1.0
                w00 = (1 - ly) * (1 - lx) * m
                w01 = (1 - ly) * lx * m
                w10 = ly * (1 - lx) * m
                w11 = ly * lx * m
                src = gcols[r, ox, base + kk * cq + lo : base + kk * cq + hi]
                r00 = xpad[n, iy, ix, lo:hi]
                r01 = xpad[n, iy, ix + 1, lo:hi]
                r10 = xpad[n, iy + 1, ix, lo:hi]
                r11 = xpad[n, iy + 1, ix + 1, lo:hi]
                a00 = gxpad[n, iy, ix, lo:hi]
                a01 = gxpad[n, iy, ix + 1, lo:hi]
                a10 = gxpad[n, iy + 1, ix, lo:hi]
                a11 = gxpad[n, iy + 1, ix + 1, lo:hi]
                for c in range(hi - lo):  # two loops, each of which vectorises
                    v = src[c]
                    a00[c] += w00 * v
                    a01[c] += w01 * v
                    a10[c] += w10 * v
                    a11[c] += w11 * v
                sy = 0.0 * ly
                sx = 0.0 * ly
                sv = 0.0 * ly
                if use_mask:
                    for c in range(hi - lo):
                        v = src[c]
                        sy += v * ((1 - lx) * (r10[c] - r00[c]) + lx * (r11[c] - r01[c]))
                        sx += v * ((1 - ly) * (r01[c] - r00[c]) + ly * (r11[c] - r10[c]))
                        top = (1 - lx) * r00[c] + lx * r01[c]
                        sv += v * ((1 - ly) * top + ly * ((1 - lx) * r10[c] + lx * r11[c]))
                else:
                    for c in range(hi - lo):
                        v = src[c]
                        sy += v * ((1 - lx) * (r10[c] - r00[c]) + lx * (r11[c] - r01[c]))
                        sx += v * ((1 - ly) * (r01[c] - r00[c]) + ly * (r11[c] - r10[c]))
                goff[n, 2 * (g * nk + kk), oy, ox] += sy * m
                goff[n, 2 * (g * nk + kk) + 1, oy, ox] += sx * m
                if use_mask:
                    gmask[n, g * nk + kk, oy, ox] += sv


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def grad_kernel_parts(gcols, xpad, offset, mask, use_mask, pieces, geom, cq, t0, gxpad_parts,
                      goff, gmask):  # fmt: skip
    """Backward of one block whose rows may share an image: the rows are cut into as many equal
    runs as there are accumulators, run ``j`` adds into its own copy ``gxpad_parts[j]`` (summed
    by the caller in a fixed order), so no two threads write one cell and the result does not
    depend on which thread ran which run (deterministic). Offset/mask gradients of a row belong
    to that row only, so they go straight into ``goff``/``gmask``."""
    parts = gxpad_parts.shape[0]
    rows = gcols.shape[0]
    for j in prange(parts):
        gxpad = gxpad_parts[j]
        for r in range(j * rows // parts, (j + 1) * rows // parts):
            _grad_row(gcols, xpad, offset, mask, use_mask, pieces, geom, cq, t0, r, gxpad, goff,
                      gmask)  # fmt: skip


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def grad_kernel_images(gcols, xpad, offset, mask, use_mask, pieces, geom, cq, t0, gxpad, goff,
                       gmask):  # fmt: skip
    """Backward of a block of whole images (``t0`` and the block's rows multiples of ``H_out``):
    one thread per image adds into the one accumulator ``gxpad`` (a sample never leaves its
    image), each image's rows in order, so the sums do not depend on the thread count."""
    ho = offset.shape[2]
    images = gcols.shape[0] // ho
    for i in prange(images):
        for r in range(i * ho, (i + 1) * ho):
            _grad_row(gcols, xpad, offset, mask, use_mask, pieces, geom, cq, t0, r, gxpad, goff,
                      gmask)  # fmt: skip
