"""Fast CPU deformable convolution: Numba sampling kernels around oneDNN's 1x1 convolution.

Forward: the input is copied once to channels-last with a one-cell zero border, so every corner
read is in bounds and reads a contiguous channel vector; bilinear weights (mask folded in) are
computed once per (offset group, kernel point, output position) and reused for all channels of the
group. The columns ``[N, Ho, Wo, groups * K * C/groups]`` are then multiplied by the weight as a
1x1 convolution (much faster than ``matmul`` on CPU; its backward gives the column, weight and bias
gradients in one call). Backward recomputes the columns chunk by chunk, so the extra memory stays
within the workspace limit whatever the batch size.

Column layout: for conv group ``q`` and kernel point ``k`` the channels of ``q`` are contiguous,
``col[q*K*Cq + k*Cq + c']``; the weight is permuted to match. A *piece* is a contiguous channel run
inside one offset group and one conv group: ``(offset_group, lo, hi, base)`` with the column index
of channel ``cc`` at kernel point ``k`` being ``base + k*Cq + cc``.
"""

from __future__ import annotations

import itertools
import math

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange
from torch import Tensor

from ._backend import batch_chunks


def _pieces(channels: int, groups: int, offset_groups: int, k: int, split: int) -> np.ndarray:
    """Channel runs ``[n, 4] = (offset_group, lo, hi, base)``, each run cut into ``split`` parts."""
    cq, cg = channels // groups, channels // offset_groups
    bounds = sorted({*range(0, channels, cq), *range(0, channels, cg), channels})
    rows = []
    for lo, hi in itertools.pairwise(bounds):
        q = lo // cq
        step = max(16, math.ceil((hi - lo) / split))
        for a in range(lo, hi, step):
            rows.append((lo // cg, a, min(hi, a + step), q * k * cq - q * cq))
    return np.asarray(rows, dtype=np.int64)


@njit(cache=True, inline="always")
def _point(offset, n, g, kk, oy, ox, geom, height, width):
    """Top-left corner (row, col) in the padded map and the fractions (ly, lx) of one sampling
    point; ``ok`` is False for a point outside (-1, H) x (-1, W) or with a NaN/inf offset."""
    kh, kw, sh, sw, ph, pw, dh, dw = geom
    i = kk // kw
    j = kk - i * kw
    y = oy * sh - ph + i * dh + offset[n, 2 * (g * kh * kw + kk), oy, ox]
    x = ox * sw - pw + j * dw + offset[n, 2 * (g * kh * kw + kk) + 1, oy, ox]
    if y > -1 and y < height and x > -1 and x < width:
        y0 = math.floor(y)
        x0 = math.floor(x)
        return int(y0) + 1, int(x0) + 1, y - y0, x - x0, True
    return 0, 0, y - y, x - x, False


@njit(parallel=True, cache=True)
def _columns_kernel(xpad, offset, mask, use_mask, pieces, geom, cq, cols):
    """cols[n, oy, ox, base + k*cq + c] = sum of 4 corners of xpad[n, :, :, c] (weights x mask)."""
    nb, hp, wp, _ = xpad.shape
    _, ho, wo, _ = cols.shape
    nk = geom[0] * geom[1]
    for t in prange(nb * ho):
        n = t // ho
        oy = t - n * ho
        for ox in range(wo):
            row = cols[n, oy, ox]
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


@njit(parallel=True, cache=True)
def _grad_input_kernel(gcols, offset, mask, use_mask, pieces, geom, cq, gxpad):
    """gxpad[n, corner, c] += weight * gcols[...]; parallel over (image, piece): no write races."""
    nb, hp, wp, _ = gxpad.shape
    _, ho, wo, _ = gcols.shape
    npieces = pieces.shape[0]
    nk = geom[0] * geom[1]
    for t in prange(nb * npieces):
        n = t // npieces
        p = t - n * npieces
        g, lo, hi, base = pieces[p, 0], pieces[p, 1], pieces[p, 2], pieces[p, 3]
        for oy in range(ho):
            for ox in range(wo):
                for kk in range(nk):
                    iy, ix, ly, lx, ok = _point(offset, n, g, kk, oy, ox, geom, hp - 2, wp - 2)
                    if not ok:
                        continue
                    m = mask[n, g * nk + kk, oy, ox] if use_mask else 1.0
                    w00 = (1 - ly) * (1 - lx) * m
                    w01 = (1 - ly) * lx * m
                    w10 = ly * (1 - lx) * m
                    w11 = ly * lx * m
                    src = gcols[n, oy, ox, base + kk * cq + lo : base + kk * cq + hi]
                    a00 = gxpad[n, iy, ix, lo:hi]
                    a01 = gxpad[n, iy, ix + 1, lo:hi]
                    a10 = gxpad[n, iy + 1, ix, lo:hi]
                    a11 = gxpad[n, iy + 1, ix + 1, lo:hi]
                    for c in range(hi - lo):
                        v = src[c]
                        a00[c] += w00 * v
                        a01[c] += w01 * v
                        a10[c] += w10 * v
                        a11[c] += w11 * v


@njit(parallel=True, cache=True)
def _grad_offset_kernel(gcols, xpad, offset, mask, use_mask, pieces, geom, cq, goff, gmask):
    """Offset and mask gradients: reductions over channels, parallel over output rows."""
    nb, hp, wp, _ = xpad.shape
    _, ho, wo, _ = gcols.shape
    nk = geom[0] * geom[1]
    for t in prange(nb * ho):
        n = t // ho
        oy = t - n * ho
        for ox in range(wo):
            for p in range(pieces.shape[0]):
                g, lo, hi, base = pieces[p, 0], pieces[p, 1], pieces[p, 2], pieces[p, 3]
                for kk in range(nk):
                    iy, ix, ly, lx, ok = _point(offset, n, g, kk, oy, ox, geom, hp - 2, wp - 2)
                    if not ok:
                        continue
                    src = gcols[n, oy, ox, base + kk * cq + lo : base + kk * cq + hi]
                    r00 = xpad[n, iy, ix, lo:hi]
                    r01 = xpad[n, iy, ix + 1, lo:hi]
                    r10 = xpad[n, iy + 1, ix, lo:hi]
                    r11 = xpad[n, iy + 1, ix + 1, lo:hi]
                    sy = 0.0 * ly
                    sx = 0.0 * ly
                    sv = 0.0 * ly
                    for c in range(hi - lo):
                        v = src[c]
                        sy += v * ((1 - lx) * (r10[c] - r00[c]) + lx * (r11[c] - r01[c]))
                        sx += v * ((1 - ly) * (r01[c] - r00[c]) + ly * (r11[c] - r10[c]))
                        top = (1 - lx) * r00[c] + lx * r01[c]
                        sv += v * ((1 - ly) * top + ly * ((1 - lx) * r10[c] + lx * r11[c]))
                    m = mask[n, g * nk + kk, oy, ox] if use_mask else 1.0
                    goff[n, 2 * (g * nk + kk), oy, ox] += sy * m
                    goff[n, 2 * (g * nk + kk) + 1, oy, ox] += sx * m
                    if use_mask:
                        gmask[n, g * nk + kk, oy, ox] += sv


def _setup(input, offset, weight, stride, padding, dilation):
    n, c, _, _ = input.shape
    c_out, cq, kh, kw = weight.shape
    k = kh * kw
    groups = c // cq
    offset_groups = offset.shape[1] // (2 * k)
    split = max(1, math.ceil(4 * numba.get_num_threads() / max(1, n)))
    pieces = _pieces(c, groups, offset_groups, k, split)
    geom = (kh, kw, *stride, *padding, *dilation)
    # the 1x1 conv weight, its input channels ordered (kernel point, channel) within each group
    wmat = weight.permute(0, 2, 3, 1).reshape(c_out, k * cq, 1, 1)
    return groups, pieces, geom, cq, wmat


def _padded_channels_last(input: Tensor) -> Tensor:
    n, c, h, w = input.shape
    xpad = input.new_zeros(n, h + 2, w + 2, c)
    xpad[:, 1:-1, 1:-1].copy_(input.permute(0, 2, 3, 1))
    return xpad


def _columns(xpad, offset, mask, pieces, geom, cq, k, groups) -> Tensor:
    """``[n, K*C, Ho, Wo]`` view (channels-last memory) of freshly sampled columns."""
    n = xpad.shape[0]
    ho, wo = offset.shape[2:]
    cols = xpad.new_empty(n, ho, wo, groups * k * cq)
    use_mask = mask is not None
    m = (mask if use_mask else offset[:, :1]).contiguous()
    _columns_kernel(
        xpad.numpy(), offset.numpy(), m.numpy(), use_mask, pieces, geom, cq, cols.numpy()
    )
    return cols.permute(0, 3, 1, 2)


def _item_bytes(input: Tensor, offset: Tensor, k: int) -> int:
    _, c, h, w = input.shape
    ho, wo = offset.shape[2:]
    # columns and their gradient, plus the padded input copy and its gradient
    return (2 * c * k * ho * wo + 2 * c * (h + 2) * (w + 2)) * input.element_size()


def forward(input, offset, mask, weight, bias, stride, padding, dilation) -> Tensor:
    """Deformable convolution on CPU float32/float64 tensors (arguments as the reference)."""
    input, offset, weight = input.contiguous(), offset.contiguous(), weight.contiguous()
    mask = None if mask is None else mask.contiguous()
    groups, pieces, geom, cq, wmat = _setup(input, offset, weight, stride, padding, dilation)
    k = geom[0] * geom[1]
    n = input.shape[0]
    ho, wo = offset.shape[2:]
    out = input.new_empty(n, weight.shape[0], ho, wo)
    for a, b in batch_chunks(n, _item_bytes(input, offset, k)):
        xpad = _padded_channels_last(input[a:b])
        sub_mask = None if mask is None else mask[a:b]
        cols = _columns(xpad, offset[a:b], sub_mask, pieces, geom, cq, k, groups)
        out[a:b] = F.conv2d(cols, wmat, bias, groups=groups)
    return out


def backward(grad, input, offset, mask, weight, bias, stride, padding, dilation):
    """Gradients ``(input, offset, mask, weight, bias)``; ``mask``'s is None without a mask."""
    grad, input, offset = grad.contiguous(), input.contiguous(), offset.contiguous()
    weight = weight.contiguous()
    mask = None if mask is None else mask.contiguous()
    groups, pieces, geom, cq, wmat = _setup(input, offset, weight, stride, padding, dilation)
    k = geom[0] * geom[1]
    n = input.shape[0]
    use_mask = mask is not None
    g_input = torch.empty_like(input)
    g_offset = torch.zeros_like(offset)
    g_mask = torch.zeros_like(mask) if use_mask else None
    g_wmat = torch.zeros_like(wmat)
    g_bias = None if bias is None else grad.sum((0, 2, 3))
    for a, b in batch_chunks(n, _item_bytes(input, offset, k)):
        xpad = _padded_channels_last(input[a:b])
        off = offset[a:b]
        m = mask[a:b] if use_mask else off[:, :1].contiguous()
        cols = _columns(xpad, off, mask[a:b] if use_mask else None, pieces, geom, cq, k, groups)
        g_cols, g_w, _ = torch.ops.aten.convolution_backward(
            grad[a:b], cols, wmat, None, [1, 1], [0, 0], [1, 1], False, [0, 0], groups,
            [True, True, False],
        )  # fmt: skip
        g_wmat += g_w
        del cols
        g_cols = g_cols.permute(0, 2, 3, 1).contiguous()
        gxpad = torch.zeros_like(xpad)
        _grad_input_kernel(
            g_cols.numpy(), off.numpy(), m.numpy(), use_mask, pieces, geom, cq, gxpad.numpy()
        )
        g_input[a:b] = gxpad[:, 1:-1, 1:-1].permute(0, 3, 1, 2)
        gm = g_mask[a:b] if use_mask else m
        _grad_offset_kernel(
            g_cols.numpy(), xpad.numpy(), off.numpy(), m.numpy(), use_mask, pieces, geom, cq,
            g_offset[a:b].numpy(), gm.numpy(),
        )  # fmt: skip
    g_weight = g_wmat.reshape(weight.shape[0], geom[0], geom[1], cq).permute(0, 3, 1, 2)
    return g_input, g_offset, g_mask, g_weight.contiguous(), g_bias
