"""Bilinear sampling shared by every op of the package (the readable, differentiable form).

All ops sample a feature map at real-valued points. They differ only in what happens near the
border (SPEC section 1):

* ``"zero"`` (deformable convolution, v1 Eq. 3-4): the map is zero outside. A point reads its
  four corners ``floor(y), floor(y) + 1`` (x likewise), each corner off the map reading 0, so it
  samples 0 once ``y <= -1``, ``y >= H``, ``x <= -1`` or ``x >= W``. A NaN/inf coordinate samples
  0 and gets zero gradient.
* ``"clamp"`` (RoIAlign family): a point with ``y < -1`` or ``y > H`` (same for x) samples 0; points
  in ``[-1, 0)`` are clamped to 0 and points past ``H - 1`` are pinned to the last row (same for x).
  Clamped coordinates have zero gradient, which is the exact derivative of that definition.

Gradients at integer coordinates, where the sample is not differentiable, are the *right*
derivatives (torchvision's rule), in both borders: the corners are ``floor(y)`` and ``floor(y) +
1`` with the fraction ``y - floor(y)``. So a ``"zero"`` point exactly on ``y = -1`` samples 0 but
its y-gradient is the slope towards row 0 (``v[0]``), one on ``y = H - 1`` has slope ``-v[H - 1]``;
a ``"clamp"`` point exactly on ``y = 0`` has the slope towards row 1, one on ``y = -1`` or ``y = H
- 1`` slope 0 (the clamped value is constant to its right).

The feature map is given as a *table* ``[P * H * W, C]``: ``P`` planes of ``H x W`` rows, each row a
vector of ``C`` channels (channels-last). A point names its plane, so one gather serves a batch
(plane = image), offset groups (plane = image x group) and position-sensitive maps (plane = image x
bin). Gradients reach the table and the coordinates through autograd.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Border = Literal["zero", "clamp"]


def to_table(feat: Tensor) -> Tensor:
    """``[P, C, H, W]`` -> the channels-last table ``[P * H * W, C]`` of :func:`bilinear_gather`."""
    p, c, h, w = feat.shape
    return feat.permute(0, 2, 3, 1).reshape(p * h * w, c)


def bilinear_gather(
    table: Tensor,
    plane: Tensor,
    y: Tensor,
    x: Tensor,
    height: int,
    width: int,
    border: Border,
) -> Tensor:
    """Sample ``table`` bilinearly at ``(y, x)`` (feature-cell units) on plane ``plane``.

    Args:
        table: ``[P * height * width, C]`` channels-last feature table (see :func:`to_table`).
        plane: integer tensor, broadcastable to ``y``'s shape ``S``: which plane each point reads.
        y, x: float tensors of shape ``S``: row and column of each point.
        height, width: the size of one plane.
        border: ``"zero"`` or ``"clamp"`` (module docstring).

    Returns:
        ``[*S, C]``: the sampled vectors, zero where the point samples nothing.
    """
    valid, y, x = _prepare(y, x, height, width, border)
    y0 = y.floor()
    x0 = x.floor()
    ly = y - y0
    lx = x - x0
    y0 = y0.long()
    x0 = x0.long()
    base = plane.long() * (height * width)
    out = None
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yy = y0 + dy
            xx = x0 + dx
            inside = valid & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            idx = torch.where(inside, base + yy * width + xx, 0)
            weight = torch.where(inside, wy * wx, 0)
            vals = table.index_select(0, idx.reshape(-1)).view(*idx.shape, table.shape[1])
            term = vals * weight.unsqueeze(-1).to(vals.dtype)
            out = term if out is None else out + term
    return out


def _prepare(y: Tensor, x: Tensor, height: int, width: int, border: Border):
    """Validity of each point and coordinates made safe to floor (NaN/inf replaced, clamping)."""
    if border == "zero":
        # the corners do the cut-off (off-map corners read 0); this only keeps y = -1 and x = -1,
        # whose right derivative is not 0, and drops NaN/inf and points whose corners are all off
        valid = (y >= -1) & (y < height) & (x >= -1) & (x < width)
    elif border == "clamp":
        valid = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
    else:
        raise ValueError(f"border must be 'zero' or 'clamp', got {border!r}")
    # comparisons with NaN are False, so NaN/inf points are invalid; give them a harmless value
    y = torch.where(valid, y, torch.zeros_like(y))
    x = torch.where(valid, x, torch.zeros_like(x))
    if border == "clamp":
        # y = 0 itself stays free, so its gradient is the right derivative (slope to row 1)
        y = torch.where(y < 0, torch.zeros_like(y), y)
        x = torch.where(x < 0, torch.zeros_like(x), x)
        # past the last row the point is pinned: coordinate constant, zero gradient
        y = torch.where(y >= height - 1, torch.full_like(y, height - 1), y)
        x = torch.where(x >= width - 1, torch.full_like(x, width - 1), x)
    return valid, y, x
