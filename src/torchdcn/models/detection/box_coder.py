"""Box regression deltas: the R-CNN parametrisation of one box relative to another.

For a reference (anchor or proposal) box ``P`` and a target box ``G``, each with width
``w = x2 - x1``, height ``h = y2 - y1`` and centre ``(x1 + w / 2, y1 + h / 2)`` (no ``+ 1``, as in
:mod:`torchdcn.ops.boxes`), the deltas are::

    dx = wx * (Gx - Px) / Pw        dw = ww * log(Gw / Pw)
    dy = wy * (Gy - Py) / Ph        dh = wh * log(Gh / Ph)

with weights ``(wx, wy, ww, wh)``: ``(1, 1, 1, 1)`` for the RPN and ``(10, 10, 5, 5)`` for the
Fast R-CNN head (they scale the targets to unit-ish variance). Decoding inverts this; ``dw`` and
``dh`` are clamped at ``bbox_xform_clip = log(1000 / 16)`` first so an untrained head cannot make
``exp`` overflow to an infinite box.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from ...ops._checks import real_scalar


class BoxCoder:
    """Encode target boxes as deltas from reference boxes, and decode deltas back to boxes.

    Args:
        weights (tuple[float, float, float, float]): ``(wx, wy, ww, wh)``, positive.
        bbox_xform_clip (float): upper bound applied to ``dw / ww`` and ``dh / wh`` when decoding.

    Example:
        >>> coder = BoxCoder()
        >>> anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
        >>> gt = torch.tensor([[2.0, 0.0, 12.0, 20.0]])
        >>> deltas = coder.encode(gt, anchors)
        >>> deltas
        tensor([[0.2000, 0.5000, 0.0000, 0.6931]])
        >>> coder.decode(deltas, anchors)
        tensor([[ 2.,  0., 12., 20.]])
    """

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        if (
            isinstance(weights, (str, bytes))
            or not isinstance(weights, Sequence)
            or len(weights) != 4
            or not all(isinstance(w, numbers.Real) and not isinstance(w, bool) for w in weights)
        ):
            raise TypeError(f"weights must be 4 numbers (wx, wy, ww, wh), got {weights!r}")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"weights must be positive and finite, got {tuple(weights)}")
        # NaN gave all-NaN boxes; inf (no clipping) is allowed
        bbox_xform_clip = real_scalar(bbox_xform_clip, "bbox_xform_clip", finite=False)
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def encode(self, reference: Tensor, proposals: Tensor) -> Tensor:
        """Deltas that take ``proposals`` to ``reference``.

        Args:
            reference (Tensor[N, 4]): target boxes ``G`` (e.g. matched ground truth).
            proposals (Tensor[N, 4]): reference boxes ``P`` (anchors or proposals), positive
                width and height.

        Returns:
            Tensor[N, 4]: ``(dx, dy, dw, dh)`` in ``proposals``' dtype.
        """
        _check(reference, "reference")
        _check(proposals, "proposals")
        if reference.shape != proposals.shape:
            raise ValueError(
                f"reference and proposals must both be [N, 4] with the same N, got "
                f"{tuple(reference.shape)} and {tuple(proposals.shape)}"
            )
        reference = reference.to(proposals.dtype)
        wx, wy, ww, wh = self.weights
        pw, ph, px, py = _size_centre(proposals)
        gw, gh, gx, gy = _size_centre(reference)
        return torch.stack(
            (
                wx * (gx - px) / pw,
                wy * (gy - py) / ph,
                ww * torch.log(gw / pw),
                wh * torch.log(gh / ph),
            ),
            dim=1,
        )

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Boxes obtained by applying ``deltas`` to ``boxes``.

        Args:
            deltas (Tensor[N, 4 * K]): ``K`` sets of ``(dx, dy, dw, dh)`` per box (``K`` classes
                for class-specific regression), floating point.
            boxes (Tensor[N, 4]): reference boxes ``(x1, y1, x2, y2)``.

        Returns:
            Tensor[N, 4 * K]: decoded ``(x1, y1, x2, y2)`` for each of the ``K`` sets, in
            ``deltas``' dtype; not clipped to any image.
        """
        _check(boxes, "boxes")
        if not isinstance(deltas, Tensor) or deltas.dim() != 2 or deltas.shape[1] % 4 != 0:
            got = tuple(deltas.shape) if isinstance(deltas, Tensor) else type(deltas).__name__
            raise ValueError(f"deltas must be a Tensor[N, 4 * K], got {got}")
        if not deltas.is_floating_point():
            raise TypeError(f"deltas must be floating point, got {deltas.dtype}")
        if deltas.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"deltas ({tuple(deltas.shape)}) and boxes ({tuple(boxes.shape)}) must have "
                "the same number of rows N"
            )
        boxes = boxes.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        pw, ph, px, py = (t[:, None] for t in _size_centre(boxes))
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)
        cx = dx * pw + px
        cy = dy * ph + py
        w = torch.exp(dw) * pw
        h = torch.exp(dh) * ph
        out = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=2)
        return out.reshape(deltas.shape)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.4f})"


def _size_centre(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return w, h, boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h


def _check(boxes: object, name: str) -> None:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{name} must be a Tensor[N, 4] of (x1, y1, x2, y2), got {got}")
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {boxes.dtype}")
