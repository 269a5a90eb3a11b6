"""RoI pooling of Deformable ConvNets v1 (Eq. 5): the average over integer bins (SPEC section 4)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import autocast_off
from ._roi_checks import RoIs, check_roi_args
from ._roi_common import register_autograd, run


def roi_pool(
    input: Tensor,
    rois: RoIs,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoI pooling as in Deformable ConvNets v1, Eq. 5: every bin is the **average** of its cells.

    Unlike ``torchvision.ops.roi_pool`` (Fast R-CNN's max pooling), bins are averaged:
    ``y(i, j) = sum_{p in bin(i, j)} x(p0 + p) / n_ij``. The RoI's corners, scaled by
    ``spatial_scale``, are rounded to cells ``x1..x2``, ``y1..y2`` (inclusive; halves away from
    zero, as Caffe and torchvision), so it is ``w = max(x2 - x1 + 1, 1)`` cells wide (an inverted
    or empty RoI is one cell); bin ``j`` spans
    ``x1 + floor(j * w / pw) <= x < x1 + ceil((j + 1) * w / pw)`` (rows likewise; neighbouring
    bins share a cell when ``pw`` does not divide ``w``). Cells off the map are left out of the sum
    and of ``n_ij``; a bin with no cell on the map is 0.

    Args:
        input (Tensor[N, C, H, W]): feature map.
        rois (Tensor[R, 5] or list of Tensor[R_i, 4]): ``(batch_index, x1, y1, x2, y2)`` in image
            pixels, or one ``(x1, y1, x2, y2)`` tensor per image (its position is the batch index).
        output_size (int or (int, int)): bins ``(ph, pw)`` per RoI.
        spatial_scale (float): feature cells per image pixel (1/16 for a stride-16 map).

    Returns:
        Tensor[R, C, ph, pw].

    Differentiable in ``input`` (not ``rois``). float16/bfloat16 are computed in float32.

    Example:
        >>> x = torch.randn(1, 8, 32, 32)
        >>> rois = torch.tensor([[0, 16.0, 16.0, 240.0, 200.0]])
        >>> roi_pool(x, rois, 7, spatial_scale=1 / 8).shape
        torch.Size([1, 8, 7, 7])
    """
    a = check_roi_args(input, rois, output_size, spatial_scale)
    with autocast_off(a.input):
        out = torch.ops.torchdcn.roi_pool(a.input, a.rois, *a.pooled, float(spatial_scale))
    return out.to(a.out_dtype)


@torch.library.custom_op("torchdcn::roi_pool", mutates_args=())
def _roi_pool_op(
    input: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float
) -> Tensor:
    return run("forward_roi_pool", input, rois, pooled_h, pooled_w, spatial_scale)


@_roi_pool_op.register_fake
def _(input, rois, pooled_h, pooled_w, spatial_scale):
    return input.new_empty(rois.shape[0], input.shape[1], pooled_h, pooled_w)


@torch.library.custom_op("torchdcn::roi_pool_backward", mutates_args=())
def _roi_pool_backward_op(
    grad: Tensor, input: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float
) -> Tensor:
    return run("backward_roi_pool", grad, input, rois, pooled_h, pooled_w, spatial_scale)


@_roi_pool_backward_op.register_fake
def _(grad, input, *args):
    return torch.empty_like(input)


register_autograd(_roi_pool_op, torch.ops.torchdcn.roi_pool_backward, n_tensors=2, n_grads=1)
