"""Detections of several detectors side by side: one row per model, one column per image.

Each panel shows the image, its ground-truth boxes (dashed, :data:`GT_COLOR`) and the model's
detections scoring at least ``score_thresh`` (solid), each with its class name and score above
it. A detection is drawn in :data:`HIT_COLOR` when it matches a ground-truth box of the same
class at IoU >= ``iou_thresh`` (each ground-truth box matched at most once, highest scores
first, as COCO's matching does), else in :data:`MISS_COLOR`; the panel title counts the
matches, the false detections and the missed ground-truth boxes. Drawn with matplotlib's Agg
backend, like :mod:`torchdcn.analysis.figures`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..ops import box_iou

#: colour of the ground-truth boxes (dashed)
GT_COLOR = "#00c8ff"
#: colour of a detection that matches a ground-truth box of its class
HIT_COLOR = "#40ff40"
#: colour of a detection that matches none (wrong class, bad box or nothing there)
MISS_COLOR = "#ff2020"


def match_detections(
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    iou_thresh: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Greedy matching of detections to ground truth, highest score first.

    Args:
        boxes, labels, scores: ``Tensor[D, 4]`` ``(x1, y1, x2, y2)``, ``Tensor[D]``, ``Tensor[D]``.
        gt_boxes, gt_labels: ``Tensor[G, 4]``, ``Tensor[G]``.
        iou_thresh: smallest IoU of a match.

    Returns:
        ``(hit Tensor[D] bool, found Tensor[G] bool)``: which detections matched a ground-truth
        box of their class (not matched before), and which ground-truth boxes were matched.
    """
    if boxes.shape[0] != labels.shape[0] or boxes.shape[0] != scores.shape[0]:
        raise ValueError(
            f"boxes, labels and scores must have one row per detection, got {list(boxes.shape)}, "
            f"{list(labels.shape)} and {list(scores.shape)}"
        )
    hit = torch.zeros(len(boxes), dtype=torch.bool)
    found = torch.zeros(len(gt_boxes), dtype=torch.bool)
    if not len(boxes) or not len(gt_boxes):
        return hit, found
    iou = box_iou(boxes.float().cpu(), gt_boxes.float().cpu())
    same = labels.cpu()[:, None] == gt_labels.cpu()[None, :]
    for d in torch.argsort(scores.cpu(), descending=True).tolist():
        candidates = torch.where(same[d] & ~found, iou[d], torch.full_like(iou[d], -1.0))
        best = int(candidates.argmax())
        if candidates[best] >= iou_thresh:
            hit[d], found[best] = True, True
    return hit, found


def _box(ax, box: Sequence[float], color: str, style: str, width: float) -> None:
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = box
    ax.add_patch(
        Rectangle(
            (x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=color,
            linestyle=style, linewidth=width,
        )
    )  # fmt: skip


def _kept(detections: Mapping[str, Tensor], score_thresh: float) -> tuple[Tensor, Tensor, Tensor]:
    boxes = detections["boxes"].detach().float().cpu().reshape(-1, 4)
    labels = detections["labels"].detach().cpu().reshape(-1)
    scores = detections["scores"].detach().float().cpu().reshape(-1)
    keep = scores >= score_thresh
    return boxes[keep], labels[keep], scores[keep]


def draw_detection_panels(
    images: Sequence[Tensor],
    detections: Mapping[str, Sequence[Mapping[str, Tensor]]],
    path: str | Path,
    targets: Sequence[Mapping[str, Tensor]] | None = None,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.5,
    iou_thresh: float = 0.5,
    titles: Sequence[str] | None = None,
    suptitle: str = "",
    text: bool = True,
) -> Path:
    """Draw every model's detections on the same images to a PNG at ``path``; returns the path.

    Args:
        images: ``N`` images ``Tensor[C, H, W]`` (1 or 3 channels) or ``Tensor[H, W]``, values in
            [0, 1].
        detections: ``{model name: N dicts}`` (one row per model, in order) with ``"boxes"``
            ``Tensor[D, 4]`` ``(x1, y1, x2, y2)`` pixels, ``"labels"`` ``Tensor[D]`` and
            ``"scores"`` ``Tensor[D]``: what the detectors return.
        targets: ``N`` dicts with ``"boxes"`` ``Tensor[G, 4]`` and ``"labels"`` ``Tensor[G]``
            (the ground truth), or ``None`` (no ground truth, every detection in
            :data:`HIT_COLOR`).
        class_names: name of label ``l`` at ``class_names[l - 1]`` (default: the label).
        score_thresh: draw the detections scoring at least this.
        iou_thresh: smallest IoU of a match with a ground-truth box.
        titles: a caption per image (column), shown above the first row's panels.
        suptitle: text above the figure.
        text: write ``"name score"`` above every detection.
    """
    if not images:
        raise ValueError("images must hold at least one image, got none")
    if not detections:
        raise ValueError("detections must hold at least one model, got none")
    for name, row in detections.items():
        if len(row) != len(images):
            raise ValueError(
                f"detections[{name!r}] must have one dict per image ({len(images)}), got {len(row)}"
            )
    if targets is not None and len(targets) != len(images):
        raise ValueError(
            f"targets must have one dict per image ({len(images)}), got {len(targets)}"
        )
    if not 0 <= score_thresh <= 1:
        raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import _show_image

    n_rows, n_cols = len(detections), len(images)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(2.6 * n_cols, 2.9 * n_rows), squeeze=False, layout="constrained"
    )
    for r, (name, row) in enumerate(detections.items()):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.set_axis_off()
            _show_image(ax, image)
            h, w = image.shape[-2:]
            boxes, labels, scores = _kept(row[c], score_thresh)
            gt_boxes = gt_labels = None
            if targets is not None:
                gt_boxes = targets[c]["boxes"].detach().float().cpu().reshape(-1, 4)
                gt_labels = targets[c]["labels"].detach().cpu().reshape(-1)
                hit, found = match_detections(
                    boxes, labels, scores, gt_boxes, gt_labels, iou_thresh
                )
                for box in gt_boxes.tolist():
                    _box(ax, box, GT_COLOR, "--", 1.0)
            else:
                hit, found = torch.ones(len(boxes), dtype=torch.bool), None
            for box, label, score, ok in zip(boxes.tolist(), labels.tolist(), scores.tolist(), hit):
                color = HIT_COLOR if ok else MISS_COLOR
                _box(ax, box, color, "-", 1.3)
                if text:
                    label_name = class_names[label - 1] if class_names else str(label)
                    ax.text(
                        box[0] - 0.5, box[1] - 1.0, f"{label_name} {score:.2f}", color=color,
                        fontsize=6, va="bottom", ha="left", clip_on=True,
                    )  # fmt: skip
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            title = f"{name}: "
            if found is not None:
                title += f"{int(hit.sum())} hit, {int((~hit).sum())} false, "
                title += f"{int((~found).sum())} missed"
            else:
                title += f"{len(boxes)} detections"
            if titles is not None and r == 0:
                title = f"{titles[c]}\n{title}"
            ax.set_title(title, fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
