"""Deterministic scatter-add in Triton: points sorted by cell, gathered per cell (no atomics).

Used by every Triton backward under ``torch.use_deterministic_algorithms(True)``: the RoI family
(aligned samples, summed-area corners of integer bins) and deformable convolution. The caller lists
the points it would scatter (cell key, weight, where its values are and, for bilinear points, the
fractions); :func:`sorted_gather` sorts them stably by cell and every output cell adds its points
in that fixed order, so results are bitwise reproducible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._triton_launch import NUM_WARPS


@triton.jit
def _gather_kernel(
    src_ptr, row_ptr, coef_ptr, frac_ptr, perm_ptr, seg_ptr, out_ptr, n_cells, C, G, S, H1, W1,
    BILINEAR: tl.constexpr, ACCUMULATE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_PIX: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """out[plane, y, x, g*cg + c] (+)= sum over the points of group g whose cell is (y, x) (or,
    BILINEAR, a neighbour it reaches as corner (dy, dx)) of weight * src[row + c * S], in sorted
    order. ``out`` is ``[P, H1, W1, C]`` channels-last; no atomics."""
    pix = tl.program_id(0) * BLOCK_PIX + tl.arange(0, BLOCK_PIX)
    ok = pix < n_cells
    g = tl.program_id(1)
    cg = C // G
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = (c < cg)[None, :]
    hw = pix % (H1 * W1)
    y = hw // W1
    x = hw % W1
    cell0 = g.to(tl.int64) * n_cells + pix
    acc = tl.zeros((BLOCK_PIX, BLOCK_C), dtype=ACC)
    for corner in tl.static_range(4 if BILINEAR else 1):
        dy = corner // 2
        dx = corner % 2
        has = ok & (y >= dy) & (x >= dx)
        cell = cell0 - dy * W1 - dx
        start = tl.load(seg_ptr + cell, mask=has, other=0)
        stop = tl.load(seg_ptr + cell + 1, mask=has, other=0)
        for t in range(0, tl.max(stop - start, 0)):
            idx = start + t
            live = has & (idx < stop)
            s = tl.load(perm_ptr + idx, mask=live, other=0).to(tl.int64)
            w = tl.load(coef_ptr + s, mask=live, other=0.0).to(ACC)
            if BILINEAR:
                ly = tl.load(frac_ptr + 2 * s, mask=live, other=0.0)
                lx = tl.load(frac_ptr + 2 * s + 1, mask=live, other=0.0)
                wy = ly if dy == 1 else 1.0 - ly
                wx = lx if dx == 1 else 1.0 - lx
                w = w * (wy * wx).to(ACC)
            row = tl.load(row_ptr + s, mask=live, other=0)
            vals = tl.load(
                src_ptr + row[:, None] + c[None, :] * S, mask=live[:, None] & cm, other=0.0
            )
            acc += w[:, None] * vals.to(ACC)
    op = out_ptr + (pix.to(tl.int64) * C + g * cg)[:, None] + c[None, :]
    if ACCUMULATE:
        acc += tl.load(op, mask=ok[:, None] & cm, other=0.0)
    tl.store(op, acc, mask=ok[:, None] & cm)


def sorted_gather(
    src: Tensor, key: Tensor, row: Tensor, coef: Tensor, frac: Tensor, out: Tensor, groups: int,
    stride: int, bilinear: bool, accumulate: bool,
) -> None:  # fmt: skip
    """Scatter without atomics: sort the points by cell, then every cell of ``out [P, H1, W1, C]``
    (float32 or float64, channels-last) gathers its own, in sorted order.

    Point ``s`` of group ``g`` has cell ``key[s]`` in the ``(g, P, H1, W1)`` grid (a key past the
    end drops the point), weight ``coef[s]`` and values ``src[row[s] + c * stride]`` for the
    ``C / groups`` channels ``c`` of its group. With ``bilinear`` the cell is the point's top-left
    corner and ``frac[s] = (ly, lx)`` spreads it over the four corners; ``accumulate`` adds to
    ``out`` instead of overwriting it.
    """
    planes, h1, w1, c = out.shape
    n_cells = planes * h1 * w1
    sorted_key, perm = torch.sort(key, stable=True)
    bounds = torch.arange(groups * n_cells + 1, device=key.device, dtype=torch.int64)
    seg = torch.searchsorted(sorted_key, bounds, out_int32=True)
    cg = c // groups
    block_c = max(1, min(32, triton.next_power_of_2(cg)))
    grid = (triton.cdiv(n_cells, 32), groups, triton.cdiv(cg, block_c))
    acc = tl.float64 if out.dtype == torch.float64 else tl.float32
    _gather_kernel[grid](
        src, row, coef, frac, perm.to(torch.int32), seg, out, n_cells, c, groups, stride, h1, w1,
        BILINEAR=bilinear, ACCUMULATE=accumulate, ACC=acc, BLOCK_PIX=32, BLOCK_C=block_c,
        num_warps=NUM_WARPS,
    )  # fmt: skip
