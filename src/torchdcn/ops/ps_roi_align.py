"""Position-sensitive RoI pooling of R-FCN: integer bins and aligned bins, as torchvision's."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _onnx, _roi_ops  # _roi_ops registers the torchdcn::roi_* ops
from ._checks import autocast_off, script_pair
from ._roi_checks import RoIs, check_roi_args, script_rois


def ps_roi_pool(
    input: Tensor,
    boxes: RoIs,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Position-sensitive RoI pooling (R-FCN): ``torchvision.ops.ps_roi_pool``'s arguments,
    defaults and results. Bin ``(i, j)`` of output channel ``c`` averages input channel
    ``(c * ph + i) * pw + j`` over an integer bin.

    Bins as torchvision's: the scaled corners are rounded (halves away from zero) to cells ``x1``,
    ``x2``; the RoI is ``w = max(x2 - x1, 1)`` cells wide (the end is not included, unlike
    :func:`roi_pool`); bin ``j`` spans ``x1 + floor(j * w / pw) <= x < x1 + ceil((j + 1) * w /
    pw)``, clipped to ``[0, W - 1]`` (so, as in torchvision, the last row and column of the map are
    never read). A bin with no cell is 0.

    Args:
        input (Tensor[N, C_out * ph * pw, H, W]): ``ph * pw`` score maps per output channel.
        boxes (Tensor[K, 5] or list of Tensor[K_i, 4]): ``(batch_index, x1, y1, x2, y2)`` in image
            pixels, or one ``(x1, y1, x2, y2)`` tensor per image.
        output_size (int or (int, int)): bins ``(ph, pw)`` per RoI.
        spatial_scale (float): feature cells per image pixel.

    Returns:
        Tensor[K, C_out, ph, pw].

    Differentiable in ``input``. float16/bfloat16 are computed in float32 on CPU. (Before issue 8
    the end cell was included, ``x2 - x1 + 1`` cells, and the second argument was ``rois``.)

    Example:
        >>> x = torch.randn(1, 21 * 3 * 3, 20, 20)
        >>> ps_roi_pool(x, [torch.tensor([[8.0, 8.0, 120.0, 90.0]])], 3, 1 / 8).shape
        torch.Size([1, 21, 3, 3])
    """
    if torch.jit.is_scripting():
        ph, pw = script_pair(output_size)
        rois = script_rois(boxes, input)
        return torch.ops.torchdcn.roi_integer_pool(input, rois, ph, pw, spatial_scale, "avg", True)
    a = check_roi_args(
        input, boxes, output_size, spatial_scale, position_sensitive=True, rois_name="boxes"
    )
    if _onnx.in_onnx_export():  # no standard ONNX operator (either exporter)
        raise _onnx.roi_integer_pool_unsupported("avg", True)
    with autocast_off(a.input):
        out = _roi_ops.call_checked(
            torch.ops.torchdcn.roi_integer_pool,
            a.input,
            a.rois,
            *a.pooled,
            a.spatial_scale,
            "avg",
            True,
        )
    return out.to(a.out_dtype)


def ps_roi_align(
    input: Tensor,
    boxes: RoIs,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """Position-sensitive RoIAlign: ``torchvision.ops.ps_roi_align``'s arguments, defaults and
    results. :func:`roi_align`'s bins and samples, where bin ``(i, j)`` of output channel ``c``
    samples only input channel ``(c * ph + i) * pw + j``.

    Sampling, border, adaptive grid (and its cap) and ``aligned`` as :func:`torchdcn.ops.roi_align`.
    torchvision's op has no ``aligned`` argument and always shifts by -0.5 cell, which is this
    op's default ``aligned=True``; ``aligned=False`` (an extension) is :func:`roi_align`'s legacy
    geometry. One deliberate difference: for a zero-size RoI with an adaptive grid (no samples)
    torchvision divides 0 by 0 and returns NaN; this op returns 0, as ``roi_align`` does.

    Args:
        input (Tensor[N, C_out * ph * pw, H, W]): ``ph * pw`` score maps per output channel.
        boxes (Tensor[K, 5] or list of Tensor[K_i, 4]): ``(batch_index, x1, y1, x2, y2)`` in image
            pixels, or one ``(x1, y1, x2, y2)`` tensor per image.
        output_size (int or (int, int)): bins ``(ph, pw)`` per RoI.
        spatial_scale (float): feature cells per image pixel.
        sampling_ratio (int): samples per bin along each axis; ``<= 0`` adaptive; at most
            64 (``MAX_ADAPTIVE_GRID``), a ValueError above.
        aligned (bool): shift the scaled RoI by -0.5 cell (default, as torchvision).

    Returns:
        Tensor[K, C_out, ph, pw].

    Differentiable in ``input``. float16/bfloat16 are computed in float32 on CPU.

    Example:
        >>> x = torch.randn(1, 21 * 7 * 7, 20, 20)
        >>> boxes = torch.tensor([[0, 8.0, 8.0, 120.0, 90.0]])
        >>> ps_roi_align(x, boxes, 7, 1 / 8, sampling_ratio=2).shape
        torch.Size([1, 21, 7, 7])
    """
    if torch.jit.is_scripting():
        ph, pw = script_pair(output_size)
        return torch.ops.torchdcn.roi_aligned_pool(
            input, script_rois(boxes, input), None, None, ph, pw, spatial_scale, sampling_ratio,
            aligned, 0.0, True,
        )  # fmt: skip
    a = check_roi_args(
        input, boxes, output_size, spatial_scale, sampling_ratio, position_sensitive=True,
        rois_name="boxes",
    )  # fmt: skip
    if _onnx.in_onnx_export():  # no standard ONNX operator (either exporter)
        raise _onnx.roi_aligned_pool_unsupported(False, True)
    with autocast_off(a.input):
        out = _roi_ops.call_checked(
            torch.ops.torchdcn.roi_aligned_pool,
            a.input, a.rois, None, None, *a.pooled, a.spatial_scale, a.sampling_ratio,
            bool(aligned), 0.0, True,
        )  # fmt: skip
    return out.to(a.out_dtype)
