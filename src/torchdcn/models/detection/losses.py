"""Detection losses: smooth-L1 / L1 box regression, and class-specific delta selection.

Classification uses :func:`torch.nn.functional.cross_entropy` ((C+1)-way) and
:func:`torch.nn.functional.binary_cross_entropy_with_logits` (objectness) directly.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

_REDUCTIONS = ("none", "sum", "mean")


def smooth_l1_loss(
    input: Tensor, target: Tensor, beta: float = 1.0 / 9, reduction: str = "sum"
) -> Tensor:
    """Smooth-L1 (Huber-like) loss, elementwise then reduced.

    With ``d = |input - target|``: ``0.5 * d ** 2 / beta`` where ``d < beta``, else
    ``d - 0.5 * beta``. ``beta = 0`` is the plain L1 loss ``d`` (no division by zero). The RPN of
    Detectron uses ``beta = 1/9``, the Fast R-CNN head ``beta = 1``.

    Args:
        input (Tensor[*]): predictions, floating point.
        target (Tensor[*]): targets, same shape.
        beta (float): width of the quadratic zone, ``>= 0``.
        reduction (str): ``"sum"`` (default, the detectors normalise it themselves),
            ``"mean"`` or ``"none"``.

    Returns:
        Tensor[] for ``"sum"`` / ``"mean"``, Tensor[*] for ``"none"``.

    Example:
        >>> smooth_l1_loss(torch.tensor([0.0, 0.0]), torch.tensor([0.5, 2.0]), beta=1.0)
        tensor(1.6250)
    """
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError(
            f"input and target must be Tensors, got {type(input).__name__} and "
            f"{type(target).__name__}"
        )
    if input.shape != target.shape:
        raise ValueError(
            f"input and target must have the same shape, got {tuple(input.shape)} and "
            f"{tuple(target.shape)}"
        )
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not beta >= 0:
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    diff = (input - target).abs()
    if beta == 0:
        loss = diff
    else:
        loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


def select_class_deltas(deltas: Tensor, labels: Tensor, first_label: int = 1) -> Tensor:
    """The deltas of each row's own class out of class-specific regression outputs.

    Args:
        deltas (Tensor[N, 4 * K]): ``K`` sets of ``(dx, dy, dw, dh)`` per row.
        labels (Tensor[N]) (int64): class of each row; the set used is ``labels - first_label``,
            which must lie in ``[0, K)``.
        first_label (int): the label of set 0: 1 when background (label 0) has no set (the
            class-aware RPN), 0 when it has one (a Fast R-CNN predictor with ``4 * (C + 1)``).

    Returns:
        Tensor[N, 4]: ``deltas[i, 4 * j : 4 * j + 4]`` with ``j = labels[i] - first_label``.
    """
    if not isinstance(deltas, Tensor) or deltas.dim() != 2 or deltas.shape[1] % 4 != 0:
        got = tuple(deltas.shape) if isinstance(deltas, Tensor) else type(deltas).__name__
        raise ValueError(f"deltas must be a Tensor[N, 4 * K], got {got}")
    if not isinstance(labels, Tensor) or labels.shape != deltas.shape[:1]:
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a Tensor[N] with N = {deltas.shape[0]}, got {got}")
    num_sets = deltas.shape[1] // 4
    index = labels.long() - first_label
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_sets):
        raise ValueError(
            f"labels - first_label must lie in [0, {num_sets}), got labels in "
            f"[{int(labels.min())}, {int(labels.max())}] with first_label={first_label}"
        )
    return deltas.reshape(-1, num_sets, 4)[
        torch.arange(deltas.shape[0], device=deltas.device), index
    ]
