"""NMS on the GPU in plain PyTorch: blocks of boxes, IoU tiles, a fixed point inside each block.

This is the CUDA route (no Triton kernel: a handful of large tensor ops per block already keep a
GPU busy, and the same code runs, and is tested, on CPU). Any device and any floating dtype.

Kernel interface (shared with ``_nms_cpu``)::

    nms(boxes, scores, category, threshold) -> Tensor[K] (int64)

Arguments arrive checked: ``boxes`` ``[N, 4]`` float32 or float64, N > 0; ``scores`` ``[N]``
floating; ``category`` ``[N]`` integer or None; ``threshold`` is already rounded down to the
boxes' dtype, so ``iou > threshold`` computed in that dtype is the exact comparison with the
user's threshold. With categories, the boxes are grouped by category (each group in score
order) before the blocks are cut, and a block meets only the kept boxes of its own categories.
The result: indices kept, by decreasing score, ties by index.

How it works
============
The sorted boxes are cut into blocks of ``BLOCK`` boxes, visited in order. For a block:

1. Boxes kept in earlier blocks suppress it: their IoU tile against the block, taken in chunks of
   kept boxes so a tile stays within the workspace limit (never an N x N matrix), ``any`` over
   the kept axis.
2. Inside the block greedy NMS is the unique solution of
   ``keep[j] = alive[j] and not any(keep[i] and over[i, j] for i < j)`` (``over`` = IoU above
   the threshold, same category). Iterating that map from ``keep = alive`` fixes one more leading
   box each round at worst, and stops when nothing changes: in practice a few rounds (the length
   of the longest chain of boxes suppressing each other), ``BLOCK`` rounds in the worst case.

Work is O(N * kept) IoUs, as greedy NMS is; memory O(BLOCK * chunk).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _backend
from .boxes import pairwise_iou

BLOCK = 512


def nms(boxes: Tensor, scores: Tensor, category: Tensor | None, threshold: float) -> Tensor:
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    if category is None:
        return order[_keep_sorted(boxes.detach()[order].contiguous(), None, threshold)]
    # group the boxes by category (a stable sort keeps each category in score order), so a block
    # only meets the kept boxes of its own categories: work grows with the per-category counts
    group = torch.sort(category[order], stable=True).indices
    ranked = order[group]
    grouped = _keep_sorted(boxes.detach()[ranked].contiguous(), category[ranked], threshold)
    keep = torch.empty_like(grouped)
    keep[group] = grouped  # back to score rank
    return order[keep]


def _keep_sorted(boxes: Tensor, category: Tensor | None, threshold: float) -> Tensor:
    """Mask of the kept boxes of score-sorted ``boxes``."""
    n = boxes.shape[0]
    keep = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    # a [chunk, BLOCK] tile costs about 6 bytes per element and byte of dtype (IoU and temporaries)
    chunk = max(BLOCK, _backend.workspace_limit() // (6 * BLOCK * boxes.element_size()))
    kept = boxes.new_empty(0, dtype=torch.int64)
    upper = torch.ones(BLOCK, BLOCK, dtype=torch.bool, device=boxes.device).triu(1)
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        block = boxes[start:stop]
        block_cat = None if category is None else category[start:stop]
        alive = torch.ones(stop - start, dtype=torch.bool, device=boxes.device)
        earlier = kept
        if category is not None:  # sorted by category: skip the kept boxes of lower categories
            first = torch.searchsorted(category[kept], category[start : start + 1])
            earlier = kept[int(first) :]
        for c in range(0, earlier.shape[0], chunk):
            k = earlier[c : c + chunk]
            over = _over(boxes[k], block, threshold, category, k, block_cat)
            alive &= ~over.any(0)
        m = stop - start
        over = _over(block, block, threshold, block_cat, None, block_cat)
        over &= upper[:m, :m] & alive[:, None]
        current = alive
        while True:
            nxt = alive & ~(over & current[:, None]).any(0)
            if torch.equal(nxt, current):
                break
            current = nxt
        keep[start:stop] = current
        kept = torch.cat([kept, current.nonzero()[:, 0] + start])
    return keep


def _over(a: Tensor, b: Tensor, threshold: float, cat_a, k, cat_b) -> Tensor:
    """``[len(a), len(b)]`` bool: IoU above ``threshold`` and same category. ``cat_a`` is indexed
    by ``k`` when given (the kept boxes are gathered by index)."""
    over = pairwise_iou(a, b) > threshold
    if cat_b is not None:
        ca = cat_a if k is None else cat_a[k]
        over &= ca[:, None] == cat_b[None, :]
    return over
