"""RoI pooling over integer bins: torchvision's max pooling, and v1's average (Eq. 5, SPEC 4)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _onnx, _roi_ops  # _roi_ops registers the torchdcn::roi_* ops
from ._checks import autocast_off, script_pair
from ._roi_checks import RoIs, check_roi_args, script_rois


def roi_pool(
    input: Tensor,
    boxes: RoIs,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    mode: str = "max",
) -> Tensor:
    """RoI pooling (Fast R-CNN): ``torchvision.ops.roi_pool``'s arguments, defaults and results;
    ``mode="avg"`` gives Deformable ConvNets v1's average pooling (Eq. 5) over the same bins.

    The RoI's corners, scaled by ``spatial_scale``, are rounded to cells ``x1..x2``, ``y1..y2``
    (halves away from zero), both ends included: ``w = max(x2 - x1 + 1, 1)`` cells wide (an
    inverted RoI is one cell). Bin ``j`` spans ``x1 + floor(j * w / pw) <= x < x1 + ceil((j + 1) *
    w / pw)``, the quotient ``w / pw`` computed in the input's dtype as torchvision does (rows
    likewise; neighbouring bins share a cell when ``pw`` does not divide ``w``), clipped to the map.

    * ``mode="max"`` (default, torchvision): the largest cell of the bin. As in torchvision the
      running maximum starts at ``-FLT_MAX`` and takes a cell only when strictly larger, so NaN
      cells are skipped and the first largest cell (row-major) wins and gets the gradient; a bin
      off the map is 0.
    * ``mode="avg"`` (v1 Eq. 5): ``y(i, j) = sum_{p in bin(i, j)} x(p) / n_ij`` over the ``n_ij``
      cells of the bin on the map; a bin off the map is 0.

    Args:
        input (Tensor[N, C, H, W]): feature map.
        boxes (Tensor[K, 5] or list of Tensor[K_i, 4]): ``(batch_index, x1, y1, x2, y2)`` in image
            pixels, or one ``(x1, y1, x2, y2)`` tensor per image (its position is the batch index).
        output_size (int or (int, int)): bins ``(ph, pw)`` per RoI.
        spatial_scale (float): feature cells per image pixel (1/16 for a stride-16 map).
        mode (str): ``"max"`` (torchvision) or ``"avg"`` (v1 Eq. 5).

    Returns:
        Tensor[K, C, ph, pw].

    Differentiable in ``input`` (not ``boxes``). float16/bfloat16 are computed in float32 on CPU.
    (Before issue 8 this op averaged and its second argument was called ``rois``.)

    Example:
        >>> x = torch.randn(1, 8, 32, 32)
        >>> boxes = torch.tensor([[0, 16.0, 16.0, 240.0, 200.0]])
        >>> roi_pool(x, boxes, 7, spatial_scale=1 / 8).shape
        torch.Size([1, 8, 7, 7])
    """
    if torch.jit.is_scripting():
        ph, pw = script_pair(output_size)
        rois = script_rois(boxes, input)
        return torch.ops.torchdcn.roi_integer_pool(input, rois, ph, pw, spatial_scale, mode, False)
    if mode not in ("max", "avg"):
        raise ValueError(f'mode must be "max" (torchvision) or "avg" (v1 Eq. 5), got "{mode}"')
    a = check_roi_args(input, boxes, output_size, spatial_scale, rois_name="boxes")
    if _onnx.in_onnx_export():  # MaxRoiPool, or an error naming roi_pool(mode="avg")
        error = _onnx.roi_integer_pool_unsupported(mode, False)
        if error is not None:
            raise error
        if _onnx.in_dynamo_onnx_export():  # the standard node, no translation table
            return _onnx.max_roi_pool_node(a.input, a.rois, *a.pooled, a.spatial_scale)
    with autocast_off(a.input):
        out = _roi_ops.call_checked(
            torch.ops.torchdcn.roi_integer_pool,
            a.input,
            a.rois,
            *a.pooled,
            a.spatial_scale,
            mode,
            False,
        )
    return out.to(a.out_dtype)
