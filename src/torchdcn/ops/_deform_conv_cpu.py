"""Fast CPU deformable convolution: Numba sampling kernels around a GEMM, in cache-sized blocks.

The input is copied once to channels-last with a one-cell zero border, so every corner read is in
bounds and reads a contiguous channel vector; bilinear weights (mask folded in) are computed once
per (offset group, kernel point, output position) and reused for all channels of the group.

The output positions are processed in blocks of whole output rows whose columns
``[rows * Wo, groups * K * C/groups]`` take about :data:`BLOCK_BYTES`: a block is sampled and at
once multiplied by the weight while it is still in cache (MLAS through onnxruntime where present,
else oneDNN's 1x1 convolution; PyTorch's own ``matmul`` is MKL, slow on AMD), and one block buffer
serves the whole call. Writing all of an image's columns instead costs a trip to memory, and past
glibc's 32 MiB mmap ceiling fresh page faults on every call. Backward recomputes each block's
columns instead of keeping them.

Memory beyond the inputs and results, per batch chunk (:func:`_item_bytes`; the chunk is as many
images as fit :func:`~torchdcn.ops.set_workspace_limit`, at least one): forward, a padded
channels-last copy of the chunk's input, one column block (:data:`BLOCK_BYTES`) and the output in
channels-last order (permuted on return, a copy unless the caller wants channels-last); backward,
the padded copy *plus one padded input-gradient accumulator per Numba thread*, the chunk's output
gradient in channels-last order and two column blocks. So the bound is about
``max(workspace limit, one image's share) + 2 * BLOCK_BYTES`` (benchmarks/bench_memory.py).

Every tensor is made dense (``.contiguous()``) on entry and every matrix handed to the GEMM is a
dense row-major block: the MLAS route reads raw pointers.

Column layout: for conv group ``q`` and kernel point ``k`` the channels of ``q`` are contiguous,
``col[q*K*Cq + k*Cq + c']``; the weight is permuted to match. A *piece* is a contiguous channel run
inside one offset group and one conv group: ``(offset_group, lo, hi, base)`` with the column index
of channel ``cc`` at kernel point ``k`` being ``base + k*Cq + cc``. Kernels address output rows by
``t = n * Ho + oy`` and take the first row ``t0`` of their block.
"""

from __future__ import annotations

import itertools
import math

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from . import _gemm
from ._backend import batch_chunks
from ._numba_threads import thread_budget

BLOCK_BYTES = 16 << 20


def _pieces(channels: int, groups: int, offset_groups: int, k: int) -> np.ndarray:
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
def _columns_kernel(xpad, offset, mask, use_mask, pieces, geom, cq, t0, cols):
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


