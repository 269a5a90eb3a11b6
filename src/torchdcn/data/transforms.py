"""Detection transforms: the image changes, and its boxes and masks move with it.

A transform is a callable ``t(image, target, generator) -> (image, target)``:

- ``image``: Tensor[C, H, W] (uint8 0-255 or float 0-1; :class:`ToTensor` also takes a PIL image
  or a ``[H, W, C]`` uint8 array);
- ``target``: a dict with, where present, ``"boxes"`` float Tensor[K, 4] (x1, y1, x2, y2) in
  pixels of ``image``, ``"crowd_boxes"`` Tensor[Kc, 4] (the same), ``"masks"`` uint8
  Tensor[K, H, W], and ``"size"`` (the current ``(h, w)``, kept up to date here); other keys pass
  through. A transform returns a new dict and leaves the one it was given alone;
- ``generator``: the :class:`torch.Generator` every random choice is drawn from. The data set seeds
  it from ``(seed, epoch, index)`` (:class:`~torchdcn.data.coco.CocoDetection`), so sample ``i``
  of epoch ``e`` is the same in every run, whatever worker reads it.

Coordinates are continuous: pixel ``j`` covers ``[j, j + 1)``, so a resize by ``s`` maps ``x`` to
``x * s`` and a horizontal flip of a ``W``-wide image maps ``x`` to ``W - x`` (a box ``(x1, x2)``
becomes ``(W - x2, W - x1)``). The model normalises (ImageNet mean and std) itself; nothing here
does.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: target keys holding boxes (x1, y1, x2, y2) in image pixels; moved by every geometric transform
BOX_KEYS = ("boxes", "crowd_boxes")

__all__ = [
    "BOX_KEYS",
    "Compose",
    "RandomHorizontalFlip",
    "Resize",
    "ToTensor",
    "detection_transforms",
    "resized_shape",
]


def _check_image(image: Any) -> Tensor:
    if not isinstance(image, Tensor) or image.dim() != 3:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a Tensor[C, H, W], got {got}")
    return image


def _check_target(target: Any, image: Tensor | None = None) -> dict[str, Any]:
    """A copy of ``target`` after checking its boxes (float Tensor[K, 4]) and, with ``image``,
    that its masks are ``[K, H, W]`` with the image's ``H, W`` (a transform would otherwise move
    masks that were never aligned with the image)."""
    if not isinstance(target, dict):
        raise TypeError(f"target must be a dict, got {type(target).__name__}")
    for key in BOX_KEYS:
        if key in target:
            boxes = target[key]
            if not isinstance(boxes, Tensor):
                raise TypeError(
                    f"target[{key!r}] must be a Tensor[K, 4], got {type(boxes).__name__}"
                )
            if boxes.dim() != 2 or boxes.shape[1] != 4:
                raise ValueError(f"target[{key!r}] must be [K, 4], got {tuple(boxes.shape)}")
    if image is not None and "masks" in target:
        masks = target["masks"]
        if not isinstance(masks, Tensor):
            raise TypeError(
                f"target['masks'] must be a Tensor[K, H, W], got {type(masks).__name__}"
            )
        if masks.dim() != 3 or masks.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"target['masks'] must be [K, H, W] with the image's H, W = "
                f"{tuple(image.shape[-2:])}, got {tuple(masks.shape)}"
            )
    return dict(target)


def _size(name: str, value: Any) -> float:
    """``value`` if it is a finite number > 0 (TypeError for text, ``None``, bools)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a number of pixels, got {value!r} ({type(value).__name__})"
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of pixels > 0, got {value!r}")
    return value


class Compose:
    """Apply ``transforms`` in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        if callable(transforms) or not isinstance(transforms, Sequence | tuple | list):
            raise TypeError(
                "transforms must be a list of callables, got one "
                f"{type(transforms).__name__} (wrap it: Compose([t]))"
                if callable(transforms)
                else f"transforms must be a list of callables, got {type(transforms).__name__}"
            )
        if any(not callable(t) for t in transforms):
            raise TypeError(f"transforms must all be callable, got {list(transforms)!r}")
        self.transforms = list(transforms)

    def __call__(
        self, image: Any, target: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Any, dict[str, Any]]:
        for t in self.transforms:
            image, target = t(image, target, generator)
        return image, target

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class ToTensor:
    """A PIL image, a ``[H, W, C]`` / ``[H, W]`` uint8 array or a uint8 Tensor[C, H, W] ->
    float32 Tensor[C, H, W] in [0, 1] (a float tensor passes through). Boxes are unchanged."""

    def __call__(
        self, image: Any, target: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        target = _check_target(target)
        if not isinstance(image, Tensor):
            array = np.array(image)  # a copy: PIL arrays are read-only
            if array.ndim == 2:
                array = array[:, :, None]
            if array.ndim != 3:
                raise ValueError(f"image must be [H, W, C] or [H, W], got shape {array.shape}")
            image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        image = _check_image(image)
        if image.dtype == torch.uint8:
            image = image.float().div_(255.0)
        elif not image.is_floating_point():
            raise TypeError(f"image must be uint8 or floating point, got {image.dtype}")
        target["size"] = (int(image.shape[-2]), int(image.shape[-1]))
        return image, target

    def __repr__(self) -> str:
        return "ToTensor()"


def resized_shape(height: int, width: int, min_size: float, max_size: float) -> tuple[int, int]:
    """``(h, w)`` after scaling the shorter side to ``min_size`` unless that makes the longer side
    exceed ``max_size``, in which case the longer side becomes ``max_size`` (aspect ratio kept,
    sides rounded to whole pixels, at least 1)."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got (h, w) = ({height}, {width})")
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class Resize:
    """Scale the shorter side to ``min_size`` with the longer side at most ``max_size`` (the
    Faster R-CNN recipe: 600 / 1000 in the papers, 800 / 1333 in Detectron).

    Args:
        min_size: the shorter side in pixels, or several sizes of which one is drawn per sample
            (multi-scale training).
        max_size: cap on the longer side in pixels.
        antialias: low-pass the image when shrinking (bilinear with antialiasing).

    Boxes are scaled by ``w' / w`` in x and ``h' / h`` in y (the exact ratio of the rounded
    sides); masks are resized with nearest-neighbour sampling; dtype of the image is kept.
    """

    def __init__(
        self,
        min_size: float | Sequence[float] = 600,
        max_size: float = 1000,
        antialias: bool = True,
    ) -> None:
        if isinstance(min_size, numbers.Real):
            sizes: tuple = (min_size,)
        elif isinstance(min_size, Sequence) and not isinstance(min_size, str | bytes):
            sizes = tuple(min_size)
        else:
            raise TypeError(
                "min_size must be a number of pixels or a sequence of them, got "
                f"{min_size!r} ({type(min_size).__name__})"
            )
        if not sizes:
            raise ValueError("min_size must hold at least one size, got an empty sequence")
        sizes = tuple(_size("min_size", s) for s in sizes)
        max_size = _size("max_size", max_size)
        self.min_sizes, self.max_size, self.antialias = sizes, max_size, antialias

    def __call__(
        self, image: Tensor, target: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        image = _check_image(image)
        target = _check_target(target, image)
        height, width = image.shape[-2:]
        if len(self.min_sizes) == 1:
            min_size = self.min_sizes[0]
        else:
            pick = torch.randint(len(self.min_sizes), (1,), generator=generator).item()
            min_size = self.min_sizes[pick]
        new_h, new_w = resized_shape(height, width, min_size, self.max_size)
        if (new_h, new_w) != (height, width):
            image = _resize_image(image, (new_h, new_w), self.antialias)
            sx, sy = new_w / width, new_h / height
            factor = torch.tensor([sx, sy, sx, sy])
            for key in BOX_KEYS:
                if key in target:
                    boxes = target[key]
                    target[key] = boxes * factor.to(boxes.device, boxes.dtype)
            if "masks" in target:
                target["masks"] = _resize_masks(target["masks"], (new_h, new_w))
        target["size"] = (new_h, new_w)
        return image, target

    def __repr__(self) -> str:
        sizes = self.min_sizes[0] if len(self.min_sizes) == 1 else self.min_sizes
        return f"Resize(min_size={sizes}, max_size={self.max_size})"


def _resize_image(image: Tensor, size: tuple[int, int], antialias: bool) -> Tensor:
    dtype = image.dtype
    x = image[None].float() if dtype == torch.uint8 else image[None]
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    out = F.interpolate(
        x, size=size, mode="bilinear", align_corners=False, antialias=antialias and shrink
    )[0]
    if dtype == torch.uint8:
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    if masks.dim() != 3:
        raise ValueError(f"target['masks'] must be [K, H, W], got {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    # "nearest-exact" samples at pixel centres: the mask stays aligned with the scaled boxes
    out = F.interpolate(masks[None].float(), size=size, mode="nearest-exact")[0]
    return out.to(masks.dtype)


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p`` (drawn from the generator); boxes
    ``(x1, y1, x2, y2)`` become ``(W - x2, y1, W - x1, y2)`` and masks are mirrored too. Sets
    ``target["flipped"]`` (True / False) so a flip can be undone on the predictions."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.p = p

    def __call__(
        self, image: Tensor, target: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        image = _check_image(image)
        target = _check_target(target, image)
        # always draw, so later transforms see the same random stream whatever p is
        flip = bool(torch.rand((), generator=generator).item() < self.p)
        if flip:
            width = image.shape[-1]
            image = image.flip(-1)
            for key in BOX_KEYS:
                if key in target:
                    boxes = target[key]
                    target[key] = torch.stack(
                        [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1
                    )
            if "masks" in target:
                target["masks"] = target["masks"].flip(-1)
        target["flipped"] = bool(target.get("flipped", False)) ^ flip
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def detection_transforms(
    train: bool, min_size: float | Sequence[float] = 600, max_size: float = 1000
) -> Compose:
    """The papers' pipeline: to float, resize (shorter side ``min_size``, longer at most
    ``max_size``) and, when ``train``, a horizontal flip with probability 0.5."""
    steps: list[Any] = [ToTensor(), Resize(min_size, max_size)]
    if train:
        steps.append(RandomHorizontalFlip(0.5))
    return Compose(steps)
