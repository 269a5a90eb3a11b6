"""The Triton kernels of deformable convolution (design: :mod:`._deform_conv_triton`): the
forward implicit GEMM, the weight gradient, and the input/offset/mask gradient of the sampled
points. The deterministic input gradient's gather is :mod:`._sorted_gather_triton`'s."""

from __future__ import annotations

import triton
import triton.language as tl

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
    # NaN compares False, so NaN/inf offsets are invalid and never reach an address; y = -1 is
    # kept (it reads 0 but has the right derivative, as in torchvision: SPEC 1)
    ok = row_ok & (y >= -1.0) & (y < H) & (x >= -1.0) & (x < W)
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
    with each point's top-left cell ``key`` and fractions ``frac`` for the sorted gather."""
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
