"""The evaluation protocol: ``reset() / process(outputs, targets) / summarize() -> dict``.

An evaluator sees the model's eval-mode outputs batch by batch (:meth:`Evaluator.process`) and
reduces them to named numbers at the end (:meth:`Evaluator.summarize`). In a distributed run each
process sees its share of the data; ``summarize`` combines the shares, so every process returns
the numbers of the whole set. Two ways to combine, by what a metric needs:

- counts that add up (accuracy, a confusion matrix for mIoU): sum them over the processes
  (:func:`torchdcn.engine.distributed.all_reduce_sum`), as :class:`AccuracyEvaluator` does;
- metrics over all predictions at once (COCO AP ranks every detection of the set): gather what
  each process kept (:func:`torchdcn.engine.distributed.all_gather_object`) and compute on the
  union.

:func:`torchdcn.engine.evaluate.evaluate` runs a model over a data set with an evaluator.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from . import distributed


@runtime_checkable
class Evaluator(Protocol):
    """What :func:`~torchdcn.engine.evaluate.evaluate` and the trainer call, in this order."""

    def reset(self) -> None:
        """Forget everything processed (called before each evaluation)."""
        ...

    def process(self, outputs: Any, targets: Any) -> None:
        """Take one batch: the model's eval-mode ``outputs`` and the batch's ``targets``."""
        ...

    def summarize(self) -> dict[str, float]:
        """The metrics of everything processed on every process: ``{name: value}``."""
        ...


class AccuracyEvaluator:
    """Top-k accuracy of a classifier, in percent.

    ``process(logits [B, classes], labels [B])``; ``summarize()`` returns ``{"accuracy": top-1}``
    and ``{"top5": ...}`` etc. for every other ``k`` of ``topk``. Counts are summed over the
    processes, so every process returns the same numbers. An empty set gives 0.

    Args:
        topk: the ``k`` to report; 1 is reported as ``"accuracy"``.
    """

    def __init__(self, topk: tuple[int, ...] = (1,)) -> None:
        if not topk or any(not isinstance(k, int) or k < 1 for k in topk):
            raise ValueError(f"topk must be a non-empty tuple of integers >= 1, got {topk!r}")
        self.topk = tuple(topk)
        self.reset()

    def reset(self) -> None:
        # float64 counts (exact up to 2**53 samples), kept on the outputs' device: no host sync
        # per batch
        self._correct: Tensor | None = None
        self._total = 0

    def process(self, outputs: Tensor, targets: Tensor) -> None:
        if not isinstance(outputs, Tensor) or outputs.dim() != 2:
            got = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
            raise ValueError(f"outputs must be logits [B, classes], got {got}")
        if not isinstance(targets, Tensor) or targets.shape != outputs.shape[:1]:
            got = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise ValueError(f"targets must be labels [B] = [{len(outputs)}], got {got}")
        if max(self.topk) == 1:  # argmax: what evaluate_accuracy always computed
            hits = (outputs.argmax(1) == targets).sum().reshape(1)
        else:
            k = min(max(self.topk), outputs.shape[1])
            top = outputs.topk(k, dim=1).indices == targets[:, None]  # [B, k]
            hits = torch.stack([top[:, : min(kk, k)].any(1).sum() for kk in self.topk])
        hits = hits.to(torch.float64)
        self._correct = hits if self._correct is None else self._correct + hits
        self._total += len(targets)

    def summarize(self) -> dict[str, float]:
        device = "cuda" if distributed.backend_needs_cuda() else "cpu"
        correct = self._correct if self._correct is not None else torch.zeros(len(self.topk))
        counts = torch.cat(
            [
                correct.to(device, torch.float64),
                torch.tensor([1.0 * self._total], dtype=torch.float64, device=device),
            ]
        )
        counts = distributed.all_reduce_sum(counts).cpu()
        total = max(1.0, counts[-1].item())
        return {
            ("accuracy" if k == 1 else f"top{k}"): 100.0 * counts[i].item() / total
            for i, k in enumerate(self.topk)
        }
