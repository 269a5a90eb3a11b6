"""One detection's deformed RoI bins drawn on its image (v1 paper Fig. 7), for any detector of
:mod:`torchdcn.models.detection` with deformable RoI pooling (Faster R-CNN / Mask R-CNN:
(modulated) deformable RoI pooling scored through the box head; R-FCN: deformable PS RoI pooling,
class-specific offsets, scored by the class's vote). Used by ``torchdcn analyze`` and the
detection demo; the bins themselves come from :func:`~torchdcn.analysis.roi_bins.deformed_bins`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from ..nn import DeformPSRoIPool
from ..ops import box_iou
from .figures import Overlay
from .probe import detector_forward, evaluating
from .roi_bins import DEFORMABLE_ROI_MODULES, deformed_bins, offset_group, record_roi_inputs


def _pick(dets: dict, gt_boxes: Tensor, gt_labels: Tensor | None, prefer: str, name):
    """``(box [1, 4], label, caption)`` of the detection to draw, or None."""
    largest = None
    if len(gt_boxes):
        areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
        largest = int(areas.argmax())
    if len(dets["boxes"]):
        pick, which = 0, "top detection"  # detections come sorted by score
        if prefer == "largest" and largest is not None:
            boxes = gt_boxes[largest : largest + 1].to(dets["boxes"])
            overlap = box_iou(dets["boxes"], boxes)[:, 0] >= 0.5
            if overlap.any():
                pick, which = int(overlap.nonzero()[0]), "detection of the largest object"
            else:
                which = "top detection (elsewhere)"
        label = int(dets["labels"][pick])
        caption = f"{which}\n{name(label)}, score {float(dets['scores'][pick]):.2f}"
        return dets["boxes"][pick : pick + 1], label, caption
    if largest is None:
        return None
    label = 1 if gt_labels is None else int(gt_labels[largest])
    return (
        gt_boxes[largest : largest + 1],
        label,
        f"no detection\nlargest ground truth, {name(label)}",
    )


def roi_bins_overlay(
    model: nn.Module,
    image: Tensor,
    title: str,
    gt_boxes: Tensor,
    gt_labels: Tensor | None = None,
    prefer: Literal["top", "largest"] = "top",
    label_text: Callable[[int], str] = lambda label: f"label {label}",
) -> Overlay | None:
    """The deformed RoI bins of one detection of ``model`` on ``image`` ``[3, H, W]``.

    Which detection: ``prefer="top"`` the highest-scoring one; ``"largest"`` the highest-scoring
    one that overlaps the largest box of ``gt_boxes`` ``[M, 4]`` at IoU >= 0.5 (else the top
    one). Without detections, the largest ground-truth box, scored for its label in
    ``gt_labels`` ``[M]`` (class 1 if not given). Dots: bin centres weighted by
    ``|d class score / d offset|``; R-FCN's PS pooling draws the class's offsets and weights by
    the class's voted score. ``label_text`` names a label in the caption. ``None``: no
    deformable RoI pooling, or nothing to draw.
    """
    modules = {n: m for n, m in model.named_modules() if isinstance(m, DEFORMABLE_ROI_MODULES)}
    if not modules:
        return None
    with torch.no_grad(), evaluating(model), record_roi_inputs(model) as rec:
        dets = detector_forward(model, image[None])[0]
    if not rec:
        return None
    picked = _pick(dets, gt_boxes, gt_labels, prefer, label_text)
    if picked is None:
        return None
    box, label, caption = picked
    name = next(iter(rec))  # the first called: R-FCN's class-score pooling
    call, module = rec[name], modules[name]
    ps_class = isinstance(module, DeformPSRoIPool) and label < module.out_channels
    heads = getattr(model, "roi_heads", None)
    score_fn = None
    if isinstance(module, DeformPSRoIPool):
        if ps_class:  # the class score is the vote (mean) of the class's bins

            def score_fn(pooled: Tensor) -> Tensor:
                return pooled[:, label].mean((1, 2))

    elif heads is not None and hasattr(heads, "head") and hasattr(heads, "predictor"):

        def score_fn(pooled: Tensor) -> Tensor:
            return heads.predictor(heads.head(pooled))[0][:, label]

    group = offset_group(module, label) if ps_class else 0
    with evaluating(model):
        bins = deformed_bins(
            module, call.features, box.to(call.features), group=group, score_fn=score_fn,
            feature=call.feature,
        )  # fmt: skip
    return Overlay(
        image.cpu(),
        boxes=bins.deformed.reshape(-1, 4),
        regular_boxes=bins.regular.reshape(-1, 4),
        points=bins.centres.reshape(-1, 2),
        weights=None if bins.weights is None else bins.weights.reshape(-1),
        title=f"{title}\n{caption}",
    )
