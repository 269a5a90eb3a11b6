"""From per-class scored boxes to the detections a user sees (Fast R-CNN box head, class-aware RPN).

One image at a time: boxes are clipped to the input image, scores at or below ``score_thresh``
and boxes thinner than ``min_size`` are dropped, non-maximum suppression runs per class
(:func:`torchdcn.ops.batched_nms`), the ``detections_per_img`` best survivors are kept by
decreasing score, and when the original image size is given the boxes are mapped back to it
(the input image being a resized copy of the original) and clipped there.

Output format (every detector of this package): a dict with ``boxes`` ``[D, 4]`` float
``(x1, y1, x2, y2)`` in original-image pixels (input-image pixels when no original size is
given), ``labels`` ``[D]`` int64 in ``1..C`` (0 is the background and never returned) and
``scores`` ``[D]`` in decreasing order, ``D <= detections_per_img``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...ops import batched_nms, clip_boxes_to_image, remove_small_boxes
from ...ops._checks import real_scalar

Size = tuple[int, int]


def check_postprocess_args(
    score_thresh: object, nms_thresh: object, detections_per_img: object
) -> tuple[float, float, int]:
    """``(score_thresh, nms_thresh, detections_per_img)`` checked and as ``(float, float, int)``:
    both thresholds real numbers in ``[0, 1]`` (fractions, not percent), ``detections_per_img``
    a positive int, each a Python or NumPy number (not a tensor: they are settings of the
    module), checked by :func:`~torchdcn.ops._checks.real_scalar`. ``TypeError`` /
    ``ValueError`` name the argument.

    Example:
        >>> check_postprocess_args(0.05, 0.5, 100)
        (0.05, 0.5, 100)
    """
    thresholds = []
    for name, value in (("score_thresh", score_thresh), ("nms_thresh", nms_thresh)):
        number = real_scalar(value, name, tensor=False, wanted="a number in [0, 1]")
        if not 0.0 <= number <= 1.0:
            raise ValueError(f"{name} must be in [0, 1] (a fraction, not percent), got {value!r}")
        thresholds.append(float(number))
    count = real_scalar(
        detections_per_img,
        "detections_per_img",
        integral=True,
        tensor=False,
        wanted="a positive int",
    )
    if count < 1:
        raise ValueError(f"detections_per_img must be a positive int, got {detections_per_img!r}")
    return thresholds[0], thresholds[1], count


def rescale_boxes(boxes: Tensor, from_size: Sequence[int], to_size: Sequence[int]) -> Tensor:
    """Map boxes ``[..., 4]`` from an image of ``from_size`` ``(h, w)`` to one of ``to_size``
    (x scaled by ``to_w / from_w``, y by ``to_h / from_h``).

    Example:
        >>> rescale_boxes(torch.tensor([[10.0, 10.0, 20.0, 40.0]]), (100, 200), (50, 400))
        tensor([[20.,  5., 40., 20.]])
    """
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4], got {list(boxes.shape)}")
    (fh, fw), (th, tw) = from_size, to_size
    if min(fh, fw, th, tw) <= 0:
        raise ValueError(f"sizes must be positive (h, w), got from {from_size} to {to_size}")
    scale = boxes.new_tensor([tw / fw, th / fh, tw / fw, th / fh])
    return boxes * scale


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    image_size: Sequence[int],
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    min_size: float = 1e-2,
    orig_size: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """Detections of one image from class-specific boxes and scores of its ``R`` candidates.

    Args:
        boxes (Tensor[R, C, 4]): one box per candidate and foreground class (class ``k`` of
            column ``k - 1``), input-image pixels.
        scores (Tensor[R, C]): the matching class probabilities (background column removed).
        image_size: ``(h, w)`` of the input image, without padding.
        score_thresh: keep scores strictly above it.
        nms_thresh: IoU threshold of the per-class NMS.
        detections_per_img: at most this many detections, the best ones.
        min_size: drop boxes with a side shorter than this (input pixels) after clipping.
        orig_size: ``(h, w)`` of the original image, or ``None`` to stay in input pixels.

    Returns:
        ``{"boxes": [D, 4], "labels": [D] int64 in 1..C, "scores": [D]}``, by decreasing score.
    """
    if boxes.dim() != 3 or boxes.shape[2] != 4 or scores.shape != boxes.shape[:2]:
        raise ValueError(
            f"boxes must be [R, C, 4] and scores [R, C], got {list(boxes.shape)} and "
            f"{list(scores.shape)}"
        )
    if detections_per_img < 0:
        raise ValueError(f"detections_per_img must be >= 0, got {detections_per_img}")
    num_classes = boxes.shape[1]
    flat_scores = scores.reshape(-1)
    flat = torch.nonzero(flat_scores > score_thresh).squeeze(1)  # candidates, index r * C + c
    boxes, scores, labels = _best_after_nms(
        boxes.reshape(-1, 4),
        flat_scores[flat],
        flat,
        num_classes,
        tuple(image_size),
        nms_thresh,
        detections_per_img,
        min_size,
    )
    if orig_size is not None:
        boxes = clip_boxes_to_image(rescale_boxes(boxes, image_size, orig_size), tuple(orig_size))
    return {"boxes": boxes, "labels": labels, "scores": scores}


def _best_after_nms(
    all_boxes: Tensor,
    scores: Tensor,
    flat: Tensor,
    num_classes: int,
    image_size: tuple[int, int],
    nms_thresh: float,
    count: int,
    min_size: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``count`` best survivors of clip, size filter and per-class NMS of the candidates
    ``flat`` (indices ``r * C + c`` into ``all_boxes`` [R * C, 4], in increasing order) scored
    ``scores``: the same as running them all through :func:`batched_nms` and keeping the first
    ``count``, without handing the NMS (or a sort) every candidate when it need not.

    Greedy NMS visits candidates by decreasing score (ties: lower index first) and decides each
    one from the kept candidates of its class visited before it; a suppressed candidate never
    suppresses another. So the best ``max(4 * count, 1000)`` candidates (all those tied at the
    cut too) go first: when ``count`` of them survive, that is the answer; otherwise the rest
    go through the NMS behind those survivors only. With 1000 RoIs x 80 classes at
    ``score_thresh = 0`` this is a top-k and an NMS of about a thousand boxes instead of a sort
    and an NMS of 80000; when the first block does not suffice (e.g. every RoI on one object,
    one survivor per class), the cost is the plain one plus that of the first block.

    Returns:
        (Tensor[D, 4], Tensor[D], Tensor[D] int64): clipped boxes, scores and labels ``1..C``,
        by decreasing score, ``D <= count``.
    """
    first = max(4 * count, 1000)
    if scores.shape[0] > first:
        cut = torch.topk(scores, first).values[-1]
        blocks = [scores >= cut, scores < cut]  # NaN never got here (score > score_thresh)
    else:
        blocks = [torch.ones_like(scores, dtype=torch.bool)]
    boxes = all_boxes.new_zeros(0, 4)
    kept_scores, kept_idx = scores[:0], flat[:0]
    for in_block in blocks:
        block = torch.nonzero(in_block).squeeze(1)  # in flat order: the NMS sorts by score
        block_boxes = clip_boxes_to_image(all_boxes[flat[block]], image_size)
        small = remove_small_boxes(block_boxes, min_size)
        block, block_boxes = block[small], block_boxes[small]
        # The survivors so far (sorted, all scoring above the block) then the block: the NMS
        # visits them in the global order (score, then flat index) and returns them in it.
        boxes = torch.cat([boxes, block_boxes])
        kept_scores = torch.cat([kept_scores, scores[block]])
        kept_idx = torch.cat([kept_idx, flat[block]])
        keep = batched_nms(boxes, kept_scores, kept_idx % num_classes, nms_thresh)[:count]
        boxes, kept_scores, kept_idx = boxes[keep], kept_scores[keep], kept_idx[keep]
        if kept_scores.numel() >= count:
            break
    return boxes, kept_scores, (kept_idx % num_classes + 1).to(torch.int64)


