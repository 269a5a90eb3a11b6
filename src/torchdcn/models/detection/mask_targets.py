"""Mask R-CNN training targets: the ground-truth mask of each foreground RoI, cropped to the RoI
and resized to the mask head's ``M x M`` grid (28 x 28).

Exact sampling (no rounding of the RoI, no interpolation): pixel ``(x, y)`` of a mask is the
unit square ``[x, x + 1) x [y, y + 1)`` (continuous image coordinates), the RoI
``(x1, y1, x2, y2)`` is split into ``M x M`` equal cells, and target cell ``(i, j)`` is 1 iff at
least half of its area is covered by object pixels (area outside the image counts as
background). The covered fraction is computed exactly: the overlap lengths of the cells with the
pixel columns (rows) form matrices ``A_x [M, w]`` and ``A_y [M, h]`` (each row divided by the
cell width / height), and the fractions are ``A_y @ mask[y0:y1, x0:x1] @ A_x^T`` over the pixels
the RoI touches. Example: an object of pixels ``[2, 6)`` in an 8-pixel image and the RoI
``(0, 0, 8, 8)`` with ``M = 28``: cell ``k`` covers ``[2k/7, 2(k+1)/7)`` and is 1 for
``k = 7..20``; an RoI equal to the object's box gives all ones. (Bilinear RoIAlign sampling of
the mask would instead round off the corners of that box, a 0.57^2 < 0.5 corner bin.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def crop_and_resize_masks(
    masks: Tensor, boxes: Tensor, gt_index: Tensor, resolution: int = 28
) -> Tensor:
    """The targets of ``R`` RoIs of one image (module docstring for the sampling).

    Args:
        masks (Tensor[G, H, W]): the image's ground-truth masks, 0/1 (uint8, bool or float), in
            the pixels of the (transformed) input image the boxes are in.
        boxes (Tensor[R, 4]): RoIs ``(x1, y1, x2, y2)`` in input pixels.
        gt_index (Tensor[R] int64): the ground truth each RoI is matched to, in ``0..G-1``.
        resolution: ``M`` (28).

    Returns:
        Tensor[R, M, M] float 0/1 on ``boxes``' device.

    Example:
        >>> m = torch.zeros(1, 8, 8, dtype=torch.uint8); m[0, 2:6, 2:6] = 1
        >>> crop_and_resize_masks(m, torch.tensor([[2.0, 2.0, 6.0, 6.0]]), torch.tensor([0]), 4)
        tensor([[[1., 1., 1., 1.],
                 [1., 1., 1., 1.],
                 [1., 1., 1., 1.],
                 [1., 1., 1., 1.]]])
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape [G, H, W], got {list(masks.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [R, 4], got {list(boxes.shape)}")
    if gt_index.shape != boxes.shape[:1]:
        raise ValueError(
            f"gt_index must have shape [R] = [{boxes.shape[0]}], got {list(gt_index.shape)}"
        )
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    r = boxes.shape[0]
    if r == 0:
        return boxes.new_zeros((0, resolution, resolution))
    g = masks.shape[0]
    if gt_index.min() < 0 or gt_index.max() >= g:
        raise ValueError(
            f"gt_index must be in 0..{g - 1} (one per ground-truth mask), got values "
            f"{gt_index.min().item()}..{gt_index.max().item()}"
        )
    dtype = torch.promote_types(boxes.dtype, torch.float32)
    h, w = masks.shape[-2:]
    out = boxes.new_zeros((r, resolution, resolution), dtype=dtype)
    rows = boxes.detach().to(torch.float64).cpu().tolist()
    for k, ((x1, y1, x2, y2), g) in enumerate(zip(rows, gt_index.tolist())):
        if x2 <= x1 or y2 <= y1:
            continue
        x0, x_end = max(math.floor(x1), 0), min(math.ceil(x2), w)
        y0, y_end = max(math.floor(y1), 0), min(math.ceil(y2), h)
        if x_end <= x0 or y_end <= y0:
            continue
        crop = masks[g, y0:y_end, x0:x_end].to(device=boxes.device, dtype=dtype)
        a_y = _overlaps(y1, y2, y0, y_end, resolution).to(device=boxes.device, dtype=dtype)
        a_x = _overlaps(x1, x2, x0, x_end, resolution).to(device=boxes.device, dtype=dtype)
        out[k] = (a_y @ crop @ a_x.T >= 0.5 - 1e-6).to(dtype)
    return out


def _overlaps(lo: float, hi: float, p0: int, p1: int, cells: int) -> Tensor:
    """``[cells, p1 - p0]``: the length of cell ``i`` of ``[lo, hi)`` (equal cells) inside pixel
    ``[p, p + 1)``, divided by the cell length (float64)."""
    edges = lo + (hi - lo) * torch.arange(cells + 1, dtype=torch.float64) / cells
    pixels = torch.arange(p0, p1, dtype=torch.float64)
    left = torch.maximum(edges[:-1, None], pixels[None])
    right = torch.minimum(edges[1:, None], pixels[None] + 1)
    return (right - left).clamp(min=0) / ((hi - lo) / cells)


def mask_targets(
    boxes: Sequence[Tensor],
    gt_masks: Sequence[Tensor],
    gt_index: Sequence[Tensor],
    resolution: int = 28,
) -> Tensor:
    """:func:`crop_and_resize_masks` of a batch: ``boxes[i]`` ``[R_i, 4]``, ``gt_masks[i]``
    ``[G_i, H_i, W_i]``, ``gt_index[i]`` ``[R_i]`` -> ``[sum R_i, M, M]`` float 0/1, image 0's
    RoIs first."""
    if not len(boxes) == len(gt_masks) == len(gt_index):
        raise ValueError(
            f"boxes, gt_masks and gt_index must have one entry per image, got {len(boxes)}, "
            f"{len(gt_masks)} and {len(gt_index)}"
        )
    if len(boxes) == 0:
        raise ValueError("boxes must hold at least one image, got an empty sequence")
    return torch.cat(
        [crop_and_resize_masks(m, b, i, resolution) for b, m, i in zip(boxes, gt_masks, gt_index)]
    )
