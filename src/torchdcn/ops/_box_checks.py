"""Argument checks of the box ops and NMS: every error names the argument, what it got and what it
wanted (the box family's one validation helper, as ``_roi_checks`` is the RoI family's; scalar
arguments are checked by :func:`._checks.real_scalar`, as everywhere)."""

from __future__ import annotations

import torch
from torch import Tensor

_BOX_LAYOUT = "[N, 4] as (x1, y1, x2, y2)"


def check_boxes(
    boxes: object,
    name: str = "boxes",
    *,
    floating: bool = False,
    batched: bool = False,
    sets: bool = False,
) -> Tensor:
    """``boxes`` is a ``Tensor[N, 4]`` (floating point if ``floating``, else any real dtype);
    ``batched``: ``Tensor[..., 4]`` with any leading dimensions (``sets``: at least one,
    ``[..., N, 4]``)."""
    layout = ("[..., N, 4]" if sets else "[..., 4]") if batched else _BOX_LAYOUT
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a Tensor of shape {layout}, got {type(boxes).__name__}")
    least = (2 if sets else 1) if batched else 2
    if boxes.dim() < least or (not batched and boxes.dim() != 2) or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape {layout}, got shape {tuple(boxes.shape)}")
    check_real(boxes, name, floating=floating)
    return boxes


def check_real(t: Tensor, name: str, *, floating: bool) -> None:
    """``t`` holds real numbers: floating point or (unless ``floating``) a non-bool integer."""
    if t.is_complex() or t.dtype == torch.bool or (floating and not t.is_floating_point()):
        wanted = "a floating-point dtype" if floating else "a real (floating or integer) dtype"
        raise TypeError(f"{name} must have {wanted}, got dtype {t.dtype}")


def check_scores(scores: object, boxes: Tensor, name: str = "scores") -> Tensor:
    """``scores`` is a floating-point ``Tensor[N]`` on ``boxes``' device, N = ``len(boxes)``."""
    n = boxes.shape[0]
    if not isinstance(scores, Tensor):
        raise TypeError(
            f"{name} must be a Tensor of shape [N] = [{n}], got {type(scores).__name__}"
        )
    if scores.dim() != 1 or scores.shape[0] != n:
        raise ValueError(
            f"{name} must have shape [N] = [{n}] (one per box), got shape {tuple(scores.shape)}"
        )
    if not scores.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got dtype {scores.dtype}")
    _check_device(scores, name, boxes)
    return scores


def check_idxs(idxs: object, boxes: Tensor, name: str = "idxs") -> Tensor:
    """``idxs`` is an integer ``Tensor[N]`` (class or image of each box) on ``boxes``' device."""
    n = boxes.shape[0]
    if not isinstance(idxs, Tensor):
        raise TypeError(f"{name} must be a Tensor of shape [N] = [{n}], got {type(idxs).__name__}")
    if idxs.dim() != 1 or idxs.shape[0] != n:
        raise ValueError(
            f"{name} must have shape [N] = [{n}] (one per box), got shape {tuple(idxs.shape)}"
        )
    if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
        raise TypeError(
            f"{name} must have an integer dtype (category of each box), got dtype {idxs.dtype}; "
            "convert with .long()"
        )
    _check_device(idxs, name, boxes)
    return idxs


def _check_device(t: Tensor, name: str, boxes: Tensor) -> None:
    if t.device != boxes.device:
        raise ValueError(
            f"{name} is on {t.device} but boxes is on {boxes.device}; all tensors must be on one "
            "device"
        )
