"""Numba kernels of the CPU deformable convolution (:mod:`._deform_conv_cpu` drives them).

The input is copied once to channels-last with a one-cell zero border (``xpad [N, H+2, W+2, C]``),
so every corner read is in bounds and reads a contiguous channel vector; bilinear weights (mask
folded in) are computed once per (offset group, kernel point, output position) and reused for all
channels of the group.

Channels are cut into *runs* of ``L = gcd(C/groups, C/offset_groups)`` channels, so each run lies
in one conv group and one offset group, and every array is seen as a matrix of such runs:
``xpad`` as ``[N*(H+2)*(W+2)*S, L]`` (``S = C / L`` runs per pixel) and a block's columns as
``[rows * W_out * width / L, L]``. Every access is then a whole row of a 2-D array, which Numba
vectorises without the per-access slice arithmetic that dominated small channel counts.

Column layout of the products: for conv group ``q`` and kernel point ``k`` the channels of ``q``
are contiguous, ``col[q*K*Cq + k*Cq + c']`` (the weight is permuted to match). In run units, run
``s`` at kernel point ``k`` starts at column run ``first[s] + k * Cq / L`` (:func:`runs`). Kernels
address output rows by ``t = n * Ho + oy`` and take the first row ``t0`` of their block; ``cols``
/ ``gcols`` of the backward are ``[rows, W_out, width]``. The forward's :func:`columns_kernel`
also writes a second layout, the *grid*: each output row's kernel points as ``kh`` rows of a
channels-last image, ``[rows, kh, W_out, kw, C]``, which a ``(kh, kw)``-strided convolution
multiplies (:func:`column_places`).

Backward is one pass over the columns' gradient (:func:`_grad_row`): each sampling point's corners
and weights are computed once and give the input gradient (scattered into ``gxpad``), the
offset and mask gradients, and the point's columns (which the weight gradient needs: the backward
samples the input once, in this pass, not in a separate :func:`columns_kernel` call). The
offset and mask gradients come from four dot products per point and run, ``D_ab = sum_c g[c] *
x_ab[c]`` over the corners ``ab``: ``dL/dy = m ((1-lx)(D10-D00) + lx(D11-D01))``, ``dL/dx = m
((1-ly)(D01-D00) + ly(D11-D10))`` and ``dL/dm`` is the bilinear mix of the ``D_ab``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


def runs(channels: int, groups: int, offset_groups: int, k: int) -> tuple[int, np.ndarray, int]:
    """``(L, table, step)``: the run length, ``table [S, 2] = (offset group, first)`` with
    ``first`` run ``s``'s column run at kernel point 0, and ``step = Cq / L`` column runs per
    kernel point (module docstring)."""
    cq, cg = channels // groups, channels // offset_groups
    length = math.gcd(cq, cg)
    table = []
    for s in range(channels // length):
        lo = s * length
        q = lo // cq
        table.append((lo // cg, (q * k * cq + lo - q * cq) // length))
    return length, np.asarray(table, dtype=np.int64), cq // length


def column_places(
    channels: int, groups: int, offset_groups: int, kernel: tuple[int, int], wo: int, grid: bool
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``(first, place)`` of :func:`columns_kernel` for a row of ``wo`` output positions.

    ``grid=False``: the product layout (module docstring), ``[wo, groups, K, Cq]`` per row.
    ``grid=True``: the row's kernel points as a ``kh x kw`` tile per position, ``[kh, wo, kw, C]``
    with the channels in their own order: ``kh`` rows of a channels-last image that a
    ``(kh, kw)``-strided convolution with the layer's weight turns into the output row."""
    kh, kw = kernel
    length, table, step = runs(channels, groups, offset_groups, kh * kw)
    s_runs = channels // length
    if grid:
        return np.arange(s_runs, dtype=np.int64), (kw * s_runs, wo * kw * s_runs, s_runs)
    return np.ascontiguousarray(table[:, 1]), (kh * kw * s_runs, kw * step, step)


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


@njit(cache=True, inline="always")
def _weights(wts, ly, lx, m):
    """The four bilinear corner weights of a point (mask ``m`` folded in) into ``wts [4]``, an
    array of the input's dtype: rounded to the input's precision, as torchvision computes them,
    so the channel loops that use them stay in that precision."""
    wts[0] = (1 - ly) * (1 - lx) * m
    wts[1] = (1 - ly) * lx * m
    wts[2] = ly * (1 - lx) * m
    wts[3] = ly * lx * m


