"""torchvision's ``roi_pool`` (max over integer bins) on CPU, Numba; interface: :mod:`._roi_cpu`.

Bins come from :func:`._roi_common.integer_bins`. The forward is parallel over (RoI, bin row) and
reads the input channels-last, so a cell's read is one channel vector; it also gives the argmax
(``y * W + x`` in the RoI's image, -1 where no cell was taken). The backward recomputes the argmax
and adds each output gradient to its cell, parallel over channel runs (a run owns its channels of
the input gradient, so no two threads write one cell), RoIs and bins in order as torchvision does.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from ._numba_threads import threads
from ._roi_common import FLT_MAX, batch_index, integer_bins
from ._types import Pair

_CHUNK = 16  # channels per task of the backward


@njit(parallel=True, cache=True)
def _max_forward_kernel(feat, y_lo, y_hi, x_lo, x_hi, images, out, arg):
    """``out[r, c, i, j]`` = the bin's maximum, ``arg`` its cell; torchvision's rule: start at
    -FLT_MAX, take a cell only if strictly larger (NaN never is), an empty bin is 0."""
    _, _, width, c_all = feat.shape
    n_roi, _, ph, pw = out.shape
    start = feat.dtype.type(-FLT_MAX)
    for t in prange(n_roi * ph):
        r = t // ph
        i = t - r * ph
        b = images[r]
        best = np.empty(c_all, dtype=feat.dtype)
        idx = np.empty(c_all, dtype=np.int64)
        ya, yb = y_lo[r, i], y_hi[r, i]
        for j in range(pw):
            xa, xb = x_lo[r, j], x_hi[r, j]
            if yb <= ya or xb <= xa:
                for c in range(c_all):
                    out[r, c, i, j] = 0
                    arg[r, c, i, j] = -1
                continue
            best[:] = start
            idx[:] = -1
            for y in range(ya, yb):
                for x in range(xa, xb):
                    v = feat[b, y, x]
                    for c in range(c_all):
                        if v[c] > best[c]:
                            best[c] = v[c]
                            idx[c] = y * width + x
            for c in range(c_all):
                out[r, c, i, j] = best[c]
                arg[r, c, i, j] = idx[c]


@njit(parallel=True, cache=True)
def _max_backward_kernel(grad, arg, images, g_input):
    """``g_input[b, c, cell] += grad[r, c, i, j]`` at every bin's argmax cell."""
    n_roi, c_all, ph, pw = grad.shape
    n_chunks = -(-c_all // _CHUNK)
    for t in prange(n_chunks):
        lo = t * _CHUNK
        hi = min(c_all, lo + _CHUNK)
        for r in range(n_roi):
            b = images[r]
            for c in range(lo, hi):
                for i in range(ph):
                    for j in range(pw):
                        a = arg[r, c, i, j]
                        if a >= 0:
                            g_input[b, c, a] += grad[r, c, i, j]


def max_pool(input: Tensor, rois: Tensor, pooled: Pair, scale: float) -> tuple[Tensor, Tensor]:
    """``(out [R, C, ph, pw], arg [R, C, ph, pw] int64)``: torchvision's max RoI pooling and the
    cell (``y * W + x``) each bin took, -1 where none."""
    _, c, h, w = input.shape
    bins = tuple(t.numpy() for t in integer_bins(rois, scale, pooled, h, w))
    feat = input.permute(0, 2, 3, 1).contiguous()
    out = input.new_empty(rois.shape[0], c, *pooled)
    arg = torch.empty(out.shape, dtype=torch.int64)
    images = batch_index(rois).contiguous().numpy()
    with threads(out.numel() * 4):
        _max_forward_kernel(feat.numpy(), *bins, images, out.numpy(), arg.numpy())
    return out, arg


def max_pool_backward(
    grad: Tensor, input: Tensor, rois: Tensor, pooled: Pair, scale: float
) -> Tensor:
    """``[N, C, H, W]``: each output gradient added to its bin's argmax cell."""
    _, arg = max_pool(input, rois, pooled, scale)
    n, c, h, w = input.shape
    g_input = input.new_zeros(n, c, h * w)
    images = batch_index(rois).contiguous().numpy()
    with threads(arg.numel() * 4):
        _max_backward_kernel(grad.contiguous().numpy(), arg.numpy(), images, g_input.numpy())
    return g_input.view(n, c, h, w)
