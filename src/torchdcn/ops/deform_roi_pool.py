"""Deformable RoI pooling (v1 Eq. 6) and modulated deformable RoI pooling (v2), SPEC section 4."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import autocast_off
from ._roi_checks import RoIs, check_roi_args
from ._roi_common import register_autograd, run


def deform_roi_pool(
    input: Tensor,
    rois: RoIs,
    offset: Tensor | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    gamma: float = 0.1,
    mask: Tensor | None = None,
    aligned: bool = True,
) -> Tensor:
    """Deformable RoI pooling (Deformable ConvNets v1, Eq. 6); with ``mask``, v2's modulated one.

    :func:`roi_align` whose every bin ``(i, j)`` is moved by
    ``(gamma * offset[r, 0, i, j] * roi_w, gamma * offset[r, 1, i, j] * roi_h)`` feature cells
    (``roi_w``, ``roi_h``: the RoI's size in cells) before its samples are read, and multiplied by
    ``mask[r, 0, i, j]``: ``y(i, j) = m_ij * sum_k x(p_ijk + dp_ij) / n_ij`` over the bin's grid of
    ``n_ij`` samples ``p_ijk``. Bins, samples, border, adaptive grid and ``aligned`` are exactly
    :func:`torchdcn.ops.roi_align`'s, so a zero (or absent) offset without mask gives ``roi_align``
    with the same arguments, bit for bit. Offsets are normalised as in mmcv and the original MXNet
    code (channel 0 shifts x); unlike mmcv this op also takes ``aligned`` (mmcv always shifts).

    Args:
        input (Tensor[N, C, H, W]): feature map.
        rois (Tensor[R, 5] or list of Tensor[R_i, 4]): ``(batch_index, x1, y1, x2, y2)`` in image
            pixels, or one ``(x1, y1, x2, y2)`` tensor per image.
        offset (Tensor[R, 2, ph, pw] or None): normalised bin offsets, channel 0 along x (width),
            channel 1 along y (height), in units of ``gamma`` x the RoI's width / height. None: no
            shift.
        output_size (int or (int, int)): bins ``(ph, pw)`` per RoI.
        spatial_scale (float): feature cells per image pixel (1/16 for a stride-16 map).
        sampling_ratio (int): samples per bin along each axis (2 in v2); ``<= 0`` adaptive.
        gamma (float): offset scale (0.1 in v1 and v2).
        mask (Tensor[R, 1, ph, pw], optional): modulation of each bin (v2), usually in [0, 1].
        aligned (bool): shift the scaled RoI by -0.5 cell, as :func:`roi_align`.

    Returns:
        Tensor[R, C, ph, pw].

    Differentiable in ``input``, ``offset`` and ``mask`` (not ``rois``). The offset gradient is the
    exact derivative of the bilinear sampling: zero for a coordinate clamped to the border or a
    sample off the map. A NaN or infinite offset makes its samples read 0. float16/bfloat16 are
    computed in float32.

    Example:
        >>> x = torch.randn(1, 16, 38, 50)
        >>> rois = torch.tensor([[0, 64.0, 48.0, 320.0, 400.0]])
        >>> off = 0.5 * torch.randn(1, 2, 7, 7)
        >>> deform_roi_pool(x, rois, off, 7, 1 / 16, sampling_ratio=2).shape
        torch.Size([1, 16, 7, 7])
    """
    a = check_roi_args(
        input, rois, output_size, spatial_scale, sampling_ratio, gamma, offset=offset, mask=mask
    )
    with autocast_off(a.input):
        out = torch.ops.torchdcn.deform_roi_pool(
            a.input, a.rois, a.offset, a.mask, *a.pooled, float(spatial_scale), sampling_ratio,
            bool(aligned), float(gamma),
        )  # fmt: skip
    return out.to(a.out_dtype)


@torch.library.custom_op("torchdcn::deform_roi_pool", mutates_args=())
def _deform_roi_pool_op(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    mask: Tensor | None,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    gamma: float,
) -> Tensor:
    args = (pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, gamma)
    return run("forward_deform_roi_pool", input, rois, offset, mask, *args)


@_deform_roi_pool_op.register_fake
def _(input, rois, offset, mask, pooled_h, pooled_w, *args):
    return input.new_empty(rois.shape[0], input.shape[1], pooled_h, pooled_w)


@torch.library.custom_op("torchdcn::deform_roi_pool_backward", mutates_args=())
def _deform_roi_pool_backward_op(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    mask: Tensor | None,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    gamma: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (input, offset, mask); empty tensors for an absent offset or mask."""
    args = (pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, gamma)
    grads = run("backward_deform_roi_pool", grad, input, rois, offset, mask, *args)
    # one fresh empty tensor each: outputs of a custom op may not alias
    return tuple(input.new_empty(0) if g is None else g for g in grads)  # type: ignore[return-value]


@_deform_roi_pool_backward_op.register_fake
def _(grad, input, rois, offset, mask, *args):
    return (
        torch.empty_like(input),
        input.new_empty(0) if offset is None else torch.empty_like(offset),
        input.new_empty(0) if mask is None else torch.empty_like(mask),
    )


register_autograd(
    _deform_roi_pool_op, torch.ops.torchdcn.deform_roi_pool_backward, n_tensors=4, n_grads=3
)
