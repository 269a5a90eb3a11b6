"""Fast CPU non-maximum suppression (Numba): greedy NMS with a uniform grid of kept boxes.

Kernel interface: ``nms(boxes, scores, category, threshold) -> Tensor[K] (int64)``, as documented
in :mod:`._nms_torch`. The score order, the gather and the suppression all run in compiled code
(a radix sort: a stable sort of 20,000 float scores in torch costs more than the suppression).

How it works
============
Greedy NMS keeps a box unless an earlier kept box of its category overlaps it with
``IoU > threshold``. Visiting the sorted boxes once and asking "does any kept box suppress this
one?" gives the same answer as the textbook order (each kept box suppressing the ones after it);
asked this way, only the kept boxes near the candidate need an IoU. With categories, the
score-ordered boxes are stably sorted by category and each category runs through the grid on its
own (a box alone in its category is kept without one), so the work follows the per-category
counts; the kept flags are gathered back in score order.

For ``threshold >= 0`` an IoU above the threshold needs a positive intersection, and a positive
intersection contains the point ``(max(x1), max(y1))`` of the two boxes, which lies in both.
So every kept box is registered in the cells of a uniform grid that its extent touches (a linked
list per cell), and a candidate reads only the lists of its own cells: exact, not approximate.
The cell side is the mean box side (capped to about ``4 N`` cells in all). Boxes that would
cover more than ``MAX_CELLS`` cells are "loose": a loose candidate is tested against every kept
box, a loose kept box against every candidate. Boxes that cannot have a positive-area
intersection, or whose area is not finite (zero or negative width or height, a NaN or infinite
coordinate), have IoU 0 or NaN with every box: for ``threshold >= 0`` they are kept and suppress
nothing. A negative threshold (every pair with IoU 0 is then "over") skips the grid and tests
every pair, as do coordinates so large that the grid's float64 extent overflows.

Memory is O(N) (the grid, its lists, the kept list); no pairwise matrix exists. The IoU is
:func:`.boxes.pairwise_iou`'s sequence of operations in the boxes' dtype, so the result is
bit-identical to the reference's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit
from torch import Tensor

MAX_CELLS = 64


def nms(boxes: Tensor, scores: Tensor, category: Tensor | None, threshold: float) -> Tensor:
    b = boxes.detach().contiguous().numpy()
    dtype = b.dtype.type
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()
    s = scores.detach().contiguous().numpy()
    cat = np.zeros(0, np.int64) if category is None else category.long().contiguous().numpy()
    return torch.from_numpy(
        _nms(b, s, cat, category is not None, dtype(threshold), dtype(0), MAX_CELLS)
    )


@njit(cache=True)
def _nms(boxes, scores, cat, use_cat, thr, zero, max_cells):
    """Indices kept: sort, group by category, gather, grid NMS on each category separately."""
    order = descending_order(scores)
    n = boxes.shape[0]
    if not use_cat:
        return order[_nms_grid(_gather(boxes, order), thr, zero, max_cells)]
    c = np.empty(n, np.int64)
    for k in range(n):
        c[k] = cat[order[k]]
    group = np.argsort(c, kind="mergesort")  # stable: score order kept within a category
    b = _gather(boxes, order[group])
    keep = np.zeros(n, np.bool_)  # by score rank
    lo = 0
    while lo < n:
        hi = lo + 1
        while hi < n and c[group[hi]] == c[group[lo]]:
            hi += 1
        if hi - lo == 1:
            keep[group[lo]] = True  # alone in its category
        else:
            kept = _nms_grid(b[lo:hi], thr, zero, max_cells)
            for k in range(lo, hi):
                keep[group[k]] = kept[k - lo]
        lo = hi
    return order[keep]


@njit(cache=True)
def _gather(boxes, index):
    b = np.empty((index.shape[0], 4), boxes.dtype)
    for k in range(index.shape[0]):
        for t in range(4):
            b[k, t] = boxes[index[k], t]
    return b


@njit(cache=True)
def descending_order(scores):
    """``torch.sort(scores, descending=True, stable=True).indices``: NaN first, ``-0.0 == 0.0``,
    ties by index. An LSD radix sort (8-bit digits) of 64-bit keys that order float64 values;
    digits equal for every key (the low mantissa bits of float32 scores) are skipped."""
    n = scores.shape[0]
    values = np.empty(n, np.float64)
    for i in range(n):
        x = np.float64(scores[i])
        values[i] = 0.0 if x == 0.0 else x  # one zero
    bits = values.view(np.uint64)
    sign = np.uint64(1) << np.uint64(63)
    keys = np.empty(n, np.uint64)
    for i in range(n):
        if values[i] != values[i]:
            keys[i] = np.uint64(0)  # NaN: before every number
        else:
            ascending = ~bits[i] if bits[i] & sign else bits[i] | sign
            keys[i] = ~ascending
    counts = np.zeros((8, 256), np.int64)  # a histogram per byte, all in one pass
    mask = np.uint64(255)
    for i in range(n):
        key = keys[i]
        for d in range(8):
            counts[d, np.int64((key >> np.uint64(8 * d)) & mask)] += 1
    order = np.arange(n)
    keys2 = np.empty_like(keys)
    order2 = np.empty_like(order)
    for d in range(8):
        count = counts[d]
        if count.max() == n:
            continue  # every key has the same byte d: already in order for it
        total = 0
        for v in range(256):
            total, count[v] = total + count[v], total
        shift = np.uint64(8 * d)
        for i in range(n):
            v = np.int64((keys[i] >> shift) & mask)
            keys2[count[v]] = keys[i]
            order2[count[v]] = order[i]
            count[v] += 1
        keys, keys2 = keys2, keys
        order, order2 = order2, order
    return order


@njit(cache=True, inline="always")
def _max(a, b):
    return a if (a > b or a != a) else b  # NaN in either propagates, as torch.maximum


@njit(cache=True, inline="always")
def _min(a, b):
    return a if (a < b or a != a) else b


@njit(cache=True, inline="always", error_model="numpy")
def _over(b, area, i, j, thr, zero, finite):
    """IoU of boxes i and j (pairwise_iou's operations, in the boxes' dtype) > thr.

    ``finite``: both boxes are proper (finite, positive width and height), so plain min/max
    (branch-free machine instructions) give the same values as the NaN-propagating ones (up to
    the sign of a zero width, which cannot change ``> thr`` for ``thr >= 0``, the only case the
    grid uses them); mispredicted branches would otherwise double the cost of an IoU."""
    if finite:
        w = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
        h = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
        w = w if w > zero else zero
        h = h if h > zero else zero
    else:
        w = _min(b[i, 2], b[j, 2]) - _max(b[i, 0], b[j, 0])
        h = _min(b[i, 3], b[j, 3]) - _max(b[i, 1], b[j, 1])
        if w < zero:
            w = zero
        if h < zero:
            h = zero
    inter = w * h
    return inter / (area[i] + area[j] - inter) > thr


@njit(cache=True, error_model="numpy")
def _nms_grid(b, thr, zero, max_cells):
    n = b.shape[0]
    keep = np.zeros(n, np.bool_)
    area = np.empty(n, b.dtype)
    proper = np.zeros(n, np.bool_)
    for i in range(n):
        w = b[i, 2] - b[i, 0]
        h = b[i, 3] - b[i, 1]
        area[i] = w * h
        proper[i] = w > zero and h > zero and math.isfinite(area[i])
        for c in range(4):
            proper[i] = proper[i] and math.isfinite(b[i, c])
    use_grid = thr >= zero

    # grid geometry (float64) from the proper boxes
    x0, y0, x_hi, y_hi, side, count = np.inf, np.inf, -np.inf, -np.inf, 0.0, 0
    for i in range(n):
        if proper[i]:
            x0, y0 = min(x0, float(b[i, 0])), min(y0, float(b[i, 1]))
            x_hi, y_hi = max(x_hi, float(b[i, 2])), max(y_hi, float(b[i, 3]))
            side += max(float(b[i, 2]) - float(b[i, 0]), float(b[i, 3]) - float(b[i, 1]))
            count += 1
    nx = ny = 1
    cell = side / count if count > 0 else 1.0
    if not (math.isfinite(cell) and math.isfinite(x_hi - x0) and math.isfinite(y_hi - y0)):
        use_grid = False  # float64 overflow (coordinates near 1e308): test every pair
    if use_grid and count > 0:
        cap = 4.0 * n + 64.0
        while ((x_hi - x0) / cell + 1.0) * ((y_hi - y0) / cell + 1.0) > cap:
            cell *= 1.5
        nx = math.floor((x_hi - x0) / cell) + 1
        ny = math.floor((y_hi - y0) / cell) + 1
    head = np.full(nx * ny, -1, np.int64)
    entry_box = np.empty(4 * n + 16, np.int64)
    entry_next = np.empty(4 * n + 16, np.int64)
    n_entries = 0
    kept = np.empty(n, np.int64)  # every kept box, in order
    n_kept = 0
    loose = np.empty(n, np.int64)  # kept proper boxes not in the grid
    n_loose = 0

    for j in range(n):
        if use_grid and not proper[j]:
            keep[j] = True  # IoU 0 or NaN with every box: never over a threshold >= 0
            continue
        cx0 = cx1 = cy0 = cy1 = 0
        in_grid = False
        if use_grid:
            cx0 = math.floor((float(b[j, 0]) - x0) / cell)
            cx1 = math.floor((float(b[j, 2]) - x0) / cell)
            cy0 = math.floor((float(b[j, 1]) - y0) / cell)
            cy1 = math.floor((float(b[j, 3]) - y0) / cell)
            in_grid = (cx1 - cx0 + 1) * (cy1 - cy0 + 1) <= max_cells
        suppressed = False
        if in_grid:
            for t in range(n_loose):
                i = loose[t]
                if _over(b, area, i, j, thr, zero, use_grid):
                    suppressed = True
                    break
            cy = cy0
            while not suppressed and cy <= cy1:
                cx = cx0
                while not suppressed and cx <= cx1:
                    e = head[cy * nx + cx]
                    while e >= 0:
                        i = entry_box[e]
                        if _over(b, area, i, j, thr, zero, use_grid):
                            suppressed = True
                            break
                        e = entry_next[e]
                    cx += 1
                cy += 1
        else:
            for t in range(n_kept):
                i = kept[t]
                if _over(b, area, i, j, thr, zero, use_grid):
                    suppressed = True
                    break
        if suppressed:
            continue
        keep[j] = True
        kept[n_kept] = j
        n_kept += 1
        if not use_grid:
            continue
        if not in_grid:
            loose[n_loose] = j
            n_loose += 1
            continue
        needed = n_entries + (cx1 - cx0 + 1) * (cy1 - cy0 + 1)
        if needed > entry_box.shape[0]:
            size = max(needed, 2 * entry_box.shape[0])
            entry_box = _grow(entry_box, size)
            entry_next = _grow(entry_next, size)
        for cy in range(cy0, cy1 + 1):
            for cx in range(cx0, cx1 + 1):
                entry_box[n_entries] = j
                entry_next[n_entries] = head[cy * nx + cx]
                head[cy * nx + cx] = n_entries
                n_entries += 1
    return keep


@njit(cache=True)
def _grow(a, size):
    out = np.empty(size, a.dtype)
    out[: a.shape[0]] = a
    return out
