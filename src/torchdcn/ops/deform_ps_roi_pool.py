"""Deformable position-sensitive RoI pooling of Deformable ConvNets v1's R-FCN (SPEC section 4)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _onnx, _roi_ops  # _roi_ops registers the torchdcn::roi_* ops
from ._checks import autocast_off, script_pair
from ._roi_checks import RoIs, check_roi_args, script_rois


def deform_ps_roi_pool(
    input: Tensor,
    rois: RoIs,
    offset: Tensor | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    gamma: float = 0.1,
    aligned: bool = True,
) -> Tensor:
    """Deformable PS RoI pooling: :func:`ps_roi_align` with every bin moved by a learnt offset.

    Output channel ``c`` (of ``C_out = C / (ph * pw)``) belongs to offset class
    ``k = c // (C_out / C')``; its bin ``(i, j)`` samples input channel ``(c * ph + i) * pw + j``
    at :func:`ps_roi_align`'s points moved by ``(gamma * offset[r, 2k, i, j] * roi_w,
    gamma * offset[r, 2k + 1, i, j] * roi_h)`` feature cells. ``C' = 1`` gives class-agnostic
    offsets, ``C' = C_out`` one (x, y) pair per class as in R-FCN. Bins, samples, border, adaptive
    grid (and its cap) and ``aligned`` are :func:`torchdcn.ops.ps_roi_align`'s, so a zero (or
    absent) offset gives ``ps_roi_align`` with the same arguments (both default to
    ``aligned=True``), bit for bit.

    Args:
        input (Tensor[N, C_out * ph * pw, H, W]): ``ph * pw`` score maps per output channel.
        rois (Tensor[R, 5] or list of Tensor[R_i, 4]): ``(batch_index, x1, y1, x2, y2)`` in image
            pixels, or one ``(x1, y1, x2, y2)`` tensor per image.
        offset (Tensor[R, 2 * C', ph, pw] or None): normalised offsets, an (x, y) pair of planes
            per offset class, ``C'`` dividing ``C_out``. None: no shift.
        output_size (int or (int, int)): bins ``(ph, pw)`` per RoI (7 x 7 in R-FCN).
        spatial_scale (float): feature cells per image pixel.
        sampling_ratio (int): samples per bin along each axis; ``<= 0`` adaptive; at most
            64 (``MAX_ADAPTIVE_GRID``), a ValueError above.
        gamma (float): offset scale (0.1 in v1).
        aligned (bool): shift the scaled RoI by -0.5 cell, as :func:`roi_align`.

    Returns:
        Tensor[R, C_out, ph, pw].

    Differentiable in ``input`` and ``offset`` (not ``rois``), with exact gradients as
    :func:`deform_roi_pool`. float16/bfloat16 are computed in float32.

    Example:
        >>> x = torch.randn(1, 21 * 7 * 7, 38, 50)
        >>> rois = torch.tensor([[0, 64.0, 48.0, 320.0, 400.0]])
        >>> off = torch.zeros(1, 2 * 21, 7, 7)  # one (x, y) pair per class
        >>> deform_ps_roi_pool(x, rois, off, 7, 1 / 16, sampling_ratio=2).shape
        torch.Size([1, 21, 7, 7])
    """
    if torch.jit.is_scripting():
        ph, pw = script_pair(output_size)
        return torch.ops.torchdcn.roi_aligned_pool(
            input, script_rois(rois, input), offset, None, ph, pw, spatial_scale, sampling_ratio,
            aligned, gamma, True,
        )  # fmt: skip
    a = check_roi_args(
        input, rois, output_size, spatial_scale, sampling_ratio, gamma,
        offset=offset, position_sensitive=True,
    )  # fmt: skip
    if _onnx.in_onnx_export():  # no standard ONNX operator (either exporter)
        raise _onnx.roi_aligned_pool_unsupported(a.offset is not None, True)
    with autocast_off(a.input):
        out = _roi_ops.call_checked(
            torch.ops.torchdcn.roi_aligned_pool,
            a.input, a.rois, a.offset, None, *a.pooled, a.spatial_scale, a.sampling_ratio,
            bool(aligned), a.gamma, True,
        )  # fmt: skip
    return out.to(a.out_dtype)