@njit(parallel=True, cache=True)
def columns_kernel(xpad, offset, mask, use_mask, first, place, geom, t0, cols):
    """Output row ``t0 + r``'s columns into ``cols[r]`` (``cols [rows, runs * L]``): run ``s``
    of kernel point ``(i, j)`` at output column ``ox`` = 4 corners of ``xpad`` (x mask), at run
    ``ox * A + i * B + j * D + first[s]`` of the row, ``place = (A, B, D)``
    (:func:`column_places`)."""
    nb, hp, wp, c = xpad.shape
    s_runs, length = first.shape[0], c // first.shape[0]
    xf = xpad.reshape(nb * hp * wp * s_runs, length)
    ho = offset.shape[2]
    wo = offset.shape[3]
    rows = cols.shape[0]
    per_x, per_i, per_j = place
    kw = geom[1]
    nk = geom[0] * kw
    groups = offset.shape[1] // (2 * nk)
    per_group = s_runs // groups  # runs of one offset group are consecutive
    at = np.empty(nk, np.int64)  # each kernel point's first run at ox = 0
    for kk in range(nk):
        at[kk] = (kk // kw) * per_i + (kk % kw) * per_j
    for r in prange(rows):
        n = (t0 + r) // ho
        oy = t0 + r - n * ho
        crow = cols[r].reshape(cols.shape[1] // length, length)
        wts = np.empty(4, xf.dtype)
        if s_runs == 1:  # one run of all channels (no conv or offset groups): the common case
            for ox in range(wo):
                for kk in range(nk):
                    dst = crow[ox * per_x + at[kk]]
                    iy, ix, ly, lx, ok = _point(offset, n, 0, kk, oy, ox, geom, hp - 2, wp - 2)
                    if not ok:
                        dst[:] = 0
                        continue
                    m = mask[n, kk, oy, ox] if use_mask else 1.0
                    p = (n * hp + iy) * wp + ix
                    _weights(wts, ly, lx, m)
                    _sample_run(dst, xf[p], xf[p + 1], xf[p + wp], xf[p + wp + 1],
                                wts[0], wts[1], wts[2], wts[3])  # fmt: skip
            continue
        for ox in range(wo):
            for kk in range(nk):
                base = ox * per_x + at[kk]
                for g in range(groups):
                    iy, ix, ly, lx, ok = _point(offset, n, g, kk, oy, ox, geom, hp - 2, wp - 2)
                    if not ok:
                        for s in range(g * per_group, (g + 1) * per_group):
                            crow[base + first[s]][:] = 0
                        continue
                    m = mask[n, g * nk + kk, oy, ox] if use_mask else 1.0
                    _weights(wts, ly, lx, m)
                    p = ((n * hp + iy) * wp + ix) * s_runs
                    for s in range(g * per_group, (g + 1) * per_group):
                        _sample_run(crow[base + first[s]], xf[p + s], xf[p + s_runs + s],
                                    xf[p + (wp * s_runs) + s], xf[p + (wp + 1) * s_runs + s],
                                    wts[0], wts[1], wts[2], wts[3])  # fmt: skip


@njit(cache=True, inline="always")
def _sample_run(dst, r00, r01, r10, r11, w00, w01, w10, w11):
    """``dst = w00 r00 + w01 r01 + w10 r10 + w11 r11`` over one run of channels."""
    for ch in range(dst.shape[0]):
        dst[ch] = w00 * r00[ch] + w01 * r01[ch] + w10 * r10[ch] + w11 * r11[ch]


# Dot products may be reassociated so they vectorise, and multiply-adds contracted; NaN/inf
# semantics are kept (no "fast" flags beyond these two).
@njit(cache=True, inline="always", fastmath={"reassoc", "contract"})
def _grad_row(gcols, xf, hp, wp, offset, mask, use_mask, table, step, geom, t0, r, gxf, goff,
              gmask, cols):  # fmt: skip
    """Output row ``t0 + r``: ``gxpad[corner] += weight * gcols[r, ox, column]`` (``gxf``, a run
    matrix like ``xf``), the row's offset / mask gradients (``goff``/``gmask`` add up over the
    runs of one offset group) and its columns ``cols[r]`` (as :func:`columns_kernel` writes
    them)."""
    s_runs, length = table.shape[0], xf.shape[1]
    ho = offset.shape[2]
    wo, width = gcols.shape[1], gcols.shape[2]
    per_pos = width // length
    nk = geom[0] * geom[1]
    n = (t0 + r) // ho
    oy = t0 + r - n * ho
    grow = gcols[r].reshape(wo * per_pos, length)
    crow = cols[r].reshape(wo * per_pos, length)
    wts = np.empty(4, xf.dtype)
    groups = offset.shape[1] // (2 * nk)
    per_group = s_runs // groups  # runs of one offset group are consecutive
    for ox in range(wo):
        for kk in range(nk):
            for g in range(groups):
                iy, ix, ly, lx, ok = _point(offset, n, g, kk, oy, ox, geom, hp - 2, wp - 2)
                if not ok:
                    for s in range(g * per_group, (g + 1) * per_group):
                        crow[ox * per_pos + table[s, 1] + kk * step][:] = 0
                    continue
                m = mask[n, g * nk + kk, oy, ox] if use_mask else 1.0
                _weights(wts, ly, lx, m)
                for s in range(g * per_group, (g + 1) * per_group):
                    at = ox * per_pos + table[s, 1] + kk * step
                    _grad_run(grow[at], crow[at], xf, gxf,
                              ((n * hp + iy) * wp + ix) * s_runs + s, wp * s_runs, s_runs,
                              wts[0], wts[1], wts[2], wts[3], ly, lx, m, use_mask, goff, gmask,
                              n, g * nk + kk, oy, ox)  # fmt: skip


@njit(cache=True, inline="always", fastmath={"reassoc", "contract"})
def _grad_run(src, dst, xf, gxf, p, down, right, w00, w01, w10, w11, ly, lx, m, use_mask, goff,
              gmask, n, j, oy, ox):  # fmt: skip
    """One run of one sampling point: scatter ``src`` into the four corners of ``gxf`` (rows
    ``p``, ``p + right``, ``p + down``, ``p + down + right``), add the point's offset and mask
    gradients (``j``: offset group * K + kernel point) and write its column run ``dst``."""
    length = src.shape[0]
    a00 = gxf[p]
    a01 = gxf[p + right]
    a10 = gxf[p + down]
    a11 = gxf[p + down + right]
    for ch in range(length):  # two loops, each of which vectorises
        v = src[ch]
        a00[ch] += w00 * v
        a01[ch] += w01 * v
        a10[ch] += w10 * v
        a11[ch] += w11 * v
    r00 = xf[p]
    r01 = xf[p + right]
    r10 = xf[p + down]
    r11 = xf[p + down + right]
    d00 = d01 = d10 = d11 = src[0] * 0  # in the input's precision, as torchvision
    for ch in range(length):
        v = src[ch]
        d00 += v * r00[ch]
        d01 += v * r01[ch]
        d10 += v * r10[ch]
        d11 += v * r11[ch]
        dst[ch] = w00 * r00[ch] + w01 * r01[ch] + w10 * r10[ch] + w11 * r11[ch]
    goff[n, 2 * j, oy, ox] += m * ((1 - lx) * (d10 - d00) + lx * (d11 - d01))
    goff[n, 2 * j + 1, oy, ox] += m * ((1 - ly) * (d01 - d00) + ly * (d11 - d10))
    if use_mask:
        top = (1 - lx) * d00 + lx * d01
        gmask[n, j, oy, ox] += (1 - ly) * top + ly * ((1 - lx) * d10 + lx * d11)


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def grad_kernel_parts(gcols, xpad, offset, mask, use_mask, table, step, geom, t0, gxpad_parts,
                      goff, gmask, cols):  # fmt: skip
    """Backward of one block whose rows may share an image: the rows are cut into as many equal
    runs as there are accumulators, run ``j`` adds into its own copy ``gxpad_parts[j]`` (summed
    by the caller in a fixed order), so no two threads write one cell and the result does not
    depend on which thread ran which run (deterministic). Offset/mask gradients of a row belong
    to that row only, so they go straight into ``goff``/``gmask``."""
    parts, nb, hp, wp, c = gxpad_parts.shape
    size = nb * hp * wp * table.shape[0]
    xf = xpad.reshape(size, c // table.shape[0])
    rows = gcols.shape[0]
    for j in prange(parts):
        gxf = gxpad_parts[j].reshape(size, c // table.shape[0])
        for r in range(j * rows // parts, (j + 1) * rows // parts):
            _grad_row(gcols, xf, hp, wp, offset, mask, use_mask, table, step, geom, t0, r, gxf,
                      goff, gmask, cols)  # fmt: skip


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def grad_kernel_images(gcols, xpad, offset, mask, use_mask, table, step, geom, t0, gxpad, goff,
                       gmask, cols):  # fmt: skip
    """Backward of a block of whole images (``t0`` and the block's rows multiples of ``H_out``):
    one thread per image adds into the one accumulator ``gxpad`` (a sample never leaves its
    image), each image's rows in order, so the sums do not depend on the thread count."""
    nb, hp, wp, c = xpad.shape
    size = nb * hp * wp * table.shape[0]
    xf = xpad.reshape(size, c // table.shape[0])
    gxf = gxpad.reshape(size, c // table.shape[0])
    ho = offset.shape[2]
    images = gcols.shape[0] // ho
    for i in prange(images):
        for r in range(i * ho, (i + 1) * ho):
            _grad_row(gcols, xf, hp, wp, offset, mask, use_mask, table, step, geom, t0, r, gxf,
                      goff, gmask, cols)  # fmt: skip
