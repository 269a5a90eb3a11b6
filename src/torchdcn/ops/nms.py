"""Non-maximum suppression: ``nms`` and per-category ``batched_nms`` (torchvision's signatures).

Kernels: the readable reference (:mod:`._nms_ref`), Numba on CPU (:mod:`._nms_cpu`, a grid of
kept boxes, O(N) memory) and a blocked pure-PyTorch route for CUDA (:mod:`._nms_torch`). The
backend is chosen by :func:`._backend.select_backend` like every op's: ``numba`` runs the CPU
kernel, ``triton`` (the name of the GPU backend; NMS has no Triton kernel) runs the blocked torch
route, ``reference`` the reference. On a GPU the torch route also takes float64 and runs when
Triton is missing, because the reference would synchronise with the host once per box.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from . import _backend
from ._box_checks import check_boxes, check_idxs, check_scores
from ._checks import real_scalar


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Visits the boxes by decreasing score and keeps a box unless a box kept before it overlaps it
    with ``IoU > iou_threshold`` (strictly greater: a box at exactly the threshold survives).
    The IoU is :func:`~torchdcn.ops.box_iou`'s, rounded in the boxes' dtype, then compared with
    ``iou_threshold`` as a float64 number.

    Args:
        boxes (Tensor[N, 4]): boxes as ``(x1, y1, x2, y2)``, floating point. float16/bfloat16
            boxes are compared in float32.
        scores (Tensor[N]): score of each box, floating point, on ``boxes``' device.
        iou_threshold (float): boxes overlapping a kept box with a larger IoU are discarded
            (an int or a 0-d tensor is read as a float).

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score; equal scores keep
        index order (a stable descending sort), so with ties the earlier box wins.

    Degenerate input: a box with zero or negative width or height has IoU 0 (or NaN) with every
    box, so for ``iou_threshold >= 0`` it is kept and suppresses nothing. A NaN coordinate makes
    every IoU of its box NaN, never greater than the threshold: the box is kept and suppresses
    nothing. A NaN score sorts above every number (:func:`torch.sort`'s order). A NaN
    ``iou_threshold`` is a ``ValueError`` (under TorchScript and ``torch.compile`` too: the
    registered op checks its arguments again). ``N = 0`` returns an empty tensor.

    Example:
        >>> boxes = torch.tensor([[0.0, 0.0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
        >>> scores = torch.tensor([0.9, 0.8, 0.7])
        >>> nms(boxes, scores, 0.5)
        tensor([0, 2])
    """
    if torch.jit.is_scripting():  # TorchScript: the registered op checks the arguments
        return torch.ops.torchdcn.nms(_upcast(boxes), scores, None, float(iou_threshold))
    check_boxes(boxes, floating=True)
    check_scores(scores, boxes)
    iou_threshold = _check_threshold(iou_threshold)
    return torch.ops.torchdcn.nms(_upcast(boxes), scores, None, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression within each category: boxes with different ``idxs`` never
    suppress each other.

    The same result as running :func:`nms` on each category separately and merging the kept
    indices by decreasing score (ties: lower index first). One kernel call: the boxes are sorted
    by score, then stably by category, and each category is suppressed on its own (the CPU kernel
    builds one grid per category; the blocked torch route compares a block only with kept boxes
    of its own categories), so the cost grows with the per-category counts, not the square of
    the total. Neither of torchvision's two routes is needed: the per-category loop (one kernel
    call per category) and the coordinate-offset trick (shifting each category's boxes by
    ``idx * (max_coordinate + 1)``, which rounds float32 coordinates of the far categories,
    changes their IoUs, and can flip decisions near the threshold).

    Args:
        boxes (Tensor[N, 4]): boxes as ``(x1, y1, x2, y2)``, floating point.
        scores (Tensor[N]): score of each box, floating point.
        idxs (Tensor[N]): integer category (class, or image of a batch) of each box.
        iou_threshold (float): as for :func:`nms` (an int or a 0-d tensor is read as a float).

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score (ties: lower index).

    Example:
        >>> boxes = torch.tensor([[0.0, 0.0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11]])
        >>> scores = torch.tensor([0.9, 0.8, 0.7])
        >>> batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5)
        tensor([0, 2])
    """
    if torch.jit.is_scripting():  # TorchScript: the registered op checks the arguments
        return torch.ops.torchdcn.nms(_upcast(boxes), scores, idxs, float(iou_threshold))
    check_boxes(boxes, floating=True)
    check_scores(scores, boxes)
    check_idxs(idxs, boxes)
    iou_threshold = _check_threshold(iou_threshold)
    return torch.ops.torchdcn.nms(_upcast(boxes), scores, idxs, iou_threshold)


def _check_threshold(value: object) -> float:
    """``iou_threshold`` checked by :func:`._checks.real_scalar`: a real number (Python, NumPy or
    a 0-d real tensor) that is not NaN; infinities are taken, as torchvision takes them (``inf``
    suppresses nothing)."""
    return real_scalar(value, "iou_threshold", finite=False, wanted="a float (e.g. 0.5)")


def _upcast(boxes: Tensor) -> Tensor:
    if boxes.dtype == torch.float16 or boxes.dtype == torch.bfloat16:
        return boxes.float()
    return boxes


# --------------------------------------------------------------------------------------------
# The registered op: the kernel choice and threshold rounding, opaque to torch.compile.


def route(device: torch.device, dtype: torch.dtype) -> str:
    """``"reference"``, ``"numba"`` or ``"torch"`` (the blocked route) for these tensors."""
    name = _backend.select_backend(device, dtype)
    if name == "triton":
        return "torch"
    if name == "reference" and device.type != "cpu" and _backend.requested_backend() == "auto":
        return "torch"
    return name


@functools.lru_cache(maxsize=64)
def threshold_in(dtype: torch.dtype, threshold: float) -> float:
    """The largest ``dtype`` number ``t <= threshold``: for an IoU ``x`` of that dtype,
    ``x > t`` exactly when ``x > threshold`` (compared as real numbers), so kernels compare in
    the boxes' own dtype without rounding the threshold up past an IoU."""
    if dtype != torch.float32:
        return threshold
    with np.errstate(over="ignore"):
        t = np.float32(threshold)
    if float(t) > threshold:
        t = np.nextafter(t, np.float32(-np.inf))
    return float(t)


@torch.library.custom_op("torchdcn::nms", mutates_args=())
def _nms_op(boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float) -> Tensor:
    # also guards callers that reach the op directly (TorchScript, torch.ops): the kernels index
    # scores and idxs by box, so their lengths must be N
    check_boxes(boxes, floating=True)
    check_scores(scores, boxes)
    if idxs is not None:
        check_idxs(idxs, boxes)
    iou_threshold = _check_threshold(iou_threshold)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    kernel = route(boxes.device, boxes.dtype)
    if kernel == "reference":
        from ._nms_ref import nms_reference

        return nms_reference(boxes, scores, idxs, iou_threshold)
    if kernel == "numba":
        from ._nms_cpu import nms as run
    else:
        from ._nms_torch import nms as run
    return run(boxes, scores, idxs, threshold_in(boxes.dtype, iou_threshold))


@_nms_op.register_fake
def _(boxes, scores, idxs, iou_threshold):
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty(kept, dtype=torch.int64)
