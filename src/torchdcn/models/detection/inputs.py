"""What a detector is called with, checked in one place: the training targets of every detector
(Faster R-CNN with or without FPN, R-FCN, Mask R-CNN, the class-aware RPN detector) and the
original image sizes of eval.

A target is one dict per image ``i`` (``targets`` a list, as :func:`~torchdcn.data.collate.
list_collate` gives it), in the pixels of ``images[i]`` as the model is given it (the model pads
the batch at the bottom and right but never resizes, so these coordinates stay valid):

- ``"boxes"``: floating-point ``Tensor[G, 4]``, ``(x1, y1, x2, y2)`` absolute pixels, finite,
  ``x2 > x1`` and ``y2 > y1`` (``G = 0`` for an image without objects: ``torch.zeros(0, 4)``);
- ``"labels"``: integer ``Tensor[G]`` (any integer dtype; used as int64) in ``1..C``, ``C`` the
  foreground classes (0 is the background, never a target);
- ``"masks"`` (Mask R-CNN only): ``Tensor[G, H_i, W_i]`` 0/1 (uint8, bool or float), one per box,
  ``(H_i, W_i)`` the size of ``images[i]`` (resize the masks with the image).

Every check raises ``TypeError`` (wrong kind of object) or ``ValueError`` (wrong shape or values)
naming ``targets[i]['key']`` and, for values, the first bad row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor

from ...ops._checks import CheckedByCaller, real_scalar

# set (per thread) while a detector runs its heads on the targets it has checked
_targets_checked = CheckedByCaller()


def targets_checked() -> AbstractContextManager[None]:
    """Within: :func:`checked_by_caller` is True, so the RPN, box and mask heads skip their own
    check of targets the detector has just checked with :func:`check_targets` (one device sync
    per image and head). Does nothing while ``torch.compile`` traces (the heads then check)."""
    return _targets_checked.scope()


def checked_by_caller() -> bool:
    """True inside :func:`targets_checked`: a head used inside a detector skips the check it
    makes when called on its own."""
    return bool(_targets_checked)


def check_targets(
    targets: object,
    image_sizes: Sequence[tuple[int, int]],
    num_classes: int | None,
    masks: bool = False,
) -> None:
    """Check a batch of training targets (module docstring).

    Args:
        targets: one dict per image.
        image_sizes: ``(H_i, W_i)`` of each image as given to the model (unpadded).
        num_classes: ``C``, labels must lie in ``1..C``; ``None``: labels are not needed (a plain
            RPN) and not checked.
        masks: the targets must hold ``"masks"`` ``[G_i, H_i, W_i]`` (Mask R-CNN).

    Example:
        >>> boxes = torch.tensor([[10.0, 20.0, 30.0, 50.0], [5.0, 5.0, 5.0, 9.0]])
        >>> check_targets([{"boxes": boxes, "labels": torch.tensor([1, 2])}], [(64, 64)], 3)
        Traceback (most recent call last):
        ...
        ValueError: targets[0]['boxes'] must be finite with x2 > x1 and y2 > y1 (...), got row 1
        = [5.0, 5.0, 5.0, 9.0]
    """
    check_target_list(targets, len(image_sizes))
    for i, (target, size) in enumerate(zip(targets, image_sizes)):
        check_target(i, target, num_classes, size if masks else None)


def check_target_list(targets: object, num_images: int) -> None:
    """``TypeError`` unless ``targets`` is a list (sequence) of dicts, ``ValueError`` unless it
    holds ``num_images`` of them."""
    if isinstance(targets, (Mapping, str, bytes, Tensor)) or not isinstance(targets, Sequence):
        raise TypeError(
            f"targets must be a list of dicts (one per image), got {type(targets).__name__}"
        )
    if len(targets) != num_images:
        raise ValueError(f"targets must hold one dict per image ({num_images}), got {len(targets)}")
    for i, target in enumerate(targets):
        if not isinstance(target, Mapping):
            raise TypeError(
                f"targets[{i}] must be a dict with 'boxes' and 'labels', got "
                f"{type(target).__name__}"
            )


def check_target(
    index: int,
    target: object,
    num_classes: int | None,
    image_size: tuple[int, int] | None = None,
) -> None:
    """Check ``targets[index]``: boxes, labels in ``1..num_classes`` (unless ``num_classes`` is
    ``None``) and, when ``image_size`` ``(H, W)`` is given, masks ``[G, H, W]``."""
    if not isinstance(target, Mapping):
        raise TypeError(
            f"targets[{index}] must be a dict with 'boxes' and 'labels', got "
            f"{type(target).__name__}"
        )
    needed = ("boxes",) if num_classes is None else ("boxes", "labels")
    if any(key not in target for key in needed):
        raise ValueError(
            f"targets[{index}] must have {' and '.join(repr(k) for k in needed)}, got keys "
            f"{sorted(target)}"
        )
    boxes = target["boxes"]
    name = f"targets[{index}]['boxes']"
    if not isinstance(boxes, Tensor) or not boxes.is_floating_point():
        got = boxes.dtype if isinstance(boxes, Tensor) else type(boxes).__name__
        raise TypeError(
            f"{name} must be a floating-point Tensor[G, 4] (x1, y1, x2, y2), got {got}"
            + ("; e.g. boxes.float()" if isinstance(boxes, Tensor) else "")
        )
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"{name} must be a Tensor[G, 4] (x1, y1, x2, y2; torch.zeros(0, 4) for no box), got "
            f"shape {list(boxes.shape)}"
        )
    count = boxes.shape[0]
    if num_classes is not None:
        _check_labels(index, target["labels"], count, num_classes)
    if count:
        b = boxes.detach()
        ok = torch.isfinite(b).all(dim=1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        if not bool(ok.all()):
            row = int(torch.nonzero(~ok)[0])
            bad = int((~ok).sum())
            more = f" ({bad} of {count} rows are bad)" if bad > 1 else ""
            raise ValueError(
                f"{name} must be finite with x2 > x1 and y2 > y1 (x1, y1, x2, y2 in input "
                f"pixels; drop empty boxes in the dataset), got row {row} = "
                f"{b[row].tolist()}{more}"
            )
    if image_size is not None:
        if "masks" not in target:
            raise ValueError(
                f"targets[{index}] must have 'masks' [G, H, W] to train the mask head (build the "
                f"COCO dataset with masks=True), got keys {sorted(target)}"
            )
        check_masks(index, target["masks"], count, image_size)


def _check_labels(index: int, labels: object, count: int, num_classes: int) -> None:
    name = f"targets[{index}]['labels']"
    if not isinstance(labels, Tensor):
        raise TypeError(
            f"{name} must be an integer Tensor[G] of classes 1..{num_classes}, got "
            f"{type(labels).__name__}; e.g. torch.tensor(labels)"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(
            f"{name} must be an integer Tensor[G] of classes 1..{num_classes}, got {labels.dtype}"
        )
    if labels.shape != (count,):
        raise ValueError(
            f"{name} must be a Tensor[G] with G = {count} (one per box of "
            f"targets[{index}]['boxes'] [G, 4]), got shape {list(labels.shape)}"
        )
    if count:
        lab = labels.detach().to(torch.int64)
        bad = (lab < 1) | (lab > num_classes)
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"{name} must be in 1..{num_classes} (0 is the background), got "
                f"{int(lab[row])} at row {row}"
            )


def check_masks(index: int, masks: object, count: int, image_size: tuple[int, int]) -> None:
    """``targets[index]['masks']`` must be a ``Tensor[count, H, W]``, ``(H, W) = image_size``
    (the image as given to the model)."""
    name = f"targets[{index}]['masks']"
    h, w = image_size
    if not isinstance(masks, Tensor):
        raise TypeError(
            f"{name} must be a Tensor[G, H, W] (one 0/1 mask per box), got "
            f"{type(masks).__name__}; e.g. torch.stack(masks)"
        )
    if masks.dim() != 3 or masks.shape[0] != count or tuple(masks.shape[1:]) != (h, w):
        raise ValueError(
            f"{name} must be [G, H, W] = {[count, h, w]} (one per box, at the size of "
            f"images[{index}]: resize the masks with the image), got {list(masks.shape)}"
        )


def check_orig_sizes(orig_sizes: object, num_images: int) -> list[tuple[int, int]] | None:
    """``orig_sizes`` as ``[(h, w), ...]`` ints, one pair per image, or ``None``.

    A pair is a sequence of two positive ints, a 1-d integer ``Tensor[2]`` or a pair of 0-d
    integer tensors; ``orig_sizes`` may also be an integer ``Tensor[N, 2]``.

    Example:
        >>> check_orig_sizes([torch.tensor([480, 640]), (torch.tensor(100), 50)], 2)
        [(480, 640), (100, 50)]
    """
    if orig_sizes is None:
        return None
    if isinstance(orig_sizes, Tensor):
        orig_sizes = list(orig_sizes) if orig_sizes.dim() >= 1 else orig_sizes
    if isinstance(orig_sizes, (str, bytes, Mapping)) or not isinstance(orig_sizes, Sequence):
        raise TypeError(
            f"orig_sizes must be a list of (height, width) pairs, one per image, got "
            f"{type(orig_sizes).__name__}"
        )
    if len(orig_sizes) != num_images:
        raise ValueError(
            f"orig_sizes must give one (h, w) per image ({num_images}), got {len(orig_sizes)}"
        )
    return [_size_pair(size, i) for i, size in enumerate(orig_sizes)]


def _size_pair(size: object, index: int) -> tuple[int, int]:
    """``orig_sizes[index]`` as ``(h, w)``: each an int, or a float or 0-d tensor holding one
    (``480.0``, as earlier versions took it), by :func:`~torchdcn.ops._checks.real_scalar`."""
    if isinstance(size, Tensor):
        items = list(size) if size.dim() == 1 else None
    elif isinstance(size, Sequence) and not isinstance(size, (str, bytes)):
        items = list(size)
    else:
        items = None
    got = size.tolist() if isinstance(size, Tensor) else size
    message = (
        f"orig_sizes[{index}] must be a pair (height, width) of ints (a tuple or an integer "
        f"Tensor[2]), got {got!r}"
    )
    if items is None or len(items) != 2:
        raise TypeError(message)
    try:
        values = [
            real_scalar(v, f"orig_sizes[{index}][{k}]", integral=True, integer_floats=True)
            for k, v in enumerate(items)
        ]
    except (TypeError, ValueError) as error:  # 480.5 too: a TypeError, as it always was
        raise TypeError(f"{message}; {error}") from error
    if min(values) <= 0:
        raise ValueError(
            f"orig_sizes[{index}] must be a positive (height, width), got {tuple(values)}"
        )
    return values[0], values[1]


__all__ = [
    "check_masks",
    "check_orig_sizes",
    "check_target",
    "check_target_list",
    "check_targets",
    "checked_by_caller",
    "targets_checked",
]
