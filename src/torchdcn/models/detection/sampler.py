"""Balanced sampling of positive and negative training examples (anchors or RoIs) per image.

An image has a few positives and thousands of negatives; the losses are computed on a fixed-size
random sample with at most a set fraction of positives: the RPN samples 256 anchors at 1:1
(``positive_fraction = 0.5``), the Fast R-CNN head 512 RoIs at 1:3 (``0.25``). When there are too
few positives, negatives fill the sample; when there are too few of both, the sample is smaller.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor


class BalancedSampler:
    """Pick at most ``batch_size_per_image`` examples per image, at most
    ``int(batch_size_per_image * positive_fraction)`` of them positive.

    Args:
        batch_size_per_image (int): examples sampled per image, ``>= 1``.
        positive_fraction (float): largest share of positives, in ``[0, 1]``.

    Example:
        >>> labels = [torch.tensor([1, 0, 0, 0, -1, 2])]
        >>> pos, neg = BalancedSampler(4, 0.5)(labels, torch.Generator().manual_seed(0))
        >>> int(pos[0].sum()), int(neg[0].sum())
        (2, 2)
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        if isinstance(batch_size_per_image, bool) or not isinstance(batch_size_per_image, int):
            raise TypeError(f"batch_size_per_image must be an int, got {batch_size_per_image!r}")
        if batch_size_per_image < 1:
            raise ValueError(f"batch_size_per_image must be >= 1, got {batch_size_per_image}")
        if isinstance(positive_fraction, bool) or not isinstance(positive_fraction, numbers.Real):
            raise TypeError(f"positive_fraction must be a number, got {positive_fraction!r}")
        if not 0.0 <= float(positive_fraction) <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = float(positive_fraction)

    def __call__(
        self, labels: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Sample each image's examples.

        Args:
            labels (list[Tensor[N_i]]): per image, integer label of each example: ``>= 1``
                positive (a class label, or 1 for objectness), ``0`` negative, ``-1`` ignored
                (never sampled).
            generator (torch.Generator, optional): source of randomness; the same seeded
                generator gives the same sample. ``None`` uses the global generator.

        Returns:
            (list[BoolTensor[N_i]], list[BoolTensor[N_i]]): positive and negative masks per
            image, disjoint, on each label tensor's device.
        """
        if isinstance(labels, Tensor) or not isinstance(labels, Sequence):
            raise TypeError(f"labels must be a list of Tensor[N_i], got {type(labels).__name__}")
        pos_masks, neg_masks = [], []
        for i, lab in enumerate(labels):
            if not isinstance(lab, Tensor) or lab.dim() != 1:
                got = tuple(lab.shape) if isinstance(lab, Tensor) else type(lab).__name__
                raise ValueError(f"labels[{i}] must be a 1-D Tensor[N_i], got {got}")
            if lab.is_floating_point() or lab.is_complex():
                raise TypeError(f"labels[{i}] must be an integer tensor, got {lab.dtype}")
            positive = torch.where(lab >= 1)[0]
            negative = torch.where(lab == 0)[0]
            num_pos = min(int(self.batch_size_per_image * self.positive_fraction), positive.numel())
            num_neg = min(self.batch_size_per_image - num_pos, negative.numel())
            pos_masks.append(_mask(positive, num_pos, lab, generator))
            neg_masks.append(_mask(negative, num_neg, lab, generator))
        return pos_masks, neg_masks

    def __repr__(self) -> str:
        return (
            f"BalancedSampler(batch_size_per_image={self.batch_size_per_image}, "
            f"positive_fraction={self.positive_fraction})"
        )


def _mask(
    candidates: Tensor, count: int, like: Tensor, generator: torch.Generator | None
) -> Tensor:
    """BoolTensor like ``like`` with ``count`` of ``candidates`` drawn without replacement."""
    device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(candidates.numel(), generator=generator, device=device)[:count]
    mask = torch.zeros_like(like, dtype=torch.bool)
    mask[candidates[order.to(candidates.device)]] = True
    return mask
