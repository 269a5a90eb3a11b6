"""Online hard example mining (OHEM) as the original R-FCN trains with it.

Instead of sampling 128 RoIs per image at a fixed foreground fraction, every proposal is labelled
(foreground at IoU >= 0.5 with a ground truth, else background; :class:`KeepAllSampler`), the
head runs on all of them (cheap in R-FCN: no per-RoI layers), the loss of each RoI (classification
+ box regression) is computed without gradient (:func:`per_roi_losses`), non-maximum suppression
at IoU 0.7 with the losses as scores removes near-duplicate RoIs, and the ``B = 128`` RoIs of
highest loss per image are the ones the loss is averaged over and back-propagated through
(:func:`select_hard_examples`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ...ops import nms
from .losses import smooth_l1_loss


class KeepAllSampler:
    """A sampler that keeps every labelled RoI (the first stage of OHEM).

    Same call as :class:`~.sampler.BalancedSampler`: ``labels`` one ``[N_i]`` int64 tensor per
    image (``>= 1`` foreground, 0 background, -1 ignored) -> ``(pos_masks, neg_masks)``, one bool
    tensor ``[N_i]`` each. ``generator`` is accepted and unused.
    """

    def __call__(
        self, labels: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        return [lab >= 1 for lab in labels], [lab == 0 for lab in labels]

    def __repr__(self) -> str:
        return "KeepAllSampler()"


def per_roi_losses(
    class_logits: Tensor,
    box_deltas: Tensor,
    labels: Tensor,
    reg_targets: Tensor,
    beta: float = 1.0,
) -> Tensor:
    """The loss of every RoI: cross-entropy plus, for a foreground RoI, the smooth-L1 of its true
    class's deltas summed over the 4 coordinates (the terms the head's loss sums).

    Shape:
        ``class_logits [R, C + 1]``, ``box_deltas [R, 4 (C + 1)]``, ``labels [R]`` int64 (0 =
        background), ``reg_targets [R, 4]`` -> ``[R]``.
    """
    r = class_logits.shape[0]
    if box_deltas.shape[0] != r or labels.shape != (r,) or reg_targets.shape != (r, 4):
        raise ValueError(
            f"need class_logits [R, C+1], box_deltas [R, 4(C+1)], labels [R], reg_targets [R, 4]; "
            f"got {list(class_logits.shape)}, {list(box_deltas.shape)}, {list(labels.shape)}, "
            f"{list(reg_targets.shape)}"
        )
    loss = F.cross_entropy(class_logits, labels, reduction="none")
    deltas = box_deltas.reshape(r, -1, 4)[torch.arange(r, device=labels.device), labels]
    box = smooth_l1_loss(deltas, reg_targets, beta=beta, reduction="none").sum(dim=1)
    return loss + torch.where(labels > 0, box, torch.zeros_like(box))


def select_hard_examples(
    losses: Tensor, boxes: Tensor, batch_size: int, nms_thresh: float | None = 0.7
) -> Tensor:
    """Indices of the hardest RoIs of one image: NMS at ``nms_thresh`` with the losses as scores
    (``None``: no NMS), then the ``batch_size`` of highest loss, by decreasing loss.

    Shape:
        ``losses [R]``, ``boxes [R, 4]`` -> int64 ``[min(batch_size, R')]`` (``R'`` survivors).
    """
    if losses.dim() != 1 or boxes.shape != (losses.shape[0], 4):
        raise ValueError(
            f"losses must be [R] and boxes [R, 4], got {list(losses.shape)} and {list(boxes.shape)}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    losses = losses.detach().float()
    if nms_thresh is None:
        order = torch.argsort(losses, descending=True, stable=True)
    else:
        order = nms(boxes.detach().float(), losses, float(nms_thresh))
    return order[:batch_size]
