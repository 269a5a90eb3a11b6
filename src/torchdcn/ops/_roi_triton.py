"""GPU kernels of the RoI pooling family in Triton (the interface of :mod:`._roi_cpu`).

The input is regrouped into planes (:func:`._roi_common.as_planes`: one per image, or per image
and bin for the position-sensitive ops) and read channels-last, so a bin's read is a contiguous
channel vector. A program owns one RoI and a block of channels and holds all ``ph * pw`` bins of
that RoI as the rows of a ``[BLOCK_B, BLOCK_C]`` tile; geometry comes from
:mod:`._roi_common`, computed once per call in float32, so every kernel agrees with the reference.

* Aligned bins (roi_align, ps_roi_align, deform_roi_pool, deform_ps_roi_pool): the forward loops
  over the RoI's ``gh x gw`` grid of bilinear samples (clamp border of SPEC section 1). The
  backward program owns a RoI and an offset group, loops over the group's channels itself and so
  writes the offset and mask gradients (reductions over channels) alone, without atomics; the
  input gradient is scattered with float32 atomics.
* Integer bins (roi_pool, ps_roi_pool): the forward sums the cells of every bin; the backward
  scatters ``grad / area`` to them with atomics.

Under ``torch.use_deterministic_algorithms(True)`` no floating-point atomic is used: the backward
lists the points it would scatter (each aligned sample's top-left cell, fractions and weight; for
integer bins the four corners of each bin in a summed-area table, ``+-1 / area``), sorts them by
cell, and every input cell gathers its points in that order (RoIs in chunks within the workspace
limit; integer tables in float64, then suffix sums). float16/bfloat16 are read as they are and
accumulated in float32; float64 is not handled here (the dispatcher runs the reference).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._backend import batch_chunks
from ._roi_common import aligned_geometry, as_planes, batch_index, from_planes, integer_bins

INTERPRET = bool(triton.knobs.runtime.interpret)
NUM_WARPS = 4


# --------------------------------------------------------------------------------------------
# Aligned bins


@triton.jit
def _align_samples(geo_ptr, int_ptr, off_ptr, r, g, bins, b_ok, PW, B, G, HAS_OFF: tl.constexpr):
    """Per-bin start (y, x) of the grid, the step between samples, the grid size, and the image:
    ``y = y1 + i * bin_h + (iy + 0.5) * bin_h / gh + dy`` (x likewise)."""
    i = bins // PW
    j = bins - i * PW
    y1 = tl.load(geo_ptr + 6 * r)
    x1 = tl.load(geo_ptr + 6 * r + 1)
    bin_h = tl.load(geo_ptr + 6 * r + 2)
    bin_w = tl.load(geo_ptr + 6 * r + 3)
    img = tl.load(int_ptr + 3 * r)
    gh = tl.load(int_ptr + 3 * r + 1)
    gw = tl.load(int_ptr + 3 * r + 2)
    y = y1 + i * bin_h
    x = x1 + j * bin_w
    if HAS_OFF:
        # offset [R, 2G, ph, pw]: x plane 2g, y plane 2g + 1, scaled by gamma * roi size
        op = off_ptr + ((r * G + g) * 2) * B + bins
        sy = tl.load(geo_ptr + 6 * r + 4)
        sx = tl.load(geo_ptr + 6 * r + 5)
        dx = sx * tl.load(op, mask=b_ok, other=0.0).to(tl.float32)
        dy = sy * tl.load(op + B, mask=b_ok, other=0.0).to(tl.float32)
    else:
        dy = tl.zeros(y.shape, tl.float32)
        dx = dy
    return y, x, dy, dx, bin_h, bin_w, img, gh, gw


@triton.jit
def _clamp_point(y, x, H, W):
    """RoIAlign border: ``ok`` False where the sample reads 0 (also NaN), top-left corner,
    fractions, and whether y / x are free (not clamped, so their gradient flows)."""
    ok = (y >= -1.0) & (y <= H) & (x >= -1.0) & (x <= W)
    free_y = ok & (y > 0.0) & (y < H - 1)
    free_x = ok & (x > 0.0) & (x < W - 1)
    y = tl.minimum(tl.maximum(tl.where(ok, y, 0.0), 0.0), H - 1.0)
    x = tl.minimum(tl.maximum(tl.where(ok, x, 0.0), 0.0), W - 1.0)
    yf = tl.floor(y)
    xf = tl.floor(x)
    return ok, yf.to(tl.int32), xf.to(tl.int32), y - yf, x - xf, free_y, free_x


@triton.jit
def _align_forward_kernel(
    x_ptr, geo_ptr, int_ptr, off_ptr, msk_ptr, out_ptr, H, W, C, PW, B, G, PS: tl.constexpr,
    HAS_OFF: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """out[r, c, bin] = mask * mean over the bin's samples of the planes ``x [P, H, W, C]``."""
    r = tl.program_id(0)
    cg = C // G
    g = tl.program_id(1) // tl.cdiv(cg, BLOCK_C)
    c = g * cg + (tl.program_id(1) % tl.cdiv(cg, BLOCK_C)) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < (g + 1) * cg
    bins = tl.arange(0, BLOCK_B)
    b_ok = bins < B
    y0s, x0s, dy, dx, bin_h, bin_w, img, gh, gw = _align_samples(
        geo_ptr, int_ptr, off_ptr, r, g, bins, b_ok, PW, B, G, HAS_OFF
    )
    plane = (img * B + bins) if PS else (img + bins * 0)
    base = plane.to(tl.int64) * H * W
    cm = c_ok[None, :]
    acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    for iy in range(0, gh):
        y = y0s + (iy + 0.5) * bin_h / gh + dy
        for ix in range(0, gw):
            x = x0s + (ix + 0.5) * bin_w / gw + dx
            ok, y0, x0, ly, lx, _, _ = _clamp_point(y, x, H, W)
            ok = ok & b_ok
            a = ((base + y0 * W + x0) * C)[:, None] + c[None, :]
            down = ok & (y0 + 1 < H)
            right = (x0 + 1 < W)[:, None]
            v00 = tl.load(x_ptr + a, mask=ok[:, None] & cm, other=0.0).to(tl.float32)
            v01 = tl.load(x_ptr + a + C, mask=ok[:, None] & right & cm, other=0.0)
            v10 = tl.load(x_ptr + a + W * C, mask=down[:, None] & cm, other=0.0)
            v11 = tl.load(x_ptr + a + W * C + C, mask=down[:, None] & right & cm, other=0.0)
            wy = ly[:, None]
            wx = lx[:, None]
            top = (1.0 - wx) * v00 + wx * v01.to(tl.float32)
            bottom = (1.0 - wx) * v10.to(tl.float32) + wx * v11.to(tl.float32)
            acc += (1.0 - wy) * top + wy * bottom
    acc = acc / (gh * gw).to(tl.float32)
    if HAS_MASK:
        acc *= tl.load(msk_ptr + (r * G + g) * B + bins, mask=b_ok, other=0.0).to(tl.float32)[
            :, None
        ]
    op = out_ptr + (r.to(tl.int64) * C + c[None, :]) * B + bins[:, None]
    tl.store(op, acc.to(out_ptr.dtype.element_ty), mask=b_ok[:, None] & cm)


@triton.jit
def _align_backward_kernel(
    x_ptr, geo_ptr, int_ptr, off_ptr, msk_ptr, grad_ptr, gx_ptr, goff_ptr, gmsk_ptr,
    H, W, C, PW, B, G, PS: tl.constexpr, HAS_OFF: tl.constexpr, HAS_MASK: tl.constexpr,
    NEED_GEO: tl.constexpr, SCATTER: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """RoI r, group g: offset/mask gradients (single writer); with SCATTER, the input gradient
    into the float32 channels-last planes ``gx`` with atomics."""
    r = tl.program_id(0)
    g = tl.program_id(1)
    cg = C // G
    bins = tl.arange(0, BLOCK_B)
    b_ok = bins < B
    y0s, x0s, dy, dx, bin_h, bin_w, img, gh, gw = _align_samples(
        geo_ptr, int_ptr, off_ptr, r, g, bins, b_ok, PW, B, G, HAS_OFF
    )
    plane = (img * B + bins) if PS else (img + bins * 0)
    base = plane.to(tl.int64) * H * W
    inv = 1.0 / (gh * gw).to(tl.float32)
    if HAS_MASK:
        m = tl.load(msk_ptr + (r * G + g) * B + bins, mask=b_ok, other=0.0).to(tl.float32)
    else:
        m = tl.full((BLOCK_B,), 1.0, tl.float32)
    coef = m * inv
    acc_y = tl.zeros((BLOCK_B,), dtype=tl.float32)
    acc_x = tl.zeros((BLOCK_B,), dtype=tl.float32)
    acc_v = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for c0 in range(0, cg, BLOCK_C):
        c = g * cg + c0 + tl.arange(0, BLOCK_C)
        cm = (c < (g + 1) * cg)[None, :]
        gp = grad_ptr + (r.to(tl.int64) * C + c[None, :]) * B + bins[:, None]
        go = tl.load(gp, mask=b_ok[:, None] & cm, other=0.0).to(tl.float32)
        for iy in range(0, gh):
            y = y0s + (iy + 0.5) * bin_h / gh + dy
            for ix in range(0, gw):
                x = x0s + (ix + 0.5) * bin_w / gw + dx
                ok, y0, x0, ly, lx, free_y, free_x = _clamp_point(y, x, H, W)
                ok = ok & b_ok
                a = ((base + y0 * W + x0) * C)[:, None] + c[None, :]
                m00 = ok[:, None] & cm
                m01 = m00 & (x0 + 1 < W)[:, None]
                m10 = m00 & (y0 + 1 < H)[:, None]
                m11 = m10 & (x0 + 1 < W)[:, None]
                wy = ly[:, None]
                wx = lx[:, None]
                if SCATTER:
                    t = go * coef[:, None]
                    tl.atomic_add(gx_ptr + a, (1 - wy) * (1 - wx) * t, mask=m00, sem="relaxed")
                    tl.atomic_add(gx_ptr + a + C, (1 - wy) * wx * t, mask=m01, sem="relaxed")
                    tl.atomic_add(gx_ptr + a + W * C, wy * (1 - wx) * t, mask=m10, sem="relaxed")
                    tl.atomic_add(gx_ptr + a + W * C + C, wy * wx * t, mask=m11, sem="relaxed")
                if NEED_GEO:
                    d00 = tl.sum(go * tl.load(x_ptr + a, mask=m00, other=0.0).to(tl.float32), 1)
                    v01 = tl.load(x_ptr + a + C, mask=m01, other=0.0).to(tl.float32)
                    v10 = tl.load(x_ptr + a + W * C, mask=m10, other=0.0).to(tl.float32)
                    v11 = tl.load(x_ptr + a + W * C + C, mask=m11, other=0.0).to(tl.float32)
                    d01 = tl.sum(go * v01, 1)
                    d10 = tl.sum(go * v10, 1)
                    d11 = tl.sum(go * v11, 1)
                    dy_ = (1 - lx) * (d10 - d00) + lx * (d11 - d01)
                    dx_ = (1 - ly) * (d01 - d00) + ly * (d11 - d10)
                    acc_y += tl.where(free_y, dy_, 0.0)
                    acc_x += tl.where(free_x, dx_, 0.0)
                    acc_v += (1 - ly) * ((1 - lx) * d00 + lx * d01) + ly * (
                        (1 - lx) * d10 + lx * d11
                    )
    if NEED_GEO:
        if HAS_OFF:
            sy = tl.load(geo_ptr + 6 * r + 4)
            sx = tl.load(geo_ptr + 6 * r + 5)
            op = goff_ptr + ((r * G + g) * 2) * B + bins
            gty = goff_ptr.dtype.element_ty
            tl.store(op, (acc_x * coef * sx).to(gty), mask=b_ok)
            tl.store(op + B, (acc_y * coef * sy).to(gty), mask=b_ok)
        if HAS_MASK:
            mp = gmsk_ptr + (r * G + g) * B + bins
            tl.store(mp, (acc_v * inv).to(gmsk_ptr.dtype.element_ty), mask=b_ok)


@triton.jit
def _align_points_kernel(
    geo_ptr, int_ptr, off_ptr, msk_ptr, first_ptr, key_ptr, frac_ptr, coef_ptr, row_ptr,
    r0, P, H, W, C, PW, B, G, PS: tl.constexpr, HAS_OFF: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_B: tl.constexpr,
):  # fmt: skip
    """Deterministic backward: one point per sample of RoI ``r0 + program_id(0)``, group g: its
    top-left cell ``key`` in the (g, plane, H + 1, W + 1) grid (past the end if it reads 0), its
    fractions, its weight mask / n and the grad row ``(r * C + g * C/G) * B + bin`` it scatters."""
    r = r0 + tl.program_id(0)
    g = tl.program_id(1)
    bins = tl.arange(0, BLOCK_B)
    b_ok = bins < B
    y0s, x0s, dy, dx, bin_h, bin_w, img, gh, gw = _align_samples(
        geo_ptr, int_ptr, off_ptr, r, g, bins, b_ok, PW, B, G, HAS_OFF
    )
    plane = (img * B + bins) if PS else (img + bins * 0)
    coef = tl.full((BLOCK_B,), 1.0, tl.float32) / (gh * gw).to(tl.float32)
    if HAS_MASK:
        coef *= tl.load(msk_ptr + (r * G + g) * B + bins, mask=b_ok, other=0.0).to(tl.float32)
    row = (r.to(tl.int64) * C + g * (C // G)) * B + bins
    cells = G * P * (H + 1) * (W + 1)
    first = tl.load(first_ptr + tl.program_id(0)) + ((g * B + bins) * gh) * gw
    for iy in range(0, gh):
        y = y0s + (iy + 0.5) * bin_h / gh + dy
        for ix in range(0, gw):
            x = x0s + (ix + 0.5) * bin_w / gw + dx
            ok, y0, x0, ly, lx, _, _ = _clamp_point(y, x, H, W)
            key = ((g * P + plane).to(tl.int64) * (H + 1) + y0) * (W + 1) + x0
            pt = first + iy * gw + ix
            tl.store(key_ptr + pt, tl.where(ok, key, cells), mask=b_ok)
            tl.store(frac_ptr + 2 * pt, ly, mask=b_ok)
            tl.store(frac_ptr + 2 * pt + 1, lx, mask=b_ok)
            tl.store(coef_ptr + pt, coef, mask=b_ok)
            tl.store(row_ptr + pt, row, mask=b_ok)


# --------------------------------------------------------------------------------------------
# Integer bins


@triton.jit
def _integer_kernel(
    x_ptr, grad_ptr, out_ptr, bins_ptr, img_ptr, H, W, C, PH, PW, B, PS: tl.constexpr,
    BACKWARD: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Forward: out[r, c, bin] = mean of the bin's cells. Backward: atomically add grad / area to
    every cell of the bin in the float32 channels-last planes ``out``."""
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
    area = tl.maximum((y_hi - y_lo) * (x_hi - x_lo), 1).to(tl.float32)
    img = tl.load(img_ptr + r)
    plane = (img * B + bins) if PS else (img + bins * 0)
    base = plane.to(tl.int64) * H * W
    at = (r.to(tl.int64) * C + c[None, :]) * B + bins[:, None]  # [R, C, ph, pw] layout
    if BACKWARD:
        t = tl.load(grad_ptr + at, mask=b_ok[:, None] & cm, other=0.0).to(tl.float32)
        t = t / area[:, None]
    acc = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
    for dy in range(0, tl.max(y_hi - y_lo, 0)):
        for dx in range(0, tl.max(x_hi - x_lo, 0)):
            inside = b_ok & (y_lo + dy < y_hi) & (x_lo + dx < x_hi)
            a = ((base + (y_lo + dy) * W + x_lo + dx) * C)[:, None] + c[None, :]
            if BACKWARD:
                tl.atomic_add(out_ptr + a, t, mask=inside[:, None] & cm, sem="relaxed")
            else:
                acc += tl.load(x_ptr + a, mask=inside[:, None] & cm, other=0.0).to(tl.float32)
    if not BACKWARD:
        res = (acc / area[:, None]).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + at, res, mask=b_ok[:, None] & cm)


# --------------------------------------------------------------------------------------------
# Deterministic scatter: sorted points, gathered per cell


@triton.jit
def _gather_kernel(
    src_ptr, row_ptr, coef_ptr, frac_ptr, perm_ptr, seg_ptr, out_ptr, n_cells, C, G, B, H1, W1,
    BILINEAR: tl.constexpr, ACCUMULATE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_PIX: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """out[plane, y, x, g*cg + c] (+)= sum over the points of group g whose cell is (y, x) (or,
    BILINEAR, a neighbour it reaches as corner (dy, dx)) of weight * src[row + c * B], in sorted
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
                src_ptr + row[:, None] + c[None, :] * B, mask=live[:, None] & cm, other=0.0
            )
            acc += w[:, None] * vals.to(ACC)
    op = out_ptr + (pix.to(tl.int64) * C + g * cg)[:, None] + c[None, :]
    if ACCUMULATE:
        acc += tl.load(op, mask=ok[:, None] & cm, other=0.0)
    tl.store(op, acc, mask=ok[:, None] & cm)


# --------------------------------------------------------------------------------------------
# Host side


def _check(input: Tensor) -> None:
    if input.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"Triton RoI kernels take float32/float16/bfloat16, got {input.dtype}")
    if not input.is_cuda and not INTERPRET:
        raise ValueError(
            "backend 'triton' got CPU tensors: set TRITON_INTERPRET=1 before torchdcn's Triton "
            "kernels are first used to run them on CPU (slow; for tests), or move to CUDA"
        )


def _planes(input: Tensor, pooled, ps: bool) -> Tensor:
    """Channels-last planes ``[P, H, W, C_out]`` of :func:`._roi_common.as_planes`."""
    return as_planes(input, pooled, ps).permute(0, 2, 3, 1).contiguous()


def _blocks(bins: int, channels: int) -> tuple[int, int]:
    """``BLOCK_B`` (all bins of a RoI) and a channel block keeping the tile at most 4096."""
    block_b = triton.next_power_of_2(bins)
    return block_b, max(1, min(32, triton.next_power_of_2(channels), 4096 // block_b))


class _Aligned:
    """Arguments of the aligned kernels for one call; geometry by :func:`aligned_geometry`."""

    def __init__(self, input, rois, offset, mask, pooled, scale, sampling_ratio, aligned, gamma,
                 ps):  # fmt: skip
        _check(input)
        ph, pw = self.pooled = pooled
        self.ps, self.input, self.offset, self.mask = ps, input, offset, mask
        y1, x1, roi_h, roi_w, gh, gw = aligned_geometry(
            rois.float(), scale, pooled, sampling_ratio, aligned
        )
        geo = (y1, x1, roi_h / ph, roi_w / pw, gamma * roi_h, gamma * roi_w)
        self.geo = torch.stack(geo, 1).contiguous()
        self.ints = torch.stack([batch_index(rois), gh, gw], 1).to(torch.int32).contiguous()
        self.x = _planes(input, pooled, ps)
        self.planes, self.h, self.w, self.c = self.x.shape
        self.r, self.b = rois.shape[0], ph * pw
        self.g = 1 if offset is None else offset.shape[1] // 2
        self.block_b, self.block_c = _blocks(self.b, self.c // self.g)
        self.off = offset.contiguous() if offset is not None else self.geo
        self.msk = mask.contiguous() if mask is not None else self.geo
        self.flags = dict(PS=ps, HAS_OFF=offset is not None, HAS_MASK=mask is not None)

    def forward(self) -> Tensor:
        out = self.input.new_empty(self.r, self.c, *self.pooled)
        if out.numel() == 0:
            return out
        grid = (self.r, self.g * triton.cdiv(self.c // self.g, self.block_c))
        _align_forward_kernel[grid](
            self.x, self.geo, self.ints, self.off, self.msk, out, self.h, self.w, self.c,
            self.pooled[1], self.b, self.g, **self.flags, BLOCK_B=self.block_b,
            BLOCK_C=self.block_c, num_warps=NUM_WARPS,
        )  # fmt: skip
        return out

    def backward(self, grad: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Gradients of input, offset and mask (None for an absent offset or mask)."""
        grad = grad.contiguous()
        g_off = None if self.offset is None else torch.zeros_like(self.offset)
        g_msk = None if self.mask is None else torch.zeros_like(self.mask)
        det = torch.are_deterministic_algorithms_enabled()
        pad = 1 if det else 0  # the sorted scatter works on an (H + 1) x (W + 1) grid
        gx = self.x.new_zeros(self.planes, self.h + pad, self.w + pad, self.c, dtype=torch.float32)
        need_geo = self.offset is not None or self.mask is not None
        if self.r and self.c and (need_geo or not det):
            _align_backward_kernel[(self.r, self.g)](
                self.x, self.geo, self.ints, self.off, self.msk, grad, gx,
                self.geo if g_off is None else g_off, self.geo if g_msk is None else g_msk,
                self.h, self.w, self.c, self.pooled[1], self.b, self.g, **self.flags,
                NEED_GEO=need_geo, SCATTER=not det, BLOCK_B=self.block_b, BLOCK_C=self.block_c,
                num_warps=NUM_WARPS,
            )  # fmt: skip
        if det and self.r and self.c:
            self._sorted_scatter(grad, gx)
        g_input = from_planes(gx[:, : self.h, : self.w].contiguous(), self.pooled, self.ps)
        return g_input.to(self.input.dtype), g_off, g_msk

    def _sorted_scatter(self, grad: Tensor, gx: Tensor) -> None:
        """Deterministic input gradient, RoIs in chunks whose point lists fit the workspace."""
        counts = self.g * self.b * self.ints[:, 1].long() * self.ints[:, 2].long()
        for a, b in batch_chunks(self.r, 48 * int(counts.max())):
            cnt = counts[a:b]
            first = torch.cumsum(cnt, 0) - cnt
            total = int(cnt.sum())
            dev = gx.device
            key = torch.empty(total, dtype=torch.int64, device=dev)
            row = torch.empty(total, dtype=torch.int64, device=dev)
            coef = torch.empty(total, dtype=torch.float32, device=dev)
            frac = torch.empty(total, 2, dtype=torch.float32, device=dev)
            _align_points_kernel[(b - a, self.g)](
                self.geo, self.ints, self.off, self.msk, first, key, frac, coef, row, a,
                self.planes, self.h, self.w, self.c, self.pooled[1], self.b, self.g, **self.flags,
                BLOCK_B=self.block_b, num_warps=NUM_WARPS,
            )  # fmt: skip
            _gather(grad, key, row, coef, frac, gx, self.g, self.b, True, a > 0)


def _gather(src, key, row, coef, frac, out, groups, bins, bilinear, accumulate) -> None:
    """Sort the points by cell and let every cell of ``out [P, H1, W1, C]`` gather its own."""
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
        src, row, coef, frac, perm.to(torch.int32), seg, out, n_cells, c, groups, bins, h1, w1,
        BILINEAR=bilinear, ACCUMULATE=accumulate, ACC=acc, BLOCK_PIX=32, BLOCK_C=block_c,
        num_warps=NUM_WARPS,
    )  # fmt: skip


class _Integer:
    """Arguments of the integer-bin kernel; bins by :func:`integer_bins`."""

    def __init__(self, input, rois, pooled, scale, ps):
        _check(input)
        self.input, self.rois, self.pooled, self.ps = input, rois, pooled, ps
        self.x = _planes(input, pooled, ps)
        self.planes, self.h, self.w, self.c = self.x.shape
        self.bins = integer_bins(rois.float(), scale, pooled, self.h, self.w)
        self.table = torch.cat(self.bins, 1).to(torch.int32).contiguous()
        self.img = batch_index(rois).to(torch.int32).contiguous()
        self.r, self.b = rois.shape[0], pooled[0] * pooled[1]
        self.block_b, self.block_c = _blocks(self.b, self.c)

    def _launch(self, grad: Tensor, out: Tensor, backward: bool) -> None:
        if self.r == 0 or self.c == 0:
            return
        _integer_kernel[(self.r, triton.cdiv(self.c, self.block_c))](
            self.x, grad, out, self.table, self.img, self.h, self.w, self.c, *self.pooled,
            self.b, PS=self.ps, BACKWARD=backward, BLOCK_B=self.block_b, BLOCK_C=self.block_c,
            num_warps=NUM_WARPS,
        )  # fmt: skip

    def forward(self) -> Tensor:
        out = self.input.new_empty(self.r, self.c, *self.pooled)
        self._launch(out, out, False)
        return out

    def backward(self, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        if not torch.are_deterministic_algorithms_enabled():
            gx = self.x.new_zeros(self.x.shape, dtype=torch.float32)
            self._launch(grad, gx, True)
        else:
            gx = self._sorted_table(grad)
        return from_planes(gx, self.pooled, self.ps).to(self.input.dtype)

    def _sorted_table(self, grad: Tensor) -> Tensor:
        """Deterministic: the summed-area adjoint. Each bin adds ``+-grad / area`` at its four
        corners of a float64 ``(H + 1) x (W + 1)`` table (a sorted gather), then suffix sums."""
        y_lo, y_hi, x_lo, x_hi = (t.long() for t in self.bins)
        ph, pw = self.pooled
        shape = (self.r, ph, pw)
        ys_lo, ys_hi = y_lo[:, :, None].expand(shape), y_hi[:, :, None].expand(shape)
        xs_lo, xs_hi = x_lo[:, None, :].expand(shape), x_hi[:, None, :].expand(shape)
        inv = 1.0 / ((ys_hi - ys_lo) * (xs_hi - xs_lo)).clamp(min=1).double()
        plane = _plane_index(self.img.long(), self.pooled, self.ps)
        corners = ((ys_hi, xs_hi, inv), (ys_lo, xs_hi, -inv), (ys_hi, xs_lo, -inv),
                   (ys_lo, xs_lo, inv))  # fmt: skip
        key = torch.stack([(plane * (self.h + 1) + y) * (self.w + 1) + x for y, x, _ in corners])
        coef = torch.stack([v for _, _, v in corners])
        rows = torch.arange(self.r, device=grad.device)[:, None, None] * (self.c * self.b)
        rows = rows + torch.arange(self.b, device=grad.device).view(1, ph, pw)
        table = self.x.new_zeros(self.planes, self.h + 1, self.w + 1, self.c, dtype=torch.float64)
        if self.r and self.c:
            row = rows.expand(4, *shape).flatten()
            _gather(grad, key.flatten(), row, coef.flatten(), coef, table, 1, self.b, False, False)
        return table[:, 1:, 1:].flip((1, 2)).cumsum(1).cumsum(2).flip((1, 2))


def _plane_index(img: Tensor, pooled, ps: bool) -> Tensor:
    """``[R, ph, pw]`` plane of every bin (:func:`._roi_common.plane_index` from batch indices)."""
    ph, pw = pooled
    b = img[:, None, None]
    if not ps:
        return b.expand(-1, ph, pw)
    return b * (ph * pw) + torch.arange(ph * pw, device=img.device).view(1, ph, pw)


# --------------------------------------------------------------------------------------------
# The kernel interface of the family (documented in _roi_cpu)


def _on_device(fn):
    """Launch on the tensors' GPU (Triton launches on the current device)."""

    @functools.wraps(fn)
    def wrapper(*args):
        first = next(a for a in args if isinstance(a, Tensor))
        guard = torch.cuda.device(first.device) if first.is_cuda else contextlib.nullcontext()
        with guard:
            return fn(*args)

    return wrapper


@_on_device
def forward_roi_pool(input, rois, pooled_h, pooled_w, spatial_scale):
    """``[R, C, ph, pw]``: mean over the integer bins (v1 Eq. 5)."""
    return _Integer(input, rois, (pooled_h, pooled_w), spatial_scale, False).forward()


@_on_device
def backward_roi_pool(grad, input, rois, pooled_h, pooled_w, spatial_scale):
    """``[N, C, H, W]``: gradient of :func:`forward_roi_pool`."""
    return _Integer(input, rois, (pooled_h, pooled_w), spatial_scale, False).backward(grad)


@_on_device
def forward_ps_roi_pool(input, rois, pooled_h, pooled_w, spatial_scale):
    """``[R, C / (ph * pw), ph, pw]``: position-sensitive mean over integer bins."""
    return _Integer(input, rois, (pooled_h, pooled_w), spatial_scale, True).forward()


@_on_device
def backward_ps_roi_pool(grad, input, rois, pooled_h, pooled_w, spatial_scale):
    """``[N, C, H, W]``: gradient of :func:`forward_ps_roi_pool`."""
    return _Integer(input, rois, (pooled_h, pooled_w), spatial_scale, True).backward(grad)


@_on_device
def forward_roi_align(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    """``[R, C, ph, pw]``: RoIAlign."""
    args = (spatial_scale, sampling_ratio, aligned, 0.0, False)
    return _Aligned(input, rois, None, None, (pooled_h, pooled_w), *args).forward()


@_on_device
def backward_roi_align(
    grad, input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned
):
    """``[N, C, H, W]``: gradient of :func:`forward_roi_align`."""
    args = (spatial_scale, sampling_ratio, aligned, 0.0, False)
    return _Aligned(input, rois, None, None, (pooled_h, pooled_w), *args).backward(grad)[0]


@_on_device
def forward_ps_roi_align(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    """``[R, C / (ph * pw), ph, pw]``: position-sensitive RoIAlign."""
    args = (spatial_scale, sampling_ratio, aligned, 0.0, True)
    return _Aligned(input, rois, None, None, (pooled_h, pooled_w), *args).forward()


@_on_device
def backward_ps_roi_align(
    grad, input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned
):
    """``[N, C, H, W]``: gradient of :func:`forward_ps_roi_align`."""
    args = (spatial_scale, sampling_ratio, aligned, 0.0, True)
    return _Aligned(input, rois, None, None, (pooled_h, pooled_w), *args).backward(grad)[0]


@_on_device
def forward_deform_roi_pool(
    input, rois, offset, mask, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, gamma
):
    """``[R, C, ph, pw]``: (modulated) deformable RoI pooling; ``offset [R, 2, ph, pw]``,
    ``mask [R, 1, ph, pw]``, either may be None."""
    args = (spatial_scale, sampling_ratio, aligned, gamma, False)
    return _Aligned(input, rois, offset, mask, (pooled_h, pooled_w), *args).forward()


@_on_device
def backward_deform_roi_pool(
    grad, input, rois, offset, mask, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned,
    gamma,
):  # fmt: skip
    """``(grad_input [N, C, H, W], grad_offset or None, grad_mask or None)``."""
    args = (spatial_scale, sampling_ratio, aligned, gamma, False)
    return _Aligned(input, rois, offset, mask, (pooled_h, pooled_w), *args).backward(grad)


@_on_device
def forward_deform_ps_roi_pool(
    input, rois, offset, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, gamma
):
    """``[R, C / (ph * pw), ph, pw]``: deformable PS RoI pooling; ``offset [R, 2C', ph, pw]``."""
    args = (spatial_scale, sampling_ratio, aligned, gamma, True)
    return _Aligned(input, rois, offset, None, (pooled_h, pooled_w), *args).forward()


@_on_device
def backward_deform_ps_roi_pool(
    grad, input, rois, offset, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, gamma
):
    """``(grad_input [N, C, H, W], grad_offset [R, 2C', ph, pw] or None)``."""
    args = (spatial_scale, sampling_ratio, aligned, gamma, True)
    kernel = _Aligned(input, rois, offset, None, (pooled_h, pooled_w), *args)
    return kernel.backward(grad)[:2]
