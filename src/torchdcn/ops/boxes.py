"""Box geometry: area, pairwise IoU, clipping to the image, removing small boxes.

Every box is ``(x1, y1, x2, y2)`` in pixels, ``x1 <= x2`` and ``y1 <= y2`` for a proper box; the
area is ``(x2 - x1) * (y2 - y1)`` (no ``+ 1``), as in torchvision, so these functions are drop-in
replacements for ``torchvision.ops.box_area`` / ``box_iou`` / ``clip_boxes_to_image`` /
``remove_small_boxes``. Float16/bfloat16 boxes are computed in float32 and 8/16-bit integer boxes
in int32 (torchvision's rule: products of small types overflow or round badly).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._box_checks import check_boxes
from ._checks import real_scalar

#: the axis-aligned box formats of ``box_area`` / ``box_iou`` (torchvision's ``fmt``)
BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    """Area of each box.

    Args:
        boxes (Tensor[..., 4]): boxes in format ``fmt``, any leading dimensions, any real dtype.
        fmt (str): ``"xyxy"`` ``(x1, y1, x2, y2)``, ``"xywh"`` ``(x1, y1, w, h)`` or
            ``"cxcywh"`` ``(cx, cy, w, h)``, as torchvision's.

    Returns:
        Tensor[...]: ``(x2 - x1) * (y2 - y1)`` (``w * h`` for the other formats); negative for a
        box with ``x2 < x1`` (exactly one side flipped), as torchvision computes it.
        Float32/float64/int32/int64 keep their dtype, smaller types are widened (see the module
        docstring).

    Example:
        >>> box_area(torch.tensor([[0.0, 0.0, 4.0, 2.0], [1.0, 1.0, 1.0, 5.0]]))
        tensor([8., 0.])
    """
    if torch.jit.is_scripting():  # TorchScript: no argument checks
        return _area(_upcast(boxes), fmt)
    _check_fmt(fmt)
    boxes = _upcast(check_boxes(boxes, batched=True))
    return _area(boxes, fmt)


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Intersection over union of every pair of boxes.

    ``IoU = inter / (area1 + area2 - inter)`` with ``inter = max(0, w) * max(0, h)`` of the
    overlap rectangle. Two zero-area boxes have ``0 / 0 = NaN``; a NaN coordinate gives NaN.

    Args:
        boxes1 (Tensor[..., N, 4]): boxes in format ``fmt``.
        boxes2 (Tensor[..., M, 4]): boxes in format ``fmt``, same device; the leading
            dimensions of the two broadcast (a batch of box sets, as torchvision's).
        fmt (str): ``"xyxy"``, ``"xywh"`` or ``"cxcywh"`` (see :func:`box_area`). torchvision's
            rotated formats are not implemented (``ValueError``).

    Returns:
        Tensor[..., N, M]: ``out[..., i, j]`` is the IoU of ``boxes1[..., i, :]`` and
        ``boxes2[..., j, :]``, in the (widened) dtype of the boxes; integer boxes give floating
        IoUs (true division).

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
        >>> box_iou(a, b)
        tensor([[0.3333, 0.0000]])
    """
    if torch.jit.is_scripting():  # TorchScript: no argument checks
        return pairwise_iou(_upcast(boxes1), _upcast(boxes2), fmt)
    _check_fmt(fmt)
    check_boxes(boxes1, "boxes1", batched=True, sets=True)
    check_boxes(boxes2, "boxes2", batched=True, sets=True)
    if boxes1.device != boxes2.device:
        raise ValueError(
            f"boxes2 is on {boxes2.device} but boxes1 is on {boxes1.device}; both must be on one "
            "device"
        )
    lead1, lead2 = boxes1.shape[:-2][::-1], boxes2.shape[:-2][::-1]
    if any(a != b and 1 not in (a, b) for a, b in zip(lead1, lead2)):
        raise ValueError(
            f"the leading dimensions of boxes1 {tuple(boxes1.shape)} and boxes2 "
            f"{tuple(boxes2.shape)} must broadcast (boxes1 [..., N, 4], boxes2 [..., M, 4])"
        )
    return pairwise_iou(_upcast(boxes1), _upcast(boxes2), fmt)


