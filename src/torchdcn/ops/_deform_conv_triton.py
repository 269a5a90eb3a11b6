"""GPU deformable convolution in Triton: implicit GEMM, bilinear sampling fused into the product.

No column buffer is ever built in the forward pass or the default backward. With ``N`` images,
``C`` input channels in ``groups`` conv groups (``Cq = C / groups`` each, ``O = C_out / groups``
outputs each), ``G`` offset groups and ``K = kh * kw`` kernel points, the op is, per conv group,
the product of the weight ``[O, Cq * K]`` with the (never stored) columns ``[Cq * K, N * Ho * Wo]``:

* forward: a program owns ``BLOCK_M`` output positions (across the batch) x ``BLOCK_N`` output
  channels and walks the reduction dimension one *piece* (a run of at most ``BLOCK_C`` channels
  inside one conv group and one offset group) and one kernel point at a time: it samples the
  ``[BLOCK_M, BLOCK_C]`` column tile from four corner loads (mask folded into the bilinear
  weights) and multiplies it by the weight tile with ``tl.dot``;
* weight gradient: a program owns (piece, kernel point, ``BLOCK_N`` output channels) and reduces
  ``grad^T @ columns`` over one split of the positions; splits write partial sums that are added
  in a fixed order (deterministic always);
* input, offset and mask gradients: a program owns ``BLOCK_M`` positions x (offset group, kernel
  point). It forms the column gradient ``grad @ weight`` piece by piece, reduces it against the
  corner values for the offset and mask gradients (single writer: deterministic), and scatters
  it to the four corners of the input gradient with atomics. Under
  ``torch.use_deterministic_algorithms(True)`` it instead stores the column gradient (one batch
  chunk at a time, within the workspace limit) with each point's top-left cell; the points are
  sorted by cell and every input pixel *gathers* its contributions in that fixed order.

The input is read channels-last, so a column tile row is a contiguous run of channels. All
arithmetic is float32; float16/bfloat16 tensors stay in their dtype for loads and ``tl.dot``
operands (tensor cores) and accumulate in float32. float32 products use IEEE float32 unless
``torch.set_float32_matmul_precision`` allows TF32. float64 is not handled here (the dispatcher
sends it to the reference).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._backend import batch_chunks, workspace_limit

Pair = tuple[int, int]
INTERPRET = bool(triton.knobs.runtime.interpret)
BLOCK_M = 64
NUM_WARPS = 4


# --------------------------------------------------------------------------------------------
# Shared device helpers


@triton.jit
def _sample_point(
    off_ptr, msk_ptr, n64, p, oy, ox, row_ok, g, k, K, KW, G, P, H, W,
    sh, sw, ph, pw, dh, dw, HAS_MASK: tl.constexpr,
):  # fmt: skip
    """Top-left corner (y0, x0), fractions (ly, lx), validity and modulation of kernel point ``k``
    of offset group ``g`` at positions ``p`` (all ``[BLOCK_M]``); invalid points have ``m = 0``."""
    i = k // KW
    j = k - i * KW
    ch = g * K + k
    base = (n64 * (2 * G * K) + 2 * ch) * P + p
    dy = tl.load(off_ptr + base, mask=row_ok, other=0.0).to(tl.float32)
    dx = tl.load(off_ptr + base + P, mask=row_ok, other=0.0).to(tl.float32)
    y = (oy * sh - ph + i * dh).to(tl.float32) + dy
    x = (ox * sw - pw + j * dw).to(tl.float32) + dx
    # NaN compares False, so NaN/inf offsets are invalid and never reach an address
    ok = row_ok & (y > -1.0) & (y < H) & (x > -1.0) & (x < W)
    y = tl.where(ok, y, 0.0)
    x = tl.where(ok, x, 0.0)
    yf = tl.floor(y)
    xf = tl.floor(x)
    if HAS_MASK:
        mp = msk_ptr + (n64 * (G * K) + ch) * P + p
        m = tl.load(mp, mask=row_ok, other=0.0).to(tl.float32)
    else:
        m = tl.full(y.shape, 1.0, tl.float32)
    m = tl.where(ok, m, 0.0)
    return yf.to(tl.int32), xf.to(tl.int32), y - yf, x - xf, ok, m


@triton.jit
def _corners(x_ptr, n64, y0, x0, ok, c, c_ok, H, W, C):
    """Channels-last input at the four corners, ``[BLOCK_M, BLOCK_C]`` float32, 0 off the map."""
    top = ok & (y0 >= 0)
    bottom = ok & (y0 + 1 < H)
    left = x0 >= 0
    right = x0 + 1 < W
    a = (((n64 * H + y0) * W + x0) * C)[:, None] + c[None, :]
    cm = c_ok[None, :]
    v00 = tl.load(x_ptr + a, mask=(top & left)[:, None] & cm, other=0.0).to(tl.float32)
    v01 = tl.load(x_ptr + a + C, mask=(top & right)[:, None] & cm, other=0.0).to(tl.float32)
    v10 = tl.load(x_ptr + a + W * C, mask=(bottom & left)[:, None] & cm, other=0.0).to(tl.float32)
    v11 = tl.load(x_ptr + a + W * C + C, mask=(bottom & right)[:, None] & cm, other=0.0)
    return v00, v01, v10, v11.to(tl.float32)


@triton.jit
def _bilinear(v00, v01, v10, v11, ly, lx):
    ly = ly[:, None]
    lx = lx[:, None]
    return (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)


@triton.jit
def _mma(a, b, acc, ELEM: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """``acc + a @ b`` with operands rounded to the tensors' dtype ``ELEM`` (tensor cores for
    16-bit types); ``DOT`` differs from ``ELEM`` only under the interpreter (see _dtypes)."""
    a = a.to(ELEM).to(DOT)
    b = b.to(ELEM).to(DOT)
    return tl.dot(a, b, acc, input_precision=PREC)


# --------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _forward_kernel(
    x_ptr, off_ptr, msk_ptr, w_ptr, b_ptr, out_ptr, pieces_ptr, q_start_ptr,
    M, C, H, W, P, Wo, Cq, O, C_out, K, KW, G, sh, sw, ph, pw, dh, dw,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, ELEM: tl.constexpr, DOT: tl.constexpr,
    PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """out[n, q*O + o, p] = sum over pieces of q, k: columns[m, (c, k)] @ w[k, c, q*O + o]."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    q = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rm < M
    n64 = (rm // P).to(tl.int64)
    p = rm % P
    oy = p // Wo
    ox = p % Wo
    ro = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_ok = ro < O
    oc = q * O + ro
    rc = tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for piece in range(tl.load(q_start_ptr + q), tl.load(q_start_ptr + q + 1)):
        g = tl.load(pieces_ptr + 4 * piece + 1)
        c = tl.load(pieces_ptr + 4 * piece + 2) + rc
        c_ok = c < tl.load(pieces_ptr + 4 * piece + 3)
        for k in range(0, K):
            y0, x0, ly, lx, ok, m = _sample_point(
                off_ptr, msk_ptr, n64, p, oy, ox, row_ok, g, k, K, KW, G, P, H, W,
                sh, sw, ph, pw, dh, dw, HAS_MASK,
            )  # fmt: skip
            v00, v01, v10, v11 = _corners(x_ptr, n64, y0, x0, ok, c, c_ok, H, W, C)
            cols = _bilinear(v00, v01, v10, v11, ly, lx) * m[:, None]
            wp = w_ptr + (k * Cq + c - q * Cq)[:, None] * C_out + oc[None, :]
            wt = tl.load(wp, mask=c_ok[:, None] & o_ok[None, :], other=0.0)
            acc = _mma(cols, wt, acc, ELEM, DOT, PREC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + oc, mask=o_ok, other=0.0).to(tl.float32)[None, :]
    op = out_ptr + (n64 * C_out * P + p)[:, None] + (oc * P)[None, :]
    tl.store(op, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & o_ok[None, :])


@triton.jit
def _grad_weight_kernel(
    x_ptr, off_ptr, msk_ptr, grad_ptr, part_ptr, pieces_ptr,
    M, C, H, W, P, Wo, Cq, O, C_out, K, KW, G, sh, sw, ph, pw, dh, dw, rows_per_split,
    HAS_MASK: tl.constexpr, ELEM: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """part[s, k, c, q*O + o] = sum over the positions m of split s of
    grad[m, q*O + o] * columns[m, (c, k)]."""
    pid_pk = tl.program_id(0)
    piece = pid_pk // K
    k = pid_pk % K
    q = tl.load(pieces_ptr + 4 * piece)
    g = tl.load(pieces_ptr + 4 * piece + 1)
    c = tl.load(pieces_ptr + 4 * piece + 2) + tl.arange(0, BLOCK_C)
    c_ok = c < tl.load(pieces_ptr + 4 * piece + 3)
    ro = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    o_ok = ro < O
    oc = q * O + ro
    split = tl.program_id(2)
    m_begin = split * rows_per_split
    m_end = tl.minimum(M, m_begin + rows_per_split)
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for m0 in range(m_begin, m_end, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        row_ok = rm < m_end
        n64 = (rm // P).to(tl.int64)
        p = rm % P
        oy = p // Wo
        ox = p % Wo
        y0, x0, ly, lx, ok, m = _sample_point(
            off_ptr, msk_ptr, n64, p, oy, ox, row_ok, g, k, K, KW, G, P, H, W,
            sh, sw, ph, pw, dh, dw, HAS_MASK,
        )  # fmt: skip
        v00, v01, v10, v11 = _corners(x_ptr, n64, y0, x0, ok, c, c_ok, H, W, C)
        cols = _bilinear(v00, v01, v10, v11, ly, lx) * m[:, None]
        gp = grad_ptr + (n64 * C_out * P + p)[None, :] + (oc * P)[:, None]
        gt = tl.load(gp, mask=o_ok[:, None] & row_ok[None, :], other=0.0)
        acc = _mma(gt, cols, acc, ELEM, DOT, PREC)
    pp = part_ptr + ((split * K + k) * Cq + c - q * Cq)[None, :] * C_out + oc[:, None]
    tl.store(pp, acc, mask=o_ok[:, None] & c_ok[None, :])


@triton.jit
def _grad_sample_kernel(
    x_ptr, off_ptr, msk_ptr, w_ptr, grad_ptr, gx_ptr, goff_ptr, gmsk_ptr,
    gcol_ptr, key_ptr, frac_ptr, pieces_ptr, g_start_ptr,
    M, C, H, W, P, Wo, Cq, O, C_out, K, KW, G, sh, sw, ph, pw, dh, dw,
    HAS_MASK: tl.constexpr, DETERMINISTIC: tl.constexpr, ELEM: tl.constexpr,
    DOT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Offset and mask gradients of (offset group g, kernel point k) at BLOCK_M positions, and the
    column gradient ``grad @ w`` of those points: scattered to the channels-last float32 input
    gradient ``gx`` with atomics, or (DETERMINISTIC) stored to ``gcol[(n, g, k, p), c - g*Cg]``
    with each point's top-left cell ``key`` and fractions ``frac`` for _gather_input_kernel."""
    pid_m = tl.program_id(0)
    gk = tl.program_id(1)
    g = gk // K
    k = gk % K
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rm < M
    n64 = (rm // P).to(tl.int64)
    p = rm % P
    oy = p // Wo
    ox = p % Wo
    y0, x0, ly, lx, ok, m = _sample_point(
        off_ptr, msk_ptr, n64, p, oy, ox, row_ok, g, k, K, KW, G, P, H, W,
        sh, sw, ph, pw, dh, dw, HAS_MASK,
    )  # fmt: skip
    point = ((n64 * G + g) * K + k) * P + p
    if DETERMINISTIC:
        # cells (y0 + 1, x0 + 1) of an (H + 1) x (W + 1) grid per (image, group); invalid last
        cell = ((n64 * G + g) * (H + 1) + y0 + 1) * (W + 1) + x0 + 1
        last = (M // P) * G * (H + 1) * (W + 1)
        tl.store(key_ptr + point, tl.where(ok, cell, last), mask=row_ok)
        tl.store(frac_ptr + 2 * point, ly, mask=row_ok)
        tl.store(frac_ptr + 2 * point + 1, lx, mask=row_ok)
    cg = C // G
    rc = tl.arange(0, BLOCK_C)
    sy = tl.zeros((BLOCK_M,), dtype=tl.float32)
    sx = tl.zeros((BLOCK_M,), dtype=tl.float32)
    sm = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for piece in range(tl.load(g_start_ptr + g), tl.load(g_start_ptr + g + 1)):
        q = tl.load(pieces_ptr + 4 * piece)
        c = tl.load(pieces_ptr + 4 * piece + 2) + rc
        c_ok = c < tl.load(pieces_ptr + 4 * piece + 3)
        gcol = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
        for o0 in range(0, O, BLOCK_N):
            ro = o0 + tl.arange(0, BLOCK_N)
            o_ok = ro < O
            oc = q * O + ro
            gp = grad_ptr + (n64 * C_out * P + p)[:, None] + (oc * P)[None, :]
            gt = tl.load(gp, mask=row_ok[:, None] & o_ok[None, :], other=0.0)
            wp = w_ptr + (k * Cq + c - q * Cq)[None, :] * C_out + oc[:, None]
            wt = tl.load(wp, mask=o_ok[:, None] & c_ok[None, :], other=0.0)
            gcol = _mma(gt, wt, gcol, ELEM, DOT, PREC)
        v00, v01, v10, v11 = _corners(x_ptr, n64, y0, x0, ok, c, c_ok, H, W, C)
        wy = ly[:, None]
        wx = lx[:, None]
        sy += tl.sum(gcol * ((1.0 - wx) * (v10 - v00) + wx * (v11 - v01)), axis=1)
        sx += tl.sum(gcol * ((1.0 - wy) * (v01 - v00) + wy * (v11 - v10)), axis=1)
        if HAS_MASK:
            sm += tl.sum(gcol * _bilinear(v00, v01, v10, v11, ly, lx), axis=1)
        gcol = gcol * m[:, None]
        if DETERMINISTIC:
            gp = gcol_ptr + (point * cg)[:, None] + (c - g * cg)[None, :]
            tl.store(gp, gcol, mask=row_ok[:, None] & c_ok[None, :])
        else:
            a = (((n64 * H + y0) * W + x0) * C)[:, None] + c[None, :]
            top = ok & (y0 >= 0)
            bottom = ok & (y0 + 1 < H)
            left = x0 >= 0
            right = x0 + 1 < W
            cm = c_ok[None, :]
            t00 = (1.0 - wy) * (1.0 - wx) * gcol
            t01 = (1.0 - wy) * wx * gcol
            t10 = wy * (1.0 - wx) * gcol
            t11 = wy * wx * gcol
            tl.atomic_add(gx_ptr + a, t00, mask=(top & left)[:, None] & cm, sem="relaxed")
            tl.atomic_add(gx_ptr + a + C, t01, mask=(top & right)[:, None] & cm, sem="relaxed")
            a1 = a + W * C
            tl.atomic_add(gx_ptr + a1, t10, mask=(bottom & left)[:, None] & cm, sem="relaxed")
            tl.atomic_add(gx_ptr + a1 + C, t11, mask=(bottom & right)[:, None] & cm, sem="relaxed")
    ch = g * K + k
    op = goff_ptr + (n64 * (2 * G * K) + 2 * ch) * P + p
    gty = goff_ptr.dtype.element_ty
    tl.store(op, tl.where(ok, sy * m, 0.0).to(gty), mask=row_ok)
    tl.store(op + P, tl.where(ok, sx * m, 0.0).to(gty), mask=row_ok)
    if HAS_MASK:
        mp = gmsk_ptr + (n64 * (G * K) + ch) * P + p
        tl.store(mp, tl.where(ok, sm, 0.0).to(gmsk_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _gather_input_kernel(
    gcol_ptr, frac_ptr, perm_ptr, seg_ptr, gx_ptr, total, C, H, W, G,
    BLOCK_PIX: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Deterministic input gradient: pixel (n, g, iy, ix) adds, for its four neighbour cells in
    a fixed order, the sorted points whose top-left corner sits there (no atomics)."""
    rp = tl.program_id(0) * BLOCK_PIX + tl.arange(0, BLOCK_PIX)
    pix_ok = rp < total
    cg = C // G
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < cg
    ng = rp // (H * W)
    hw = rp % (H * W)
    iy = hw // W
    ix = hw % W
    acc = tl.zeros((BLOCK_PIX, BLOCK_C), dtype=tl.float32)
    for corner in tl.static_range(4):
        dy = corner // 2
        dx = corner % 2
        # a point with top-left (iy - dy, ix - dx) reaches this pixel as its corner (dy, dx)
        cell = (ng * (H + 1) + iy - dy + 1) * (W + 1) + ix - dx + 1
        start = tl.load(seg_ptr + cell, mask=pix_ok, other=0)
        stop = tl.load(seg_ptr + cell + 1, mask=pix_ok, other=0)
        for t in range(0, tl.max(stop - start, axis=0)):
            idx = start + t
            live = pix_ok & (idx < stop)
            s = tl.load(perm_ptr + idx, mask=live, other=0).to(tl.int64)
            ly = tl.load(frac_ptr + 2 * s, mask=live, other=0.0)
            lx = tl.load(frac_ptr + 2 * s + 1, mask=live, other=0.0)
            wy = ly if dy == 1 else 1.0 - ly
            wx = lx if dx == 1 else 1.0 - lx
            vals = tl.load(
                gcol_ptr + (s * cg)[:, None] + c[None, :],
                mask=live[:, None] & c_ok[None, :],
                other=0.0,
            )
            acc += tl.where(live, wy * wx, 0.0)[:, None] * vals
    n64 = (ng // G).to(tl.int64)
    chan = (ng % G) * cg
    gp = gx_ptr + ((n64 * C + chan) * H * W + hw)[:, None] + (c * H * W)[None, :]
    tl.store(gp, acc.to(gx_ptr.dtype.element_ty), mask=pix_ok[:, None] & c_ok[None, :])


# --------------------------------------------------------------------------------------------
# Host side


@functools.lru_cache(maxsize=64)
def _pieces(
    channels: int, groups: int, offset_groups: int, block_c: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Channel runs ``[n, 4] = (conv group, offset group, lo, hi)`` of at most ``block_c``
    channels inside one conv group and one offset group, in channel order; the first piece of
    every conv group (``q_start[groups + 1]``) and offset group (``g_start[G + 1]``)."""
    cq, cg = channels // groups, channels // offset_groups
    bounds = sorted({*range(0, channels, cq), *range(0, channels, cg), channels})
    rows = []
    for lo, hi in itertools.pairwise(bounds):
        for a in range(lo, hi, block_c):
            rows.append((lo // cq, lo // cg, a, min(hi, a + block_c)))
    q_start = [sum(r[0] < q for r in rows) for q in range(groups + 1)]
    g_start = [sum(r[1] < g for r in rows) for g in range(offset_groups + 1)]

    def to_dev(v):
        return torch.tensor(v, dtype=torch.int32, device=device)

    return to_dev(rows).flatten(), to_dev(q_start), to_dev(g_start), len(rows)


def _dtypes(dtype: torch.dtype) -> tuple[tl.dtype, tl.dtype, str]:
    """Operand dtype of ``tl.dot``, the dtype it computes in, and the float32 precision."""
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"Triton deform_conv2d takes float32/float16/bfloat16, got {dtype}")
    elem = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
    # the interpreter's tl.dot reads bfloat16 as raw integers: round to bf16, multiply in fp32
    dot = tl.float32 if INTERPRET and dtype == torch.bfloat16 else elem[dtype]
    # input_precision only matters for float32 operands ("tf32" is Triton's default otherwise)
    exact = dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"
    prec = "ieee" if exact else "tf32"
    return elem[dtype], dot, prec


def _on_device(t: Tensor) -> contextlib.AbstractContextManager:
    """Launch on ``t``'s GPU (Triton launches on the current device); CPU needs the interpreter."""
    if t.device.type == "cpu" and not INTERPRET:
        raise ValueError(
            "backend 'triton' got CPU tensors: set TRITON_INTERPRET=1 before torchdcn's Triton "
            "kernels are first used to run them on CPU (slow; for tests), or move to CUDA"
        )
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class _Geometry:
    """Sizes and launch constants shared by the kernels of one call."""

    def __init__(self, input, offset, weight, stride, padding, dilation):
        self.n, self.c, self.h, self.w = input.shape
        self.c_out, self.cq, self.kh, self.kw = weight.shape
        self.k = self.kh * self.kw
        self.groups = self.c // self.cq
        self.o = self.c_out // self.groups
        self.g = offset.shape[1] // (2 * self.k)
        self.ho, self.wo = offset.shape[2:]
        self.p = self.ho * self.wo
        self.m = self.n * self.p
        self.conv = (*stride, *padding, *dilation)
        run = min(self.cq, self.c // self.g)
        self.block_c = 16 if run <= 16 else 32
        self.block_n = max(16, min(64, triton.next_power_of_2(self.o)))
        self.pieces, self.q_start, self.g_start, self.npieces = _pieces(
            self.c, self.groups, self.g, self.block_c, input.device
        )

    def sizes(self, m: int) -> tuple:
        """Scalar arguments ``M, C, H, W, P, Wo, Cq, O, C_out, K, KW, G, strides...``."""
        return (m, self.c, self.h, self.w, self.p, self.wo, self.cq, self.o, self.c_out,
                self.k, self.kw, self.g, *self.conv)  # fmt: skip


def _prepare(input, offset, mask, weight):
    """Channels-last input, weight as ``[K, Cq, C_out]``, contiguous offset/mask."""
    x = input.permute(0, 2, 3, 1).contiguous()
    wt = weight.permute(2, 3, 1, 0).contiguous()
    return x, offset.contiguous(), None if mask is None else mask.contiguous(), wt


def forward(
    input: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
) -> Tensor:
    """Deformable convolution on CUDA (or interpreted CPU) tensors of one float dtype.

    ``input [N, C, H, W]``, ``offset [N, 2*G*K, Ho, Wo]``, ``mask [N, G*K, Ho, Wo]`` or None,
    ``weight [C_out, C/groups, kh, kw]``, ``bias [C_out]`` or None (as
    :func:`torchdcn.ops._deform_conv_ref.deform_conv2d_reference`). Returns ``[N, C_out, Ho, Wo]``.
    """
    with _on_device(input):
        return _forward(input, offset, mask, weight, bias, stride, padding, dilation)


def _forward(input, offset, mask, weight, bias, stride, padding, dilation):
    geo = _Geometry(input, offset, weight, stride, padding, dilation)
    out = input.new_empty(geo.n, geo.c_out, geo.ho, geo.wo)
    if geo.m == 0:
        return out
    elem, dot, prec = _dtypes(input.dtype)
    x, offset, mask, wt = _prepare(input, offset, mask, weight)
    bias_arg = bias.contiguous() if bias is not None else wt
    grid = (triton.cdiv(geo.m, BLOCK_M), triton.cdiv(geo.o, geo.block_n), geo.groups)
    _forward_kernel[grid](
        x, offset, offset if mask is None else mask, wt, bias_arg, out, geo.pieces, geo.q_start,
        *geo.sizes(geo.m), HAS_MASK=mask is not None, HAS_BIAS=bias is not None, ELEM=elem,
        DOT=dot, PREC=prec, BLOCK_M=BLOCK_M, BLOCK_N=geo.block_n, BLOCK_C=geo.block_c,
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


def _weight_splits(geo: _Geometry, device: torch.device) -> int:
    """How many position splits reduce the weight gradient: enough programs to fill the GPU,
    partial sums within the workspace limit. Fixed by the shapes, so results are reproducible."""
    m_blocks = triton.cdiv(geo.m, BLOCK_M)
    tiles = geo.npieces * geo.k * triton.cdiv(geo.o, geo.block_n)
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 2 * tiles  # interpreter: exercise the split path cheaply
    by_memory = workspace_limit() // (4 * geo.c_out * geo.cq * geo.k)
    return max(1, min(m_blocks, math.ceil(target / tiles), by_memory))


def _grad_weight(geo, x, offset, mask, grad, elem, dot, prec) -> Tensor:
    splits = _weight_splits(geo, x.device)
    rows = triton.cdiv(triton.cdiv(geo.m, splits), BLOCK_M) * BLOCK_M
    splits = triton.cdiv(geo.m, rows)
    part = torch.empty(splits, geo.k, geo.cq, geo.c_out, device=x.device, dtype=torch.float32)
    grid = (geo.npieces * geo.k, triton.cdiv(geo.o, geo.block_n), splits)
    _grad_weight_kernel[grid](
        x, offset, offset if mask is None else mask, grad, part, geo.pieces,
        *geo.sizes(geo.m), rows, HAS_MASK=mask is not None, ELEM=elem, DOT=dot, PREC=prec,
        BLOCK_M=BLOCK_M, BLOCK_N=geo.block_n, BLOCK_C=geo.block_c, num_warps=NUM_WARPS,
    )  # fmt: skip
    g_w = part[0] if splits == 1 else part.sum(0)  # fixed-order reduction of the partials
    return g_w.permute(2, 1, 0).reshape(geo.c_out, geo.cq, geo.kh, geo.kw).contiguous()


def backward(
    grad: Tensor,
    input: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor | None]:
    """Gradients ``(input, offset, mask, weight, bias)`` for ``grad [N, C_out, Ho, Wo]``, each
    shaped as its tensor; the mask's and bias's are None when those are absent. Deterministic
    (bitwise reproducible) under ``torch.use_deterministic_algorithms(True)``."""
    with _on_device(input):
        return _backward(grad, input, offset, mask, weight, bias, stride, padding, dilation)


def _backward(grad, input, offset, mask, weight, bias, stride, padding, dilation):
    geo = _Geometry(input, offset, weight, stride, padding, dilation)
    g_bias = None if bias is None else grad.sum((0, 2, 3), dtype=torch.float32).to(bias.dtype)
    if geo.m == 0:
        g_mask = None if mask is None else torch.zeros_like(mask)
        return (torch.zeros_like(input), torch.zeros_like(offset), g_mask,
                torch.zeros_like(weight), g_bias)  # fmt: skip
    elem, dot, prec = _dtypes(input.dtype)
    x, offset, mask, wt = _prepare(input, offset, mask, weight)
    grad = grad.contiguous()
    g_weight = _grad_weight(geo, x, offset, mask, grad, elem, dot, prec).to(weight.dtype)
    g_offset = torch.empty_like(offset)
    g_mask = None if mask is None else torch.empty_like(mask)
    consts = dict(ELEM=elem, DOT=dot, PREC=prec, BLOCK_M=BLOCK_M, BLOCK_N=geo.block_n,
                  BLOCK_C=geo.block_c, num_warps=NUM_WARPS)  # fmt: skip
    if not torch.are_deterministic_algorithms_enabled():
        gx = torch.zeros_like(x, dtype=torch.float32)
        grid = (triton.cdiv(geo.m, BLOCK_M), geo.g * geo.k)
        _grad_sample_kernel[grid](
            x, offset, offset if mask is None else mask, wt, grad, gx, g_offset,
            g_offset if mask is None else g_mask, gx, gx, gx, geo.pieces, geo.g_start,
            *geo.sizes(geo.m), HAS_MASK=mask is not None, DETERMINISTIC=False, **consts,
        )  # fmt: skip
        g_input = gx.permute(0, 3, 1, 2).to(input.dtype).contiguous()
    else:
        g_input = torch.empty_like(input)
        _deterministic_input_grad(geo, x, offset, mask, wt, grad, g_input, g_offset, g_mask, consts)
    return g_input, g_offset, g_mask, g_weight, g_bias


def _deterministic_input_grad(geo, x, offset, mask, wt, grad, g_input, g_offset, g_mask, consts):
    """Input gradient by gathering sorted contributions, one batch chunk at a time (the column
    gradient of a chunk is stored: ``K * Ho * Wo * C`` floats per image, within the workspace)."""
    points = geo.g * geo.k * geo.p
    per_item = 4 * (geo.k * geo.p * geo.c + 5 * points + geo.g * (geo.h + 1) * (geo.w + 1))
    for a, b in batch_chunks(geo.n, per_item):
        nb, dev = b - a, x.device
        gcol = torch.empty(nb * points, geo.c // geo.g, device=dev, dtype=torch.float32)
        key = torch.empty(nb * points, device=dev, dtype=torch.int64)
        frac = torch.empty(nb * points, 2, device=dev, dtype=torch.float32)
        grid = (triton.cdiv(nb * geo.p, BLOCK_M), geo.g * geo.k)
        _grad_sample_kernel[grid](
            x[a:b], offset[a:b], offset[a:b] if mask is None else mask[a:b], wt, grad[a:b],
            gcol, g_offset[a:b], g_offset[a:b] if mask is None else g_mask[a:b], gcol, key, frac,
            geo.pieces, geo.g_start, *geo.sizes(nb * geo.p), HAS_MASK=mask is not None,
            DETERMINISTIC=True, **consts,
        )  # fmt: skip
        cells = nb * geo.g * (geo.h + 1) * (geo.w + 1)
        sorted_key, perm = torch.sort(key, stable=True)
        bounds = torch.arange(cells + 1, device=dev, dtype=torch.int64)
        seg = torch.searchsorted(sorted_key, bounds, out_int32=True)
        total = nb * geo.g * geo.h * geo.w
        block_c = max(16, min(64, triton.next_power_of_2(geo.c // geo.g)))
        grid = (triton.cdiv(total, 32), triton.cdiv(geo.c // geo.g, block_c))
        _gather_input_kernel[grid](
            gcol, frac, perm.to(torch.int32), seg, g_input[a:b], total, geo.c, geo.h, geo.w,
            geo.g, BLOCK_PIX=32, BLOCK_C=block_c, num_warps=NUM_WARPS,
        )  # fmt: skip
