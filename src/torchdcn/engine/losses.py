"""What one training step minimises: a dict of named scalar losses, whatever the task.

The training loop calls ``compute_losses(model, inputs, targets) -> {"loss_name": scalar}``,
sums the values, back-propagates the sum and logs every term. Two ways to get that dict:

- :func:`model_losses` (detection, segmentation): the model computes its own losses, as
  torchvision's and detectron2's detectors do: in training mode ``model(images, targets)``
  returns ``{"loss_classifier": ..., "loss_box_reg": ..., ...}``.
- :class:`ClassificationLoss` (the default): ``model(inputs)`` returns logits ``[B, classes]``
  and a criterion (cross-entropy) compares them with the labels ``[B]``: ``{"loss_cls": ...}``.

A new task needs neither a new loop nor a new trainer: a model that returns its losses, or a
small callable like :class:`ClassificationLoss`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

#: ``compute_losses(model, inputs, targets) -> {name: scalar loss}``
LossFunction = Callable[[nn.Module, Any, Any], Mapping[str, Tensor]]


class ClassificationLoss:
    """``{name: criterion(model(inputs), targets)}``: the losses of a classifier.

    Args:
        criterion: ``criterion(logits [B, classes], labels [B]) -> scalar``; default
            :func:`torch.nn.functional.cross_entropy`.
        name: the key of the loss in the dict (and in the logs).
    """

    def __init__(
        self, criterion: Callable[[Tensor, Tensor], Tensor] | None = None, name: str = "loss_cls"
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.criterion = criterion or F.cross_entropy
        self.name = name

    def __call__(self, model: nn.Module, inputs: Any, targets: Any) -> dict[str, Tensor]:
        return {self.name: self.criterion(model(inputs), targets)}

    def __repr__(self) -> str:
        crit = getattr(self.criterion, "__name__", type(self.criterion).__name__)
        return f"ClassificationLoss({crit}, name={self.name!r})"


def model_losses(model: nn.Module, inputs: Any, targets: Any) -> Mapping[str, Tensor]:
    """``model(inputs, targets)``: a model that returns its own dict of losses in training
    (torchvision / detectron2 detectors); ``inputs`` a list of images ``[C, H_i, W_i]``,
    ``targets`` a list of dicts (``boxes [n_i, 4]``, ``labels [n_i]``, ...)."""
    return model(inputs, targets)


def check_losses(losses: Any) -> dict[str, Tensor]:
    """``losses`` as a plain dict after checking it is a non-empty mapping of names to scalar
    tensors (``TypeError``/``ValueError`` naming what came instead)."""
    if not isinstance(losses, Mapping):
        raise TypeError(
            "compute_losses must return a dict of named scalar losses, e.g. {'loss_cls': t}; "
            f"got {type(losses).__name__} (a model that returns logits needs "
            "ClassificationLoss, one that returns its losses model_losses)"
        )
    if not losses:
        raise ValueError("compute_losses returned an empty dict: nothing to minimise")
    for name, value in losses.items():
        if not isinstance(name, str):
            raise TypeError(f"loss names must be strings, got {name!r}")
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"loss {name!r} must be a scalar tensor, got {shape}")
    return dict(losses)


def total_loss(losses: Mapping[str, Tensor]) -> Tensor:
    """The sum of the terms in their dict order (a single term is returned as it is)."""
    return functools.reduce(operator.add, losses.values())
