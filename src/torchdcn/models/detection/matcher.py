"""Matching predictions (anchors, proposals) to ground-truth boxes by IoU.

Each prediction takes the ground truth it overlaps most (ties: the lowest ground-truth index).
It is a match when that IoU is ``>= high_threshold``, a negative (:data:`BELOW_LOW_THRESHOLD`)
when it is ``< low_threshold`` and ignored (:data:`BETWEEN_THRESHOLDS`) in between.

``allow_low_quality_matches`` (Faster R-CNN's RPN rule): a ground truth whose best IoU is under
``high_threshold`` would otherwise get no prediction at all, so every prediction that reaches
that ground truth's best IoU (all of them when several tie) becomes a match too, with the ground
truth it overlaps most. A ground truth that overlaps nothing (best IoU 0) adds no match: an IoU of
0 is no evidence, and matching every non-overlapping prediction to it would be absurd.

IoUs that are NaN (zero-area boxes) count as 0.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

BELOW_LOW_THRESHOLD = -1
"""Match value of a negative prediction: its best IoU is below ``low_threshold``."""
BETWEEN_THRESHOLDS = -2
"""Match value of an ignored prediction: ``low_threshold <= IoU < high_threshold``."""


class Matcher:
    """Assign each prediction a ground-truth index, or a negative / ignore code.

    Args:
        high_threshold (float): IoU at or above which a prediction matches, in ``[0, 1]``.
        low_threshold (float): IoU below which it is negative, ``<= high_threshold``.
        allow_low_quality_matches (bool): also match each ground truth's best predictions (see
            the module docstring).

    Example:
        >>> iou = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.6, 0.0]])
        >>> Matcher(0.7, 0.3)(iou)
        tensor([ 0, -2, -1])
        >>> Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
        tensor([ 0,  1, -1])
    """

    BELOW_LOW_THRESHOLD = BELOW_LOW_THRESHOLD
    BETWEEN_THRESHOLDS = BETWEEN_THRESHOLDS

    def __init__(
        self,
        high_threshold: float,
        low_threshold: float,
        allow_low_quality_matches: bool = False,
    ) -> None:
        for name, value in (("high_threshold", high_threshold), ("low_threshold", low_threshold)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if low_threshold > high_threshold:
            raise ValueError(
                f"low_threshold must be <= high_threshold, got low_threshold={low_threshold} "
                f"and high_threshold={high_threshold}"
            )
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(self, iou: Tensor) -> Tensor:
        """Match predictions to ground truth.

        Args:
            iou (Tensor[M_gt, N_pred]): ``iou[g, p]`` = IoU of ground truth ``g`` and
                prediction ``p`` (:func:`torchdcn.ops.box_iou` of ground truth and predictions).

        Returns:
            Tensor[N_pred] (int64): ground-truth index in ``[0, M_gt)``, or
            :data:`BELOW_LOW_THRESHOLD` (-1), or :data:`BETWEEN_THRESHOLDS` (-2). With
            ``M_gt = 0`` every prediction is -1.
        """
        if not isinstance(iou, Tensor) or iou.dim() != 2:
            got = tuple(iou.shape) if isinstance(iou, Tensor) else type(iou).__name__
            raise ValueError(f"iou must be a Tensor[M_gt, N_pred], got {got}")
        if not iou.is_floating_point():
            raise TypeError(f"iou must be floating point, got {iou.dtype}")
        num_gt, num_pred = iou.shape
        if num_gt == 0:
            return torch.full(
                (num_pred,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device
            )
        if num_pred == 0:
            return torch.empty(0, dtype=torch.int64, device=iou.device)
        iou = torch.nan_to_num(iou, nan=0.0)
        best_iou, _ = iou.max(dim=0)
        best_gt = iou.argmax(dim=0)  # documented: the first maximal index on ties
        matches = best_gt.clone()
        matches[best_iou < self.high_threshold] = BETWEEN_THRESHOLDS
        matches[best_iou < self.low_threshold] = BELOW_LOW_THRESHOLD
        if self.allow_low_quality_matches:
            best_per_gt, _ = iou.max(dim=1)
            is_best = (iou == best_per_gt[:, None]) & (best_per_gt[:, None] > 0)
            low_quality = is_best.any(dim=0)
            matches[low_quality] = best_gt[low_quality]
        return matches

    def __repr__(self) -> str:
        return (
            f"Matcher(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )
