"""A batch of images of different sizes, padded to one tensor, with each image's own size kept.

A detector's backbone takes one ``[N, C, H, W]`` tensor, but the images of a batch differ in size.
:func:`batch_images` pads every image at the bottom and on the right (so pixel ``(y, x)`` keeps its
coordinates and boxes need no shift) up to the largest height and width of the batch, rounded up to
a multiple of the backbone's ``size_divisibility``; then every feature map is exactly
``H / stride`` by ``W / stride`` (see ``docs/architecture.md``, "The backbone contract").
:class:`ImageList` keeps the unpadded ``(height, width)`` of each image, which is what boxes are
clipped to.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from torch import Tensor


class ImageList:
    """Padded images and their true sizes.

    Args:
        tensors (Tensor[N, C, H, W]): the padded batch.
        image_sizes (list[tuple[int, int]]): ``(height, width)`` of each image before padding,
            ``N`` pairs, each at most ``(H, W)``.

    Attributes:
        tensors (Tensor[N, C, H, W]), image_sizes (list[tuple[int, int]]): as given.
    """

    def __init__(self, tensors: Tensor, image_sizes: Sequence[tuple[int, int]]) -> None:
        if not isinstance(tensors, Tensor) or tensors.dim() != 4:
            got = tuple(tensors.shape) if isinstance(tensors, Tensor) else type(tensors).__name__
            raise ValueError(f"tensors must be a Tensor[N, C, H, W], got {got}")
        sizes = [_check_size(s, i) for i, s in enumerate(image_sizes)]
        if len(sizes) != tensors.shape[0]:
            raise ValueError(
                f"image_sizes must have one (height, width) per image: tensors holds "
                f"{tensors.shape[0]} images, image_sizes has {len(sizes)}"
            )
        height, width = tensors.shape[-2:]
        for i, (h, w) in enumerate(sizes):
            if h > height or w > width:
                raise ValueError(
                    f"image_sizes[{i}] = {(h, w)} is larger than the padded tensors' "
                    f"(H, W) = {(height, width)}"
                )
        self.tensors = tensors
        self.image_sizes: list[tuple[int, int]] = sizes

    def to(self, *args, **kwargs) -> ImageList:
        """A copy with ``tensors.to(*args, **kwargs)`` (device and/or dtype); sizes shared."""
        return ImageList(self.tensors.to(*args, **kwargs), list(self.image_sizes))

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __repr__(self) -> str:
        return f"ImageList(tensors={tuple(self.tensors.shape)}, image_sizes={self.image_sizes})"


def batch_images(
    images: Sequence[Tensor], size_divisibility: int = 1, pad_value: float = 0.0
) -> ImageList:
    """Pad images to a common size that is a multiple of ``size_divisibility`` and stack them.

    Args:
        images (list[Tensor[C, H_i, W_i]]): at least one image; same ``C``, dtype and device.
        size_divisibility (int): the padded ``H`` and ``W`` are the largest ``H_i`` / ``W_i``
            rounded up to a multiple of this (``backbone.size_divisibility``); 1 = no rounding.
        pad_value (float): value of the padded pixels (0 = the mean colour once normalised).

    Returns:
        ImageList: ``tensors`` Tensor[N, C, H, W] with image ``i`` in
        ``tensors[i, :, :H_i, :W_i]``, and ``image_sizes`` ``[(H_i, W_i), ...]``.

    Example:
        >>> import torch
        >>> batch = batch_images([torch.ones(3, 5, 7), torch.ones(3, 9, 4)], 8)
        >>> tuple(batch.tensors.shape), batch.image_sizes
        ((2, 3, 16, 8), [(5, 7), (9, 4)])
    """
    if isinstance(images, Tensor) or not isinstance(images, Sequence) or len(images) == 0:
        raise TypeError(
            f"images must be a non-empty list of Tensor[C, H, W], got {type(images).__name__}"
        )
    for i, image in enumerate(images):
        if not isinstance(image, Tensor) or image.dim() != 3:
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"images[{i}] must be a Tensor[C, H, W], got {got}")
        if image.shape[0] != images[0].shape[0]:
            raise ValueError(
                f"images[{i}] has {image.shape[0]} channels but images[0] has "
                f"{images[0].shape[0]}; all images need the same channel count"
            )
        if image.dtype != images[0].dtype or image.device != images[0].device:
            raise ValueError(
                f"images[{i}] is {image.dtype} on {image.device} but images[0] is "
                f"{images[0].dtype} on {images[0].device}; all images need one dtype and device"
            )
    if isinstance(size_divisibility, bool) or not isinstance(size_divisibility, int):
        raise TypeError(f"size_divisibility must be an int, got {size_divisibility!r}")
    if size_divisibility < 1:
        raise ValueError(f"size_divisibility must be >= 1, got {size_divisibility}")
    if isinstance(pad_value, bool) or not isinstance(pad_value, numbers.Real):
        raise TypeError(f"pad_value must be a number, got {pad_value!r}")

    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    height = math.ceil(height / size_divisibility) * size_divisibility
    width = math.ceil(width / size_divisibility) * size_divisibility
    first = images[0]
    batch = first.new_full((len(images), first.shape[0], height, width), pad_value)
    for i, image in enumerate(images):  # indexing, not unbind: images may require grad
        batch[i, :, : image.shape[1], : image.shape[2]].copy_(image)
    return ImageList(batch, [(int(im.shape[1]), int(im.shape[2])) for im in images])


def _check_size(size: object, index: int) -> tuple[int, int]:
    ok = (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size)
        and all(int(s) >= 0 for s in size)
    )
    if not ok:
        raise ValueError(
            f"image_sizes[{index}] must be a pair (height, width) of non-negative ints, "
            f"got {size!r}"
        )
    return int(size[0]), int(size[1])


__all__ = ["ImageList", "batch_images"]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_and_batch(
    images: Sequence[Tensor], mean: Tensor, std: Tensor, size_divisibility: int
) -> ImageList:
    """Normalise ``[0, 1]`` images ``[3, H_i, W_i]`` by ``(image - mean) / std`` (``mean``, ``std``:
    ``[3, 1, 1]``) and pad them into an :class:`ImageList` ``[N, 3, H, W]`` whose sizes are
    multiples of ``size_divisibility``, in ``mean``'s dtype (the model's). ``TypeError`` /
    ``ValueError`` name a bad ``images[i]`` (integer images are refused: scale them to [0, 1];
    empty ones too). A stacked ``Tensor[N, 3, H, W]`` is refused with a ``TypeError`` that says
    to pass ``list(images)`` or to batch with :func:`~torchdcn.data.collate.list_collate`."""
    if isinstance(images, Tensor):
        raise TypeError(
            f"images must be a list of Tensor[3, H, W] (one per image, sizes may differ), got a "
            f"Tensor of shape {list(images.shape)}; pass list(images), or batch the data with "
            f"collate_fn=torchdcn.data.collate.list_collate (DataLoader, Trainer, evaluate)"
        )
    if not isinstance(images, Sequence) or not images:
        raise TypeError(
            f"images must be a non-empty list of Tensor[3, H, W], got {type(images).__name__}"
        )
    normed = []
    for i, image in enumerate(images):
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"images[{i}] must be a Tensor[3, H, W], got {got}")
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(
                f"images[{i}] must have a positive height and width, got {tuple(image.shape)}"
            )
        if not image.is_floating_point():
            raise TypeError(
                f"images[{i}] must be a floating-point Tensor with values in [0, 1] (the model "
                f"normalises it), got {image.dtype}; e.g. image.float() / 255"
            )
        # computed in the model's dtype (that of mean/std): float64 or half images work too
        image = image.to(mean.dtype)
        normed.append((image - mean.to(image.device)) / std.to(image.device))
    return batch_images(normed, size_divisibility)
