"""RoIAlign: real-valued bins, each the average of a grid of bilinear samples (SPEC 1 and 4)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import autocast_off
from ._roi_checks import RoIs, check_roi_args
from ._roi_common import register_autograd, run


def roi_align(
    input: Tensor,
    rois: RoIs,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """RoIAlign (Mask R-CNN), the aligned RoI pooling of Deformable ConvNets v2.

    The RoI, scaled by ``spatial_scale`` and shifted by -0.5 cell when ``aligned`` (pixel centres),
    is split into ``ph x pw`` bins of real-valued size; bin ``(i, j)`` is the average of a
    ``gh x gw`` grid of bilinear samples at ``y = y1 + i * bin_h + (iy + 0.5) * bin_h / gh`` (x
    likewise). Same arguments and results as ``torchvision.ops.roi_align`` and mmcv for ordinary
    RoIs.

    Conventions (SPEC section 1): a sample with ``y < -1`` or ``y > H`` reads 0; one in ``[-1, 0]``
    reads row 0 and one past ``H - 1`` the last row (likewise x). ``gh = sampling_ratio``, or
    ``max(1, ceil(roi_h / ph))`` when ``sampling_ratio <= 0`` (adaptive). The RoI size is at least
    0 cells when ``aligned`` and at least 1 when not (so an inverted RoI is the line or cell at its
    first corner; for a zero-size RoI torchvision reads nothing and returns 0, here the line is
    sampled).

    Args:
        input (Tensor[N, C, H, W]): feature map.
        rois (Tensor[R, 5] or list of Tensor[R_i, 4]): ``(batch_index, x1, y1, x2, y2)`` in image
            pixels, or one ``(x1, y1, x2, y2)`` tensor per image (its position is the batch index).
        output_size (int or (int, int)): bins ``(ph, pw)`` per RoI.
        spatial_scale (float): feature cells per image pixel (1/16 for a stride-16 map).
        sampling_ratio (int): samples per bin along each axis; ``<= 0`` adaptive.
        aligned (bool): shift the scaled RoI by -0.5 cell (True, the correct alignment) or not
            (False, the original Mask R-CNN / Detectron behaviour).

    Returns:
        Tensor[R, C, ph, pw].

    Differentiable in ``input`` (not ``rois``). float16/bfloat16 are computed in float32.

    Example:
        >>> x = torch.randn(2, 8, 32, 32)
        >>> rois = torch.tensor([[1, 16.0, 16.0, 240.0, 200.0]])
        >>> roi_align(x, rois, 7, spatial_scale=1 / 8, sampling_ratio=2).shape
        torch.Size([1, 8, 7, 7])
    """
    a = check_roi_args(input, rois, output_size, spatial_scale, sampling_ratio)
    with autocast_off(a.input):
        out = torch.ops.torchdcn.roi_align(
            a.input, a.rois, *a.pooled, float(spatial_scale), sampling_ratio, bool(aligned)
        )
    return out.to(a.out_dtype)


@torch.library.custom_op("torchdcn::roi_align", mutates_args=())
def _roi_align_op(
    input: Tensor,
    rois: Tensor,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    args = (pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned)
    return run("forward_roi_align", input, rois, *args)


@_roi_align_op.register_fake
def _(input, rois, pooled_h, pooled_w, *args):
    return input.new_empty(rois.shape[0], input.shape[1], pooled_h, pooled_w)


@torch.library.custom_op("torchdcn::roi_align_backward", mutates_args=())
def _roi_align_backward_op(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    args = (pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned)
    return run("backward_roi_align", grad, input, rois, *args)


@_roi_align_backward_op.register_fake
def _(grad, input, *args):
    return torch.empty_like(input)


register_autograd(_roi_align_op, torch.ops.torchdcn.roi_align_backward, n_tensors=2, n_grads=1)
