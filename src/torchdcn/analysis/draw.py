"""Drawing a detector's output on its image: boxes, class names and scores (with Pillow).

Each class gets one colour of :data:`PALETTE` (label ``l`` -> ``PALETTE[(l - 1) % len]``); a box
is drawn as a ``width``-pixel outline inside ``(x1, y1, x2, y2)``, and its caption
``"name 0.87"`` in black or white on a filled strip of the box's colour, just above the box (or
inside its top edge when the box touches the top of the image).

Instance masks (Mask R-CNN), when given, are painted first, under the boxes: detection ``k``'s
mask (probabilities binarised at ``>= 0.5``) is blended into the image with its own colour,
``PALETTE[k % len]`` (per instance, so touching objects of one class stay apart), at opacity
``mask_alpha``: ``pixel = (1 - alpha) * pixel + alpha * colour``; the best-scoring detection
(first) is painted last, on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: box colours, RGB, one per class in turn (distinct on photographs and on each other)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
)


def label_color(label: int) -> tuple[int, int, int]:
    """The RGB colour of class ``label`` (1..C)."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def instance_color(index: int) -> tuple[int, int, int]:
    """The RGB colour of the mask of detection ``index`` (0-based)."""
    return PALETTE[int(index) % len(PALETTE)]


def _paint_masks(picture: Any, masks: Any, count: int, alpha: float) -> Any:
    """``picture`` (RGB PIL) with the ``count`` masks ``[K, H, W]`` / ``[K, 1, H, W]`` blended in
    (module docstring); a new PIL image."""
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"mask_alpha must be in [0, 1], got {alpha}")
    masks = torch.as_tensor(masks).detach().cpu()
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    size = (picture.height, picture.width)
    if masks.dim() != 3 or len(masks) != count or tuple(masks.shape[1:]) != size:
        raise ValueError(
            f"masks must be [K, H, W] or [K, 1, H, W] with K = {count} boxes and (H, W) = {size} "
            f"(the image), got {tuple(masks.shape)}"
        )
    pixels = np.asarray(picture, dtype=np.float32).copy()
    binary = (masks.float() >= 0.5).numpy()
    for k in reversed(range(count)):
        inside = binary[k]
        color = np.asarray(instance_color(k), dtype=np.float32)
        pixels[inside] = (1 - alpha) * pixels[inside] + alpha * color
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")


def _to_pil(image: Any) -> Any:
    """A new RGB ``PIL.Image`` of ``image``: a PIL image, a uint8 Tensor[3, H, W], or a float
    Tensor[3, H, W] in [0, 1]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a PIL image or a Tensor[3, H, W], got {got}")
    if image.is_floating_point():
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    elif image.dtype != torch.uint8:
        raise TypeError(f"image must be uint8 or float in [0, 1], got {image.dtype}")
    array = np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy())
    return Image.fromarray(array, "RGB")


def draw_detections(
    image: Any,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    width: int = 2,
    masks: Tensor | None = None,
    mask_alpha: float = 0.45,
) -> Any:
    """A copy of ``image`` with the detections drawn; returns an RGB ``PIL.Image``.

    Args:
        image: ``PIL.Image``, uint8 Tensor[3, H, W] or float Tensor[3, H, W] in [0, 1].
        boxes: Tensor[K, 4], ``(x1, y1, x2, y2)`` in the pixels of ``image``.
        labels: int Tensor[K] in 1..C.
        scores: Tensor[K], or ``None`` (captions without scores).
        class_names: name of label ``l`` at ``class_names[l - 1]``; default the label number.
        width: outline width in pixels (>= 1).
        masks: Tensor[K, H, W] or [K, 1, H, W] in the pixels of ``image`` (probabilities or
            0/1, binarised at 0.5), painted under the boxes in per-instance colours; or ``None``.
        mask_alpha: opacity of the masks (0.45).
    """
    from PIL import ImageDraw, ImageFont

    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    boxes = torch.as_tensor(boxes).detach().float().cpu().reshape(-1, 4)
    labels = torch.as_tensor(labels).detach().cpu().reshape(-1)
    if len(labels) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError(
            f"boxes [K, 4], labels [K] and scores [K] must agree, got {len(boxes)} boxes, "
            f"{len(labels)} labels, {'no' if scores is None else len(scores)} scores"
        )
    if class_names is not None and len(labels) and int(labels.max()) > len(class_names):
        raise ValueError(
            f"label {int(labels.max())} has no name: class_names has {len(class_names)}"
        )
    picture = _to_pil(image)
    if masks is not None:
        picture = _paint_masks(picture, masks, len(boxes), mask_alpha)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for k in range(len(boxes)):
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        label = int(labels[k])
        color = label_color(label)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        name = class_names[label - 1] if class_names is not None else str(label)
        caption = name if scores is None else f"{name} {float(scores[k]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        text_w, text_h = right - left + 4, bottom - top + 4
        y0 = y1 - text_h if y1 - text_h >= 0 else y1
        draw.rectangle((x1, y0, x1 + text_w, y0 + text_h), fill=color)
        ink = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)
        draw.text((x1 + 2 - left, y0 + 2 - top), caption, fill=ink, font=font)
    return picture
