"""Deformable RoI pooling (v1 Eq. 6) and modulated deformable RoI pooling (v2), SPEC section 4."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _onnx, _roi_ops  # _roi_ops registers the torchdcn::roi_* ops
from ._checks import autocast_off, script_pair
from ._roi_checks import RoIs, check_roi_args, script_rois


def deform_roi_pool(
    input: Tensor,
    rois: RoIs,
    offset: Tensor | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    gamma: float = 0.1,
    mask: Tensor | None = None,
    aligned: bool = True,
) -> Tensor:
    """Deformable RoI pooling (Deformable ConvNets v1, Eq. 6); with ``mask``, v2's modulated one.

    :func:`roi_align` whose every bin ``(i, j)`` is moved by
    ``(gamma * offset[r, 0, i, j] * roi_w, gamma * offset[r, 1, i, j] * roi_h)`` feature cells
    (``roi_w``, ``roi_h``: the RoI's size in cells) before its samples are read, and multiplied by
    ``mask[r, 0, i, j]``: ``y(i, j) = m_ij * sum_k x(p_ijk + dp_ij) / n_ij`` over the bin's grid of
    ``n_ij`` samples ``p_ijk``. Bins, samples, border, adaptive grid (and its cap) and ``aligned``
    are exactly :func:`torchdcn.ops.roi_align`'s, so a zero (or absent) offset without mask gives
    ``roi_align`` with the same ``spatial_scale``, ``sampling_ratio`` and ``aligned``, bit for bit.
    Note the defaults differ: ``aligned=True`` here (mmcv, the papers' code), ``aligned=False`` in
    ``roi_align`` (torchvision). Offsets are normalised as in mmcv and the original MXNet code
    (channel 0 shifts x); unlike mmcv this op also takes ``aligned`` (mmcv always shifts).

    Args:
        input (Tensor[N, C, H, W]): feature map.
        rois (Tensor[R, 5] or list of Tensor[R_i, 4]): ``(batch_index, x1, y1, x2, y2)`` in image
            pixels, or one ``(x1, y1, x2, y2)`` tensor per image.
        offset (Tensor[R, 2, ph, pw] or None): normalised bin offsets, channel 0 along x (width),
            channel 1 along y (height), in units of ``gamma`` x the RoI's width / height. None: no
            shift.
        output_size (int or (int, int)): bins ``(ph, pw)`` per RoI.
        spatial_scale (float): feature cells per image pixel (1/16 for a stride-16 map).
        sampling_ratio (int): samples per bin along each axis (2 in v2); ``<= 0`` adaptive; at most
            64 (``MAX_ADAPTIVE_GRID``), a ValueError above.
        gamma (float): offset scale (0.1 in v1 and v2).
        mask (Tensor[R, 1, ph, pw], optional): modulation of each bin (v2), usually in [0, 1].
        aligned (bool): shift the scaled RoI by -0.5 cell, as :func:`roi_align` (whose default is
            False).

    Returns:
        Tensor[R, C, ph, pw].

    Differentiable in ``input``, ``offset`` and ``mask`` (not ``rois``). The offset gradient is the
    exact derivative of the bilinear sampling: zero for a coordinate clamped to the border or a
    sample off the map. A NaN or infinite offset makes its samples read 0. float16/bfloat16 are
    computed in float32.

    Example:
        >>> x = torch.randn(1, 16, 38, 50)
        >>> rois = torch.tensor([[0, 64.0, 48.0, 320.0, 400.0]])
        >>> off = 0.5 * torch.randn(1, 2, 7, 7)
        >>> deform_roi_pool(x, rois, off, 7, 1 / 16, sampling_ratio=2).shape
        torch.Size([1, 16, 7, 7])
    """
    if torch.jit.is_scripting():
        ph, pw = script_pair(output_size)
        return torch.ops.torchdcn.roi_aligned_pool(
            input, script_rois(rois, input), offset, mask, ph, pw, spatial_scale, sampling_ratio,
            aligned, gamma, False,
        )  # fmt: skip
    a = check_roi_args(
        input, rois, output_size, spatial_scale, sampling_ratio, gamma, offset=offset, mask=mask
    )
    if _onnx.in_onnx_export():  # no standard ONNX operator (either exporter)
        raise _onnx.roi_aligned_pool_unsupported(True, False)
    with autocast_off(a.input):
        out = _roi_ops.call_checked(
            torch.ops.torchdcn.roi_aligned_pool,
            a.input, a.rois, a.offset, a.mask, *a.pooled, a.spatial_scale, a.sampling_ratio,
            bool(aligned), a.gamma, False,
        )  # fmt: skip
    return out.to(a.out_dtype)
