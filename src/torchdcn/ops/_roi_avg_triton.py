"""Average pooling over integer bins in Triton: v1 Eq. 5 (``roi_pool(mode="avg")``) and
``ps_roi_pool``; interface: :mod:`._roi_cpu`, overview: :mod:`._roi_triton`.

The forward sums the cells of every bin; the backward scatters ``grad / area`` to them with
atomics, or, deterministic, adds ``+-grad / area`` at the four corners of each bin in a float64
summed-area table (:func:`._sorted_gather_triton.sorted_gather`), then takes suffix sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._roi_common import batch_index, from_planes, integer_bins, plane_index, planes_channels_last
from ._sorted_gather_triton import sorted_gather
from ._triton_launch import NUM_WARPS, tile_blocks


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


class AverageBins:
    """Arguments of the integer-bin kernel; bins by :func:`integer_bins`."""

    def __init__(self, input, rois, pooled, scale, ps):
        self.input, self.rois, self.pooled, self.ps = input, rois, pooled, ps
        self.x = planes_channels_last(input, pooled, ps)
        self.planes, self.h, self.w, self.c = self.x.shape
        self.bins = integer_bins(rois.float(), scale, pooled, self.h, self.w, ps)
        self.table = torch.cat(self.bins, 1).to(torch.int32).contiguous()
        self.img = batch_index(rois).to(torch.int32).contiguous()
        self.r, self.b = rois.shape[0], pooled[0] * pooled[1]
        self.block_b, self.block_c = tile_blocks(self.b, self.c)

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
        plane = plane_index(self.rois, self.pooled, self.ps)
        corners = ((ys_hi, xs_hi, inv), (ys_lo, xs_hi, -inv), (ys_hi, xs_lo, -inv),
                   (ys_lo, xs_lo, inv))  # fmt: skip
        key = torch.stack([(plane * (self.h + 1) + y) * (self.w + 1) + x for y, x, _ in corners])
        coef = torch.stack([v for _, _, v in corners])
        rows = torch.arange(self.r, device=grad.device)[:, None, None] * (self.c * self.b)
        rows = rows + torch.arange(self.b, device=grad.device).view(1, ph, pw)
        table = self.x.new_zeros(self.planes, self.h + 1, self.w + 1, self.c, dtype=torch.float64)
        if self.r and self.c:
            row = rows.expand(4, *shape).flatten()
            sorted_gather(
                grad, key.flatten(), row, coef.flatten(), coef, table, 1, self.b, False, False
            )
        return table[:, 1:, 1:].flip((1, 2)).cumsum(1).cumsum(2).flip((1, 2))


def average_pool(input, rois, pooled, spatial_scale, ps):
    """``[R, C_out, ph, pw]``: the mean of every integer bin (0 for an empty one)."""
    return AverageBins(input, rois, pooled, spatial_scale, ps).forward()


def average_pool_backward(grad, input, rois, pooled, spatial_scale, ps):
    """``[N, C, H, W]``: the gradient of :func:`average_pool`."""
    return AverageBins(input, rois, pooled, spatial_scale, ps).backward(grad)
