"""torchvision's ``roi_pool`` (max over integer bins) in Triton; overview: :mod:`._roi_triton`.

A program owns one RoI and a block of channels and holds all ``ph * pw`` bins of that RoI as the
rows of a ``[BLOCK_B, BLOCK_C]`` tile (bins from :func:`._roi_common.integer_bins`, the input read
channels-last). It walks each bin's cells in row-major order keeping the first strictly larger value
(torchvision's rule: start at -FLT_MAX, NaN is never taken, an empty bin is 0) and its cell. The
backward recomputes that argmax and adds the output gradient there with ``index_put_(accumulate=
True)``, which PyTorch makes deterministic under ``torch.use_deterministic_algorithms(True)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._roi_common import FLT_MAX, batch_index, integer_bins
from ._triton_launch import NUM_WARPS, tile_blocks


@triton.jit
def _max_kernel(
    x_ptr, out_ptr, arg_ptr, bins_ptr, img_ptr, H, W, C, PH, PW, B, NEG: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """out[r, c, bin] = max over the bin's cells of ``x [N, H, W, C]``; arg = its ``y * W + x``."""
    r = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = (c < C)[None, :]
    bins = tl.arange(0, BLOCK_B)
    b_ok = bins < B
    i = bins // PW
    j = bins - i * PW
    # bins [R, PH + PH + PW + PW] int32: y_lo, y_hi, x_lo, x_hi
    row = bins_ptr + r * (2 * PH + 2 * PW)
    y_lo = tl.load(row + i, mask=b_ok, other=0)
    y_hi = tl.load(row + PH + i, mask=b_ok, other=0)
    x_lo = tl.load(row + 2 * PH + j, mask=b_ok, other=0)
    x_hi = tl.load(row + 2 * PH + PW + j, mask=b_ok, other=0)
    base = tl.load(img_ptr + r).to(tl.int64) * H * W
    best = tl.full((BLOCK_B, BLOCK_C), NEG, tl.float32)
    idx = tl.full((BLOCK_B, BLOCK_C), -1, tl.int32)
    for dy in range(0, tl.max(y_hi - y_lo, 0)):
        for dx in range(0, tl.max(x_hi - x_lo, 0)):
            inside = b_ok & (y_lo + dy < y_hi) & (x_lo + dx < x_hi)
            cell = (y_lo + dy) * W + x_lo + dx
            a = ((base + cell) * C)[:, None] + c[None, :]
            v = tl.load(x_ptr + a, mask=inside[:, None] & cm, other=float("-inf"))
            v = v.to(tl.float32)
            better = v > best  # False for NaN and for the masked -inf
            best = tl.where(better, v, best)
            idx = tl.where(better, cell[:, None], idx)
    empty = (y_hi <= y_lo) | (x_hi <= x_lo)
    best = tl.where(empty[:, None], 0.0, best)
    at = (r.to(tl.int64) * C + c[None, :]) * B + bins[:, None]  # [R, C, ph, pw] layout
    ok = b_ok[:, None] & cm
    tl.store(out_ptr + at, best.to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(arg_ptr + at, idx, mask=ok)


def max_pool(input, rois, pooled, scale):
    """``(out [R, C, ph, pw], arg [R, C, ph, pw] int32)``; the caller checks the input."""
    _, c, h, w = input.shape
    r = rois.shape[0]
    out = input.new_empty(r, c, *pooled)
    arg = torch.empty(out.shape, dtype=torch.int32, device=input.device)
    if out.numel() == 0:
        return out, arg
    x = input.permute(0, 2, 3, 1).contiguous()
    table = (
        torch.cat(integer_bins(rois.float(), scale, pooled, h, w), 1).to(torch.int32).contiguous()
    )
    img = batch_index(rois).to(torch.int32).contiguous()
    block_b, block_c = tile_blocks(pooled[0] * pooled[1], c)
    _max_kernel[(r, triton.cdiv(c, block_c))](
        x, out, arg, table, img, h, w, c, *pooled, pooled[0] * pooled[1], NEG=-FLT_MAX,
        BLOCK_B=block_b, BLOCK_C=block_c, num_warps=NUM_WARPS,
    )  # fmt: skip
    return out, arg


def max_pool_backward(grad, input, rois, pooled, scale):
    """``[N, C, H, W]``: each output gradient added to its bin's argmax cell."""
    _, arg = max_pool(input, rois, pooled, scale)
    n, c, h, w = input.shape
    g = torch.zeros(n * c * h * w, dtype=torch.float32, device=input.device)
    if arg.numel():
        chan = torch.arange(c, device=input.device).view(1, c, 1, 1)
        plane = batch_index(rois).view(-1, 1, 1, 1) * c + chan
        flat = plane * (h * w) + arg.long()
        taken = arg >= 0
        g.index_put_((flat[taken],), grad[taken].float(), accumulate=True)
    return g.view(n, c, h, w).to(input.dtype)
