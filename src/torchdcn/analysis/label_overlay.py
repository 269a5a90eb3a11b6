"""Colour-coded semantic label maps: a palette, a label PNG and an overlay on the photograph.

Label ``k`` gets the colour of the PASCAL VOC colour map (the bits of ``k`` spread over the high
bits of R, G and B: 1 dark red, 2 dark green, 3 olive, ...; 0 black, 255 cream-white), so label
PNGs read like VOC's ``SegmentationClass`` files.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor


def label_palette(size: int = 256) -> np.ndarray:
    """uint8 ``[size, 3]`` RGB colours of labels ``0..size - 1`` (VOC's colour map)."""
    if not 1 <= size <= 256:
        raise ValueError(f"size must be in 1..256, got {size}")
    colors = np.zeros((size, 3), dtype=np.uint8)
    for k in range(size):
        code, r, g, b = k, 0, 0, 0
        for bit in range(8):
            r |= ((code >> 0) & 1) << (7 - bit)
            g |= ((code >> 1) & 1) << (7 - bit)
            b |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        colors[k] = (r, g, b)
    return colors


def _labels_array(labels: Tensor | np.ndarray) -> np.ndarray:
    array = labels.cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"labels must lie in 0..255, got {array.min()}..{array.max()}")
    return array.astype(np.uint8)


def label_image(labels: Tensor | np.ndarray) -> Any:
    """A palette (mode ``P``) PIL image of ``labels`` ``[H, W]`` (0..255): its pixel values are
    the labels, shown in :func:`label_palette`'s colours."""
    from PIL import Image

    image = Image.fromarray(_labels_array(labels), mode="P")
    image.putpalette(label_palette().reshape(-1).tolist())
    return image


def overlay_labels(image: Any, labels: Tensor | np.ndarray, alpha: float = 0.5) -> Any:
    """An RGB PIL image: ``image`` with every pixel of label ``k > 0`` blended with ``k``'s colour
    (``(1 - alpha) * pixel + alpha * colour``); background (0) pixels stay as they are.

    Args:
        image: PIL image, or uint8 ``[H, W, 3]`` array, or float ``Tensor[3, H, W]`` in [0, 1].
        labels: ``[H, W]`` labels of the image's size.
        alpha: opacity of the colours, in [0, 1].
    """
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if isinstance(image, Tensor):
        pixels = (image.detach().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    else:
        pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"image must be RGB [H, W, 3], got shape {pixels.shape}")
    array = _labels_array(labels)
    if array.shape != pixels.shape[:2]:
        raise ValueError(f"labels are {array.shape} (h, w) but the image is {pixels.shape[:2]}")
    colours = label_palette()[array].astype(np.float32)
    blended = pixels.astype(np.float32)
    fg = array > 0
    blended[fg] = (1 - alpha) * blended[fg] + alpha * colours[fg]
    return Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8), mode="RGB")


__all__ = ["label_image", "label_palette", "overlay_labels"]