def _check_fmt(fmt: object) -> None:
    if fmt not in BOX_FORMATS:
        raise ValueError(
            f"fmt must be one of {BOX_FORMATS} (axis-aligned boxes), got {fmt!r}; torchvision's "
            "rotated formats are not implemented"
        )


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
    if torch.jit.is_scripting():  # TorchScript: no argument checks
        return _clip(boxes, size[0], size[1])
    height, width = _check_clip(boxes, size)
    return _clip(boxes, height, width)


def _check_clip(boxes: Tensor, size: object) -> tuple[float, float]:
    """The checked ``(height, width)`` as Python numbers: a pair of finite reals (Python, NumPy
    or 0-d real tensors, :func:`._checks.real_scalar`), or a 1-d real tensor of two (what
    ``image.shape[-2:]`` and torchvision give); ints stay ints (integer boxes stay integer)."""
    check_boxes(boxes, batched=True)
    pair = size.tolist() if isinstance(size, Tensor) and size.dim() == 1 else size
    if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
        raise TypeError(f"size must be a pair (height, width), got {size!r}")
    try:
        height, width = (real_scalar(s, f"size[{i}]") for i, s in enumerate(pair))
    except TypeError as error:  # a bool (tensor) or a non-number
        raise TypeError(f"size must be a pair (height, width), got {size!r}; {error}") from error
    if height < 0 or width < 0:
        raise ValueError(f"size (height, width) must be non-negative, got {(height, width)}")
    return height, width


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
        min_size = _check_min_size(boxes, min_size)
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]


def _check_min_size(boxes: Tensor, min_size: object) -> float:
    check_boxes(boxes)
    return real_scalar(min_size, "min_size")


# ---------------------------------------------------------------------------------------------
# The formulas, once (the NMS reference and its blocked torch route call these on checked input).


def _clip(boxes: Tensor, height: int, width: int) -> Tensor:
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def _area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    if fmt == "xyxy":
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return boxes[..., 2] * boxes[..., 3]


def _corners(boxes: Tensor, fmt: str) -> tuple[Tensor, Tensor]:
    """``(x1, y1)`` and ``(x2, y2)`` of ``boxes [..., 4]`` in ``fmt`` (torchvision's formulas)."""
    if fmt == "xyxy":
        return boxes[..., :2], boxes[..., 2:]
    if fmt == "xywh":
        return boxes[..., :2], boxes[..., :2] + boxes[..., 2:]
    return boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2


def pairwise_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """``Tensor[..., N, M]`` of IoUs of checked ``boxes1`` ``[..., N, 4]`` and ``boxes2``
    ``[..., M, 4]`` (leading dimensions broadcast).

    Each step is rounded in the boxes' dtype, in this order: ``w = min(x2) - max(x1)`` (likewise
    ``h``), clamped at 0 with NaN kept, ``inter = w * h``, ``union = (area1 + area2) - inter``,
    ``iou = inter / union``. The Numba NMS kernel repeats exactly these operations (xyxy), so
    every backend computes bit-identical IoUs."""
    lo1, hi1 = _corners(boxes1, fmt)
    lo2, hi2 = _corners(boxes2, fmt)
    lt = torch.maximum(lo1[..., :, None, :], lo2[..., None, :, :])
    rb = torch.minimum(hi1[..., :, None, :], hi2[..., None, :, :])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = _area(boxes1, fmt)[..., :, None] + _area(boxes2, fmt)[..., None, :] - inter
    return inter / union


def _upcast(t: Tensor) -> Tensor:
    if t.is_floating_point():
        if t.dtype == torch.float32 or t.dtype == torch.float64:
            return t
        return t.float()
    if t.dtype == torch.int32 or t.dtype == torch.int64:
        return t
    return t.int()
