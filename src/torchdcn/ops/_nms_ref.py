"""Reference non-maximum suppression: the definition, written to be read (and to check kernels).

Greedy NMS visits the boxes from the highest score down (equal scores: lower index first) and
keeps a box unless a box already kept, of the same category, overlaps it with
``IoU > iou_threshold``. One step per box, each a vectorised IoU of that box against the boxes
after it: O(N) memory, O(N * kept) work, and one host synchronisation per box, which is why it is
the reference and not the route for large inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .boxes import pairwise_iou


def nms_reference(
    boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float
) -> Tensor:
    """Indices of the boxes kept, by decreasing score.

    Args:
        boxes (Tensor[N, 4]): floating-point boxes ``(x1, y1, x2, y2)``.
        scores (Tensor[N]): floating-point scores (NaN sorts above every number, as in
            :func:`torch.sort`).
        idxs (Tensor[N] or None): integer category of each box; boxes of different categories
            never suppress each other. None: one category.
        iou_threshold (float): a box is suppressed when its IoU with a kept box is greater.

    Returns:
        Tensor[K] (int64): indices into ``boxes``.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    category = None if idxs is None else idxs[order]
    n = boxes.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    kept = []
    for i in range(n):
        if suppressed[i]:
            continue
        kept.append(i)
        iou = pairwise_iou(boxes[i : i + 1], boxes[i + 1 :])[0]
        # compare the IoU (rounded in the boxes' dtype) with the threshold as a float64 number
        over = iou.double() > iou_threshold
        if category is not None:
            over &= category[i + 1 :] == category[i]
        suppressed[i + 1 :] |= over
    return order[torch.tensor(kept, dtype=torch.int64, device=boxes.device)]
