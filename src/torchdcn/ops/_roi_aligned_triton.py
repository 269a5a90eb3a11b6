"""RoIAlign-style kernels of the RoI pooling family in Triton (roi_align, ps_roi_align,
deform_roi_pool, deform_ps_roi_pool); interface: :mod:`._roi_cpu`, overview: :mod:`._roi_triton`.

The forward loops over the RoI's ``gh x gw`` grid of bilinear samples (clamp border of SPEC
section 1). The backward program owns a RoI and an offset group, loops over the group's channels
itself and so writes the offset and mask gradients (reductions over channels) alone, without
atomics; the input gradient is scattered with float32 atomics, or, deterministic, each sample's
top-left cell, fractions and weight are listed and :func:`._sorted_gather_triton.sorted_gather`
adds them (RoIs in chunks within the workspace limit).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._backend import batch_chunks
from ._roi_common import aligned_tables, from_planes, planes_channels_last
from ._sorted_gather_triton import sorted_gather
from ._triton_launch import NUM_WARPS, tile_blocks


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
    fractions, and whether y / x are free (not clamped, so their gradient flows): on ``[0, H - 1)``,
    so at 0 itself the gradient is the right derivative (:mod:`._bilinear`)."""
    ok = (y >= -1.0) & (y <= H) & (x >= -1.0) & (x <= W)
    free_y = ok & (y >= 0.0) & (y < H - 1)
    free_x = ok & (x >= 0.0) & (x < W - 1)
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
    acc = acc / tl.maximum(gh * gw, 1).to(tl.float32)
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
    inv = 1.0 / tl.maximum(gh * gw, 1).to(tl.float32)
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
    coef = tl.full((BLOCK_B,), 1.0, tl.float32) / tl.maximum(gh * gw, 1).to(tl.float32)
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


class AlignedBins:
    """Arguments of the aligned kernels for one call; geometry by :func:`aligned_tables`."""

    def __init__(self, input, rois, offset, mask, pooled, scale, sampling_ratio, aligned, gamma,
                 ps):  # fmt: skip
        ph, pw = self.pooled = pooled
        self.ps, self.input, self.offset, self.mask = ps, input, offset, mask
        geo, ints = aligned_tables(rois.float(), scale, pooled, sampling_ratio, aligned, gamma)
        self.geo, self.ints = geo.contiguous(), ints.to(torch.int32).contiguous()
        self.x = planes_channels_last(input, pooled, ps)
        self.planes, self.h, self.w, self.c = self.x.shape
        self.r, self.b = rois.shape[0], ph * pw
        self.g = 1 if offset is None else offset.shape[1] // 2
        self.block_b, self.block_c = tile_blocks(self.b, self.c // self.g)
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
            sorted_gather(grad, key, row, coef, frac, gx, self.g, self.b, True, a > 0)


def aligned_pool(input, rois, offset, mask, pooled, spatial_scale, sampling_ratio, aligned, gamma,
                 ps):  # fmt: skip
    """``[R, C_out, ph, pw]``; see :mod:`._roi_cpu`."""
    args = (pooled, spatial_scale, sampling_ratio, aligned, gamma, ps)
    return AlignedBins(input, rois, offset, mask, *args).forward()


def aligned_pool_backward(grad, input, rois, offset, mask, pooled, spatial_scale, sampling_ratio,
                          aligned, gamma, ps):  # fmt: skip
    """``(grad_input, grad_offset or None, grad_mask or None)``; see :mod:`._roi_cpu`."""
    args = (pooled, spatial_scale, sampling_ratio, aligned, gamma, ps)
    return AlignedBins(input, rois, offset, mask, *args).backward(grad)