@njit(parallel=True, cache=True)
def _grad_input_kernel(gcols, offset, mask, use_mask, pieces, geom, cq, t0, gxpad_parts):
    """gxpad[part][n, corner, c] += weight * gcols[...]: the block's rows are cut into as many
    equal runs as there are accumulators, run ``j`` adds into its own copy ``gxpad_parts[j]``
    (summed by the caller in a fixed order), so no two threads write one cell, the channel loops
    stay whole and the result does not depend on which thread ran which run (deterministic)."""
    parts = gxpad_parts.shape[0]
    rows = gcols.shape[0]
    for j in prange(parts):
        gxpad = gxpad_parts[j]
        for r in range(j * rows // parts, (j + 1) * rows // parts):
            _grad_input_row(gcols, offset, mask, use_mask, pieces, geom, cq, t0, gxpad, r)


@njit(cache=True, inline="always")
def _grad_input_row(gcols, offset, mask, use_mask, pieces, geom, cq, t0, gxpad, r):
    """One output row ``t0 + r`` of :func:`_grad_input_kernel`."""
    _, hp, wp, _ = gxpad.shape
    ho = offset.shape[2]
    _, wo, _ = gcols.shape
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


# reductions over channels may be reassociated (so they vectorise); NaN/inf semantics are kept
@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _grad_offset_kernel(gcols, xpad, offset, mask, use_mask, pieces, geom, cq, t0, goff, gmask):
    """Offset and mask gradients: reductions over channels, parallel over output rows."""
    _, hp, wp, _ = xpad.shape
    ho = offset.shape[2]
    rows, wo, _ = gcols.shape
    nk = geom[0] * geom[1]
    for r in prange(rows):
        n = (t0 + r) // ho
        oy = t0 + r - n * ho
        for ox in range(wo):
            for p in range(pieces.shape[0]):
                g, lo, hi, base = pieces[p, 0], pieces[p, 1], pieces[p, 2], pieces[p, 3]
                for kk in range(nk):
                    iy, ix, ly, lx, ok = _point(offset, n, g, kk, oy, ox, geom, hp - 2, wp - 2)
                    if not ok:
                        continue
                    src = gcols[r, ox, base + kk * cq + lo : base + kk * cq + hi]
                    r00 = xpad[n, iy, ix, lo:hi]
                    r01 = xpad[n, iy, ix + 1, lo:hi]
                    r10 = xpad[n, iy + 1, ix, lo:hi]
                    r11 = xpad[n, iy + 1, ix + 1, lo:hi]
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
                    m = mask[n, g * nk + kk, oy, ox] if use_mask else 1.0
                    goff[n, 2 * (g * nk + kk), oy, ox] += sy * m
                    goff[n, 2 * (g * nk + kk) + 1, oy, ox] += sx * m
                    if use_mask:
                        gmask[n, g * nk + kk, oy, ox] += sv


def _setup(input, offset, weight, stride, padding, dilation):
    c = input.shape[1]
    c_out, cq, kh, kw = weight.shape
    k = kh * kw
    groups = c // cq
    offset_groups = offset.shape[1] // (2 * k)
    pieces = _pieces(c, groups, offset_groups, k)
    geom = (kh, kw, *stride, *padding, *dilation)
    # the weight as a matrix [C_out, groups-major (kernel point, channel)] matching the columns
    w2 = weight.permute(0, 2, 3, 1).reshape(c_out, k * cq).contiguous()
    return groups, pieces, geom, cq, w2


def _padded_channels_last(input: Tensor) -> Tensor:
    n, c, h, w = input.shape
    xpad = input.new_zeros(n, h + 2, w + 2, c)
    xpad[:, 1:-1, 1:-1].copy_(input.permute(0, 2, 3, 1))
    return xpad


def _blocks(rows: int, row_bytes: int):
    """``(t0, t1)`` row blocks of about BLOCK_BYTES, a multiple of the thread count when long."""
    threads = numba.get_num_threads()
    step = max(1, BLOCK_BYTES // max(1, row_bytes))
    if step > threads:
        step -= step % threads
    for t0 in range(0, rows, step):
        yield t0, min(rows, t0 + step)


class _Product:
    """The block products of one call: forward ``out = cols @ W^T (+ b)`` and, for backward,
    ``g_cols = g_out @ W`` and ``g_W += g_out^T @ cols``; matrices are ``[positions, channels]``.
    MLAS for float32 with one conv group, else oneDNN through a 1x1 convolution."""

    def __init__(self, w2: Tensor, groups: int, bias: Tensor | None) -> None:
        self.w2, self.groups = w2, groups
        self.mlas = groups == 1 and _gemm.usable(w2)
        self.c = None if bias is None else bias.reshape(1, -1).contiguous()
        self.bias = bias
        self.wmat = w2.view(w2.shape[0], w2.shape[1], 1, 1)
        self._acc = None

    def forward(self, cols: Tensor, out: Tensor) -> None:
        if self.mlas:
            _gemm.gemm(cols, self.w2, out, False, True, self.c)
        else:
            y = torch.nn.functional.conv2d(
                self._as_image(cols), self.wmat, self.bias, 1, 0, 1, self.groups
            )
            out.copy_(y[0, :, :, 0].t())

    def backward(self, g_out: Tensor, cols: Tensor, g_cols: Tensor) -> None:
        """``g_cols`` is written; the weight gradient accumulates (see :meth:`weight_grad`)."""
        if self.mlas:
            _gemm.gemm(g_out, self.w2, g_cols, False, False)
            if self._acc is None:
                self._acc = [torch.zeros_like(self.w2), torch.empty_like(self.w2)]
            # ping-pong: new = g_out^T @ cols + old, never written over its own input
            _gemm.gemm(g_out, cols, self._acc[1], True, False, self._acc[0])
            self._acc.reverse()
        else:
            gc, gw, _ = torch.ops.aten.convolution_backward(
                self._as_image(g_out), self._as_image(cols), self.wmat, None, [1, 1], [0, 0],
                [1, 1], False, [0, 0], self.groups, [True, True, False],
            )  # fmt: skip
            g_cols.copy_(gc[0, :, :, 0].t())
            if self._acc is None:
                self._acc = [torch.zeros_like(self.w2)]
            self._acc[0] += gw.view_as(self.w2)

    def weight_grad(self) -> Tensor:
        return torch.zeros_like(self.w2) if self._acc is None else self._acc[0]

    @staticmethod
    def _as_image(m: Tensor) -> Tensor:
        """``[P, C]`` rows as a ``[1, C, P, 1]`` image in channels-last memory (no copy)."""
        return m.t()[None, :, :, None]


def _item_bytes(input: Tensor, grad: Tensor | None = None) -> int:
    """Working bytes per image: the padded copy (forward); with the output gradient ``grad``
    (backward) also a padded accumulator per thread and a channels-last copy of ``grad``."""
    _, c, h, w = input.shape
    padded = c * (h + 2) * (w + 2) * input.element_size()
    if grad is None:
        return padded
    return (1 + numba.get_num_threads()) * padded + grad[0].numel() * grad.element_size()


@thread_budget
def forward(input, offset, mask, weight, bias, stride, padding, dilation) -> Tensor:
    """Deformable convolution on CPU float32/float64 tensors (arguments as the reference).

    Returns the output ``[N, C_out, H_out, W_out]`` as a channels-last strided view (the caller
    picks the memory format; ``.contiguous()`` gives NCHW)."""
    input, offset, weight = input.contiguous(), offset.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    use_mask = mask is not None
    mask = (mask if use_mask else offset[:, :1]).contiguous()
    groups, pieces, geom, cq, w2 = _setup(input, offset, weight, stride, padding, dilation)
    n, c_out = input.shape[0], weight.shape[0]
    ho, wo = offset.shape[2:]
    out = input.new_empty(n, ho, wo, c_out)  # channels-last while blocks are written
    product = _Product(w2, groups, bias)
    width = groups * w2.shape[1]  # columns per position
    for a, b in batch_chunks(n, _item_bytes(input)):
        xpad = _padded_channels_last(input[a:b])
        off, m = offset[a:b].numpy(), mask[a:b].numpy()
        out_rows = out[a:b].view((b - a) * ho * wo, c_out)
        buf = None
        for t0, t1 in _blocks((b - a) * ho, wo * width * input.element_size()):
            if buf is None:
                buf = input.new_empty((t1 - t0) * wo * width)
            cols = buf[: (t1 - t0) * wo * width].view(t1 - t0, wo, width)
            _columns_kernel(xpad.numpy(), off, m, use_mask, pieces, geom, cq, t0, cols.numpy())
            product.forward(cols.view((t1 - t0) * wo, -1), out_rows[t0 * wo : t1 * wo])
        xpad = buf = cols = None  # freed before the next chunk allocates its own
    return out.permute(0, 3, 1, 2)


@thread_budget
def backward(grad, input, offset, mask, weight, bias, stride, padding, dilation):
    """Gradients ``(input, offset, mask, weight, bias)``; ``mask``'s is None without a mask.

    ``grad`` ``[N, C_out, H_out, W_out]`` may have any strides (expanded, channel-major, ...):
    it is made dense here and each chunk of it is copied to dense channels-last rows."""
    grad, input = grad.contiguous(), input.contiguous()
    offset, weight = offset.contiguous(), weight.contiguous()
    use_mask = mask is not None
    mask = (mask if use_mask else offset[:, :1]).contiguous()
    groups, pieces, geom, cq, w2 = _setup(input, offset, weight, stride, padding, dilation)
    threads = numba.get_num_threads()
    n, c_out = input.shape[0], weight.shape[0]
    ho, wo = offset.shape[2:]
    g_input = torch.empty_like(input)
    g_offset = torch.zeros_like(offset)
    g_mask = torch.zeros_like(mask)
    product = _Product(w2, groups, None)
    width = groups * w2.shape[1]  # columns per position
    for a, b in batch_chunks(n, _item_bytes(input, grad)):
        xpad = _padded_channels_last(input[a:b])
        gxpad = xpad.new_zeros(threads, *xpad.shape)
        # dense [positions, C_out] rows: for one image the reshape alone would be a transposed
        # view, which a pointer-based GEMM would misread
        g_rows = grad[a:b].permute(0, 2, 3, 1).contiguous().view((b - a) * ho * wo, c_out)
        off, m = offset[a:b].numpy(), mask[a:b].numpy()
        g_off, g_m = g_offset[a:b].numpy(), g_mask[a:b].numpy()
        bufs = None
        for t0, t1 in _blocks((b - a) * ho, 2 * wo * width * input.element_size()):
            size = (t1 - t0) * wo * width
            if bufs is None:
                bufs = (input.new_empty(size), input.new_empty(size))
            cols = bufs[0][:size].view(t1 - t0, wo, width)
            g_cols = bufs[1][:size].view(t1 - t0, wo, width)
            _columns_kernel(xpad.numpy(), off, m, use_mask, pieces, geom, cq, t0, cols.numpy())
            positions = (t1 - t0) * wo
            product.backward(
                g_rows[t0 * wo : t1 * wo], cols.view(positions, -1), g_cols.view(positions, -1)
            )
            _grad_input_kernel(
                g_cols.numpy(), off, m, use_mask, pieces, geom, cq, t0, gxpad.numpy()
            )
            _grad_offset_kernel(
                g_cols.numpy(), xpad.numpy(), off, m, use_mask, pieces, geom, cq, t0, g_off, g_m
            )
        # sum the per-thread accumulators straight into the result (no summed temporary)
        g_chunk = g_input[a:b]
        g_chunk.copy_(gxpad[0, :, 1:-1, 1:-1].permute(0, 3, 1, 2))
        for j in range(1, threads):
            g_chunk += gxpad[j, :, 1:-1, 1:-1].permute(0, 3, 1, 2)
        xpad = gxpad = g_rows = bufs = cols = g_cols = None  # freed before the next chunk
    kh, kw = geom[0], geom[1]
    g_weight = product.weight_grad().view(c_out, kh, kw, -1).permute(0, 3, 1, 2).contiguous()
    g_bias = None if bias is None else grad.sum((0, 2, 3))
    return g_input, g_offset, g_mask if use_mask else None, g_weight, g_bias
