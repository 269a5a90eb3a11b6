"""RoIAlign: real-valued bins, each the average of a grid of bilinear samples (SPEC 1 and 4)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _onnx, _roi_ops  # _roi_ops registers the torchdcn::roi_* ops
from ._checks import autocast_off, script_pair
from ._roi_checks import RoIs, check_roi_args, script_rois


def roi_align(
    input: Tensor,
    boxes: RoIs,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign (Mask R-CNN): ``torchvision.ops.roi_align``'s arguments, defaults and results;
    ``aligned=True`` is the pixel-aligned RoI pooling of Deformable ConvNets v2 (and Detectron2).

    The RoI, scaled by ``spatial_scale`` and shifted by -0.5 cell when ``aligned`` (pixel centres),
    is split into ``ph x pw`` bins of real-valued size; bin ``(i, j)`` is the average of a
    ``gh x gw`` grid of bilinear samples at ``y = y1 + i * bin_h + (iy + 0.5) * bin_h / gh`` (x
    likewise).

    Conventions (SPEC section 1, torchvision's): a sample with ``y < -1`` or ``y > H`` reads 0; one
    in ``[-1, 0]`` reads row 0 and one past ``H - 1`` the last row (likewise x). ``gh =
    sampling_ratio``, or ``ceil(roi_h / ph)`` when ``sampling_ratio <= 0`` (adaptive), capped at
    ``MAX_ADAPTIVE_GRID = 64`` samples per axis (torchvision has no cap; results differ only for
    bins over 64 feature cells, where torchvision's cost explodes: a +-1e6 px RoI takes minutes).
    Without ``aligned`` the RoI is at least 1 x 1 cell (an inverted RoI is the cell at its first
    corner); with ``aligned`` its size is not clamped, so a zero-size or inverted RoI has an empty
    adaptive grid and gives 0, and with a fixed grid an inverted one samples backwards, exactly as
    torchvision.

    Args:
        input (Tensor[N, C, H, W]): feature map.
        boxes (Tensor[K, 5] or list of Tensor[K_i, 4]): ``(batch_index, x1, y1, x2, y2)`` in image
            pixels, or one ``(x1, y1, x2, y2)`` tensor per image (its position is the batch index).
        output_size (int or (int, int)): bins ``(ph, pw)`` per RoI.
        spatial_scale (float): feature cells per image pixel (1/16 for a stride-16 map).
        sampling_ratio (int): samples per bin along each axis; ``<= 0`` adaptive; at most
            64 (``MAX_ADAPTIVE_GRID``), a ValueError above.
        aligned (bool): shift the scaled RoI by -0.5 cell (True, the correct alignment, v2 and
            Detectron2) or not (False, torchvision's default and the original Mask R-CNN).

    Returns:
        Tensor[K, C, ph, pw].

    Differentiable in ``input`` (not ``boxes``). float16/bfloat16 are computed in float32 on CPU.
    (Before issue 8 the default was ``aligned=True`` and the second argument was called ``rois``.)

    Example:
        >>> x = torch.randn(2, 8, 32, 32)
        >>> boxes = torch.tensor([[1, 16.0, 16.0, 240.0, 200.0]])
        >>> roi_align(x, boxes, 7, spatial_scale=1 / 8, sampling_ratio=2).shape
        torch.Size([1, 8, 7, 7])
    """
    if torch.jit.is_scripting():
        ph, pw = script_pair(output_size)
        return torch.ops.torchdcn.roi_aligned_pool(
            input, script_rois(boxes, input), None, None, ph, pw, spatial_scale, sampling_ratio,
            aligned, 0.0, False,
        )  # fmt: skip
    a = check_roi_args(input, boxes, output_size, spatial_scale, sampling_ratio, rois_name="boxes")
    if _onnx.in_dynamo_onnx_export():  # the standard RoiAlign node, no translation table
        return _onnx.roi_align_node(
            a.input, a.rois, *a.pooled, a.spatial_scale, a.sampling_ratio, bool(aligned)
        )
    with autocast_off(a.input):
        out = _roi_ops.call_checked(
            torch.ops.torchdcn.roi_aligned_pool,
            a.input, a.rois, None, None, *a.pooled, a.spatial_scale, a.sampling_ratio,
            bool(aligned), 0.0, False,
        )  # fmt: skip
    return out.to(a.out_dtype)
