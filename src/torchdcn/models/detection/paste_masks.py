"""Pasting Mask R-CNN's ``M x M`` box-relative masks back into full image canvases.

Exact sampling (cells laid out as in the crop of :mod:`.mask_targets`): a mask of ``M x M``
cells covers its box ``(x1, y1, x2, y2)`` (continuous image coordinates, pixel ``(x, y)``
covering ``[x, x + 1) x [y, y + 1)``), cell ``(i, j)`` being centred at
``(x1 + (j + 0.5) (x2 - x1) / M, y1 + (i + 0.5) (y2 - y1) / M)``. Image pixel ``(x, y)`` gets

- 0 if its centre ``(x + 0.5, y + 0.5)`` is outside the box (``cx < x1``, ``cx >= x2``, same in
  y), else
- the bilinear interpolation of the mask at mask coordinates
  ``u = (cx - x1) M / (x2 - x1) - 0.5``, ``v = (cy - y1) M / (y2 - y1) - 0.5`` (cell centres at
  integers), with ``u`` and ``v`` clamped to ``[0, M - 1]`` (the border cells extend to the box
  edge).

Values stay probabilities in ``[0, 1]`` (no threshold); the canvas is ``[H, W]`` of the image the
boxes are in (the original image when the detector was given ``orig_sizes``). Boxes are clipped to
the canvas first. Only the pixels of each box are computed (``torch.nn.functional.grid_sample``,
``align_corners=False``, ``padding_mode="border"``), so the cost is the boxes' area, not
``K x H x W`` (the output itself is ``K x H x W``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def paste_masks_in_image(masks: Tensor, boxes: Tensor, image_size: Sequence[int]) -> Tensor:
    """Each mask resized into its box and placed on an empty canvas (module docstring).

    Args:
        masks (Tensor[K, M, M] or Tensor[K, 1, M, M]): float masks in ``[0, 1]`` (probabilities).
        boxes (Tensor[K, 4]): ``(x1, y1, x2, y2)`` in the pixels of the canvas.
        image_size: ``(H, W)`` of the canvas.

    Returns:
        Tensor[K, 1, H, W] float in ``[0, 1]`` (``masks``' dtype, at least float32).

    Example:
        >>> paste_masks_in_image(torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]),
        ...                      torch.tensor([[0.0, 0.0, 4.0, 1.0]]), (2, 4))[0, 0]
        tensor([[0.0000, 0.2500, 0.7500, 1.0000],
                [0.0000, 0.0000, 0.0000, 0.0000]])
    """
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"masks must be [K, M, M] or [K, 1, M, M], got {list(masks.shape)}")
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"masks must be [K, M, M] or [K, 1, M, M], got {list(masks.shape)}")
    if boxes.dim() != 2 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(
            f"boxes must have shape [K, 4] = [{masks.shape[0]}, 4] (one per mask), got "
            f"{list(boxes.shape)}"
        )
    if len(image_size) != 2 or min(int(s) for s in image_size) < 0:
        raise ValueError(f"image_size must be (H, W) >= 0, got {tuple(image_size)}")
    h, w = (int(s) for s in image_size)
    dtype = torch.promote_types(masks.dtype, torch.float32)
    out = masks.new_zeros((masks.shape[0], 1, h, w), dtype=dtype)
    if masks.shape[0] == 0 or h == 0 or w == 0:
        return out
    boxes = boxes.detach().to(torch.float64).cpu()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        if x2 <= x1 or y2 <= y1:
            continue
        # pixels whose centre c = p + 0.5 satisfies x1 <= c < x2
        px0, px1 = max(math.ceil(x1 - 0.5), 0), min(math.ceil(x2 - 0.5), w)
        py0, py1 = max(math.ceil(y1 - 0.5), 0), min(math.ceil(y2 - 0.5), h)
        if px1 <= px0 or py1 <= py0:
            continue
        cx = torch.arange(px0, px1, dtype=torch.float64) + 0.5
        cy = torch.arange(py0, py1, dtype=torch.float64) + 0.5
        # grid_sample with align_corners=False: -1 / +1 are the outer edges of the M cells
        gx = (2 * (cx - x1) / (x2 - x1) - 1).to(device=masks.device, dtype=dtype)
        gy = (2 * (cy - y1) / (y2 - y1) - 1).to(device=masks.device, dtype=dtype)
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
        patch = F.grid_sample(
            masks[k][None, None].to(dtype), grid, mode="bilinear", padding_mode="border",
            align_corners=False,
        )  # fmt: skip
        out[k, 0, py0:py1, px0:px1] = patch[0, 0]
    return out
