"""Mean intersection over union of semantic segmentation, from a confusion matrix.

The evaluator counts, over every labelled pixel of the set, how often true class ``t`` was
predicted as ``p``: ``confusion[t, p]`` (``K x K`` for ``K = C + 1`` labels, the background
included). Pixels labelled ``ignore_index`` (255) are not counted. Then, per class ``k``,

    IoU_k = confusion[k, k] / (row_k + column_k - confusion[k, k])

(true positives over true positives + false negatives + false positives), and mIoU is the mean of
IoU_k over the classes **present**: those with at least one labelled pixel (``row_k > 0``). A class
never present but predicted somewhere has IoU 0 in the table and is left out of the mean (the
usual convention leaves out only classes absent from both; here a class a small test set does not
contain never counts, so mIoU over a few images scores the classes that are there). Pixel
accuracy is ``trace / total``.

The matrix is a sum, so under DDP every process adds its share with one all-reduce
(:func:`~torchdcn.engine.distributed.all_reduce_sum`) and every process returns the numbers of
the whole set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from . import distributed


def confusion_matrix(
    predictions: Tensor, labels: Tensor, num_labels: int, ignore_index: int = 255
) -> Tensor:
    """``[num_labels, num_labels]`` int64 counts, ``[t, p]`` = pixels of true label ``t``
    predicted ``p``.

    Args:
        predictions: int Tensor[...] of predicted labels ``0..num_labels - 1``.
        labels: int Tensor of the same shape: true labels ``0..num_labels - 1`` or
            ``ignore_index`` (not counted).
        num_labels: ``K = C + 1``.
        ignore_index: the label of pixels to skip.
    """
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions and labels must have one shape, got {tuple(predictions.shape)} and "
            f"{tuple(labels.shape)}"
        )
    keep = labels != ignore_index
    truth, guess = labels[keep].long(), predictions[keep].long()
    if truth.numel() and (int(truth.min()) < 0 or int(truth.max()) >= num_labels):
        raise ValueError(
            f"labels must lie in 0..{num_labels - 1} or be {ignore_index}, got values "
            f"{int(truth.min())}..{int(truth.max())}"
        )
    if guess.numel() and (int(guess.min()) < 0 or int(guess.max()) >= num_labels):
        raise ValueError(f"predictions must lie in 0..{num_labels - 1}")
    flat = torch.bincount(truth * num_labels + guess, minlength=num_labels * num_labels)
    return flat.view(num_labels, num_labels)


def scores_from_confusion(confusion: Tensor) -> dict[str, Any]:
    """``{"iou": [K] float (nan where the class is absent and never predicted), "present": [K]
    bool, "miou", "pixel_accuracy", "mean_accuracy"}`` of a ``[K, K]`` confusion matrix (see
    the module docstring; means over the present classes, 0 when none is)."""
    c = confusion.to(torch.float64)
    tp, rows, cols = c.diagonal(), c.sum(1), c.sum(0)
    union = rows + cols - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    present = rows > 0
    total = c.sum()
    n_present = int(present.sum())
    return {
        "iou": iou,
        "present": present,
        "miou": float(iou[present].mean()) if n_present else 0.0,
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        "mean_accuracy": float((tp[present] / rows[present]).mean()) if n_present else 0.0,
    }


class MIoUEvaluator:
    """mIoU, per-class IoU, pixel accuracy of a segmenter (:class:`~.evaluator.Evaluator`).

    ``process(outputs, targets)``: ``outputs`` the eval-mode scores ``[N, K, H, W]`` of
    :class:`~torchdcn.models.segmentation.DeepLab` (image ``i`` in ``[i, :, :H_i, :W_i]``) or
    predicted labels ``[N, H, W]``; ``targets`` a list of dicts with ``"semantic"`` ``[H_i,
    W_i]`` (and, as the data sets give it, ``"size"`` ``(H_i, W_i)``: the size of image ``i``
    as the model saw it), or a Tensor ``[N, H, W]``.

    Label maps must be at the resolution of the images the model was given. A label map smaller
    than the outputs is read as batch padding only when that is what it can be: its target
    records ``"size"`` equal to the map's shape (then the outputs may be padded further, e.g. to
    a multiple of the stride), or, without ``"size"``, the batch's largest label height and
    width are the outputs' (DeepLab's outputs end at the largest image). Anything else (a map at
    half resolution, a map that does not match its ``"size"``) is a ``ValueError`` naming
    ``targets[i]``.

    ``summarize()`` returns ``{"miou", "pixel_accuracy",
    "mean_accuracy"}`` (fractions in [0, 1]) and ``"iou/<class name>"`` per present class;
    :attr:`table` is the per-class table as text, :attr:`confusion` the summed matrix.

    Args:
        num_classes: C object classes (labels 1..C; 0 the background).
        class_names: the C names of labels 1..C (default ``class1``...).
        ignore_index: label of pixels to skip.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int = 255,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names must name the {num_classes} classes, got {len(class_names)} names"
            )
        self.num_labels = num_classes + 1
        names = list(class_names) if class_names is not None else None
        self.names = ["background"] + (names or [f"class{k}" for k in range(1, self.num_labels)])
        self.ignore_index = ignore_index
        self.table = ""
        self.confusion = torch.zeros(self.num_labels, self.num_labels, dtype=torch.int64)
        self.reset()

    def reset(self) -> None:
        self._counts: Tensor | None = None

    def process(self, outputs: Any, targets: Any) -> None:
        if not isinstance(outputs, Tensor) or outputs.dim() not in (3, 4):
            got = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
            raise ValueError(f"outputs must be scores [N, K, H, W] or labels [N, H, W], got {got}")
        if outputs.dim() == 4:
            if outputs.shape[1] != self.num_labels:
                raise ValueError(
                    f"outputs must have K = {self.num_labels} score maps, got {outputs.shape[1]}"
                )
            outputs = outputs.argmax(1)
        if isinstance(targets, Tensor):
            labels = list(targets)
        else:
            labels = [t["semantic"] if isinstance(t, dict) else t for t in targets]
        if len(labels) != len(outputs):
            raise ValueError(f"targets must hold {len(outputs)} label maps, got {len(labels)}")
        self._check_sizes(outputs.shape[-2:], labels, targets)
        for pred, label in zip(outputs, labels):
            h, w = label.shape[-2:]
            counts = confusion_matrix(
                pred[:h, :w], label.to(pred.device), self.num_labels, self.ignore_index
            )
            self._counts = counts if self._counts is None else self._counts + counts

    @staticmethod
    def _check_sizes(out_size: Sequence[int], labels: list[Tensor], targets: Any) -> None:
        """``ValueError`` unless every label map is the outputs' size or smaller by batch padding
        (class docstring)."""
        out_h, out_w = int(out_size[0]), int(out_size[1])
        unexplained = []
        for i, label in enumerate(labels):
            if not isinstance(label, Tensor) or label.dim() != 2:
                got = tuple(label.shape) if isinstance(label, Tensor) else type(label).__name__
                raise ValueError(f"targets[{i}]['semantic'] must be a Tensor[H, W], got {got}")
            h, w = (int(v) for v in label.shape)
            if h > out_h or w > out_w:
                raise ValueError(
                    f"targets[{i}]['semantic'] is {h}x{w} but the outputs are {out_h}x{out_w}: "
                    f"label maps must be at the resolution of the images the model was given"
                )
            target = targets[i] if not isinstance(targets, Tensor) else None
            size = target.get("size") if isinstance(target, dict) else None
            if size is not None:
                size = tuple(int(v) for v in size)
                if size != (h, w):
                    raise ValueError(
                        f"targets[{i}]['semantic'] is {h}x{w} but targets[{i}]['size'] (the image "
                        f"the model was given) is {size[0]}x{size[1]}: label maps must be at the "
                        f"resolution of their images"
                    )
            elif (h, w) != (out_h, out_w):
                unexplained.append(i)
        if unexplained:
            largest = (max(lab.shape[0] for lab in labels), max(lab.shape[1] for lab in labels))
            if largest != (out_h, out_w):
                i = unexplained[0]
                h, w = labels[i].shape
                raise ValueError(
                    f"targets[{i}]['semantic'] is {h}x{w} but the outputs are {out_h}x{out_w}, "
                    f"and no label map of the batch is {out_h} high and {out_w} wide (the outputs "
                    f"of a padded batch end at its largest image): label maps must be at the "
                    f"resolution of the images the model was given; give targets[i]['size'] "
                    f"(h, w) where the outputs are padded further"
                )

    def summarize(self) -> dict[str, float]:
        device = "cuda" if distributed.backend_needs_cuda() else "cpu"
        counts = self._counts
        if counts is None:
            counts = torch.zeros(self.num_labels, self.num_labels, dtype=torch.int64)
        counts = distributed.all_reduce_sum(counts.to(device, torch.int64).clone()).cpu()
        self.confusion = counts
        scores = scores_from_confusion(counts)
        self.table = iou_table(scores, self.names)
        out = {k: scores[k] for k in ("miou", "pixel_accuracy", "mean_accuracy")}
        for k, name in enumerate(self.names):
            if scores["present"][k]:
                out[f"iou/{name}"] = float(scores["iou"][k])
        return out


def iou_table(scores: dict[str, Any], names: Sequence[str]) -> str:
    """Per-class IoU in percent, one line per label present or predicted (``*`` marks one
    predicted but not present, left out of the mean; labels neither present nor predicted are
    counted in a last line, not listed), then mIoU and pixel accuracy."""
    width = max(10, *(len(n) for n in names))
    lines = [f"{'class':<{width}}  {'IoU %':>6}"]
    hidden = 0
    for k, name in enumerate(names):
        value = float(scores["iou"][k])
        if value != value:  # nan: neither present nor predicted
            hidden += 1
            continue
        mark = "" if scores["present"][k] else "  *"
        lines.append(f"{name:<{width}}  {100 * value:6.1f}{mark}")
    lines.append(f"{'mIoU':<{width}}  {100 * scores['miou']:6.1f}")
    lines.append(f"{'pixel acc':<{width}}  {100 * scores['pixel_accuracy']:6.1f}")
    if hidden:
        lines.append(f"({hidden} classes neither present nor predicted are not listed)")
    return "\n".join(lines)