def postprocess_detections(
    class_logits: Tensor,
    boxes: Tensor,
    boxes_per_image: Sequence[int],
    image_sizes: Sequence[Size],
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    orig_sizes: Sequence[Size] | None = None,
    min_size: float = 1e-2,
) -> list[dict[str, Tensor]]:
    """Detections of a batch from ``(C + 1)``-way logits and decoded class-specific boxes.

    Args:
        class_logits (Tensor[R, C + 1]): logits, column 0 the background; softmax gives scores.
        boxes (Tensor[R, (C + 1) * 4]): decoded boxes per class (the background's is ignored),
            input-image pixels; ``R = sum(boxes_per_image)``, image 0's rows first.
        boxes_per_image: ``R_i`` per image.
        image_sizes: ``(h, w)`` of each input image without padding.
        score_thresh, nms_thresh, detections_per_img, min_size: see :func:`select_detections`.
        orig_sizes: ``(h, w)`` of each original image, or ``None``.

    Returns:
        One dict per image, see the module docstring.
    """
    r, c1 = class_logits.shape
    if boxes.shape != (r, c1 * 4):
        raise ValueError(
            f"boxes must have shape [R, (C + 1) * 4] = {[r, c1 * 4]} to match class_logits "
            f"{[r, c1]}, got {list(boxes.shape)}"
        )
    if sum(boxes_per_image) != r or len(boxes_per_image) != len(image_sizes):
        raise ValueError(
            f"boxes_per_image {list(boxes_per_image)} must sum to R = {r} and have one entry per "
            f"image size ({len(image_sizes)})"
        )
    if orig_sizes is not None and len(orig_sizes) != len(image_sizes):
        raise ValueError(
            f"orig_sizes must have one (h, w) per image ({len(image_sizes)}), got {len(orig_sizes)}"
        )
    scores = class_logits.softmax(dim=1)[:, 1:]
    boxes = boxes.reshape(r, c1, 4)[:, 1:]
    results = []
    for i, (s, b) in enumerate(
        zip(scores.split(list(boxes_per_image)), boxes.split(list(boxes_per_image)))
    ):
        results.append(
            select_detections(
                b,
                s,
                image_sizes[i],
                score_thresh,
                nms_thresh,
                detections_per_img,
                min_size,
                None if orig_sizes is None else orig_sizes[i],
            )
        )
    return results
