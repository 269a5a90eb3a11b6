"""GPU deformable convolution in Triton: implicit GEMM, bilinear sampling fused into the product.

This module is the host side; the kernels are in :mod:`._deform_conv_triton_kernels`.

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
  sorted by cell and every input pixel *gathers* its contributions in that fixed order
  (:mod:`._sorted_gather_triton`, shared with the RoI family).

The input is read channels-last, so a column tile row is a contiguous run of channels. All
arithmetic is float32; float16/bfloat16 tensors stay in their dtype for loads and ``tl.dot``
operands (tensor cores) and accumulate in float32. float32 products use IEEE float32 unless
``torch.set_float32_matmul_precision`` allows TF32. float64 is not handled here (the dispatcher
sends it to the reference).
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._backend import batch_chunks, workspace_limit
from ._deform_conv_triton_kernels import _forward_kernel, _grad_sample_kernel, _grad_weight_kernel
from ._sorted_gather_triton import sorted_gather
from ._triton_launch import INTERPRET, NUM_WARPS, on_device
from ._types import Pair

BLOCK_M = 64


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
    with on_device(input):
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
    with on_device(input):
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
    """Input gradient by gathering sorted contributions, one batch chunk at a time: the column
    gradient of a chunk (``K * Ho * Wo * C`` floats per image) is stored with each point's top-left
    cell in an ``(H + 1) x (W + 1)`` grid per (image, offset group), shifted by one so a corner at
    -1 has a cell; :func:`._sorted_gather_triton.sorted_gather` adds the points per cell."""
    points = geo.g * geo.k * geo.p
    cg = geo.c // geo.g
    cells = geo.g * (geo.h + 1) * (geo.w + 1)
    per_item = 4 * (geo.k * geo.p * geo.c + 8 * points + cells * (cg + 1))
    for a, b in batch_chunks(geo.n, per_item):
        nb, dev = b - a, x.device
        gcol = torch.empty(nb * points, cg, device=dev, dtype=torch.float32)
        key = torch.empty(nb * points, device=dev, dtype=torch.int64)
        frac = torch.empty(nb * points, 2, device=dev, dtype=torch.float32)
        grid = (triton.cdiv(nb * geo.p, BLOCK_M), geo.g * geo.k)
        _grad_sample_kernel[grid](
            x[a:b], offset[a:b], offset[a:b] if mask is None else mask[a:b], wt, grad[a:b],
            gcol, g_offset[a:b], g_offset[a:b] if mask is None else g_mask[a:b], gcol, key, frac,
            geo.pieces, geo.g_start, *geo.sizes(nb * geo.p), HAS_MASK=mask is not None,
            DETERMINISTIC=True, **consts,
        )  # fmt: skip
        # one plane per (image, offset group), channels-last; point s reads gcol[s, :]
        gx = torch.empty(nb * geo.g, geo.h + 1, geo.w + 1, cg, device=dev, dtype=torch.float32)
        row = torch.arange(nb * points, device=dev, dtype=torch.int64) * cg
        ones = torch.ones(nb * points, device=dev, dtype=torch.float32)
        sorted_gather(gcol, key, row, ones, frac, gx, 1, 1, True, False)
        planes = gx[:, 1:, 1:].reshape(nb, geo.g, geo.h, geo.w, cg)
        g_input[a:b] = planes.permute(0, 1, 4, 2, 3).reshape(nb, geo.c, geo.h, geo.w)
