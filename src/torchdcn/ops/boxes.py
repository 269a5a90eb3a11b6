"""Box geometry: area, pairwise IoU, clipping to the image, removing small boxes.

Every box is ``(x1, y1, x2, y2)`` in pixels, ``x1 <= x2`` and ``y1 <= y2`` for a proper box; the
area is ``(x2 - x1) * (y2 - y1)`` (no ``+ 1``), as in torchvision, so these functions are drop-in
replacements for ``torchvision.ops.box_area`` / ``box_iou`` / ``clip_boxes_to_image`` /
``remove_small_boxes``. Float16/bfloat16 boxes are computed in float32 and 8/16-bit integer boxes
in int32 (torchvision's rule: products of small types overflow or round badly).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from ._box_checks import check_boxes, check_real


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box.

    Args:
        boxes (Tensor[N, 4]): boxes as ``(x1, y1, x2, y2)``, any real dtype.

    Returns:
        Tensor[N]: ``(x2 - x1) * (y2 - y1)``; negative for a box with ``x2 < x1`` (exactly one
        side flipped), as torchvision computes it. Float32/float64/int32/int64 keep their dtype,
        smaller types are widened (see the module docstring).

    Example:
        >>> box_area(torch.tensor([[0.0, 0.0, 4.0, 2.0], [1.0, 1.0, 1.0, 5.0]]))
        tensor([8., 0.])
    """
    if torch.jit.is_scripting():  # TorchScript: no argument checks
        return _area(_upcast(boxes))
    boxes = _upcast(check_boxes(boxes))
    return _area(boxes)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair of boxes.

    ``IoU = inter / (area1 + area2 - inter)`` with ``inter = max(0, w) * max(0, h)`` of the
    overlap rectangle. Two zero-area boxes have ``0 / 0 = NaN``; a NaN coordinate gives NaN.

    Args:
        boxes1 (Tensor[N, 4]): boxes as ``(x1, y1, x2, y2)``.
        boxes2 (Tensor[M, 4]): boxes as ``(x1, y1, x2, y2)``, same device.

    Returns:
        Tensor[N, M]: ``out[i, j]`` is the IoU of ``boxes1[i]`` and ``boxes2[j]``, in the
        (widened) dtype of the boxes; integer boxes give floating IoUs (true division).

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
        >>> box_iou(a, b)
        tensor([[0.3333, 0.0000]])
    """
    if torch.jit.is_scripting():  # TorchScript: no argument checks
        return pairwise_iou(_upcast(boxes1), _upcast(boxes2))
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    if boxes1.device != boxes2.device:
        raise ValueError(
            f"boxes2 is on {boxes2.device} but boxes1 is on {boxes1.device}; both must be on one "
            "device"
        )
    return pairwise_iou(_upcast(boxes1), _upcast(boxes2))


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp boxes to an image: ``x`` into ``[0, width]``, ``y`` into ``[0, height]``.

    Args:
        boxes (Tensor[..., 4]): boxes as ``(x1, y1, x2, y2)``, any leading dimensions.
        size ((int, int)): the image's ``(height, width)`` in pixels.

    Returns:
        Tensor[..., 4]: a new tensor with ``boxes``' shape and dtype.

    Example:
        >>> clip_boxes_to_image(torch.tensor([[-5.0, 2.0, 30.0, 12.0]]), (10, 20))
        tensor([[ 0.,  2., 20., 10.]])
    """
    if not torch.jit.is_scripting():  # TorchScript: no argument checks
        _check_clip(boxes, size)
    return _clip(boxes, size[0], size[1])


def _check_clip(boxes: Tensor, size: Sequence[int]) -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes must be a Tensor of shape [..., 4], got {type(boxes).__name__}")
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4], got shape {tuple(boxes.shape)}")
    check_real(boxes, "boxes", floating=False)
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in size)
    ):
        raise TypeError(f"size must be a pair (height, width), got {size!r}")
    if size[0] < 0 or size[1] < 0:
        raise ValueError(f"size (height, width) must be non-negative, got {tuple(size)}")


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both at least ``min_size``.

    Args:
        boxes (Tensor[N, 4]): boxes as ``(x1, y1, x2, y2)``.
        min_size (float): minimum side length in pixels.

    Returns:
        Tensor[K] (int64): indices into ``boxes``, increasing. A box with a NaN side is removed.

    Example:
        >>> boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.5, 10.0]])
        >>> remove_small_boxes(boxes, 1.0)
        tensor([0])
    """
    if not torch.jit.is_scripting():
        _check_min_size(boxes, min_size)
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]


def _check_min_size(boxes: Tensor, min_size: float) -> None:
    check_boxes(boxes)
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Real):
        raise TypeError(f"min_size must be a number, got {type(min_size).__name__} {min_size!r}")


# ---------------------------------------------------------------------------------------------
# The formulas, once (the NMS reference and its blocked torch route call these on checked input).


def _clip(boxes: Tensor, height: int, width: int) -> Tensor:
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def _area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``Tensor[N, M]`` of IoUs of checked ``boxes1`` ``[N, 4]`` and ``boxes2`` ``[M, 4]``.

    Each step is rounded in the boxes' dtype, in this order: ``w = min(x2) - max(x1)`` (likewise
    ``h``), clamped at 0 with NaN kept, ``inter = w * h``, ``union = (area1 + area2) - inter``,
    ``iou = inter / union``. The Numba NMS kernel repeats exactly these operations, so every
    backend computes bit-identical IoUs."""
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = _area(boxes1)[:, None] + _area(boxes2)[None, :] - inter
    return inter / union


def _upcast(t: Tensor) -> Tensor:
    if t.is_floating_point():
        if t.dtype == torch.float32 or t.dtype == torch.float64:
            return t
        return t.float()
    if t.dtype == torch.int32 or t.dtype == torch.int64:
        return t
    return t.int()
