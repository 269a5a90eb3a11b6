"""Position-sensitive RoI pooling of R-FCN, integer bins and aligned bins (SPEC section 4)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import autocast_off
from ._roi_checks import RoIs, check_roi_args
from ._roi_common import register_autograd, run


def ps_roi_pool(
    input: Tensor,
    rois: RoIs,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Position-sensitive RoI pooling (R-FCN) over integer bins: :func:`roi_pool`'s bins, where
    bin ``(i, j)`` of output channel ``c`` averages only input channel ``(c * ph + i) * pw + j``.

    Bins, rounding, averaging and RoIs off the map as :func:`torchdcn.ops.roi_pool` (average, as
    R-FCN; same as ``torchvision.ops.ps_roi_pool``).

    Args:
        input (Tensor[N, C_out * ph * pw, H, W]): ``ph * pw`` score maps per output channel.
        rois (Tensor[R, 5] or list of Tensor[R_i, 4]): ``(batch_index, x1, y1, x2, y2)`` in image
            pixels, or one ``(x1, y1, x2, y2)`` tensor per image.
        output_size (int or (int, int)): bins ``(ph, pw)`` per RoI.
        spatial_scale (float): feature cells per image pixel.

    Returns:
        Tensor[R, C_out, ph, pw].

    Differentiable in ``input``. float16/bfloat16 are computed in float32.

    Example:
        >>> x = torch.randn(1, 21 * 3 * 3, 20, 20)
        >>> ps_roi_pool(x, [torch.tensor([[8.0, 8.0, 120.0, 90.0]])], 3, 1 / 8).shape
        torch.Size([1, 21, 3, 3])
    """
    a = check_roi_args(input, rois, output_size, spatial_scale, position_sensitive=True)
    with autocast_off(a.input):
        out = torch.ops.torchdcn.ps_roi_pool(a.input, a.rois, *a.pooled, float(spatial_scale))
    return out.to(a.out_dtype)


def ps_roi_align(
    input: Tensor,
    rois: RoIs,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """Position-sensitive RoIAlign: :func:`roi_align`'s bins and samples, where bin ``(i, j)`` of
    output channel ``c`` samples only input channel ``(c * ph + i) * pw + j``.

    Sampling, border, adaptive grid and ``aligned`` as :func:`torchdcn.ops.roi_align`.
    (``torchvision.ops.ps_roi_align`` always shifts by -0.5 and keeps RoIs at least 0.1 cell wide.)

    Args:
        input (Tensor[N, C_out * ph * pw, H, W]): ``ph * pw`` score maps per output channel.
        rois (Tensor[R, 5] or list of Tensor[R_i, 4]): ``(batch_index, x1, y1, x2, y2)`` in image
            pixels, or one ``(x1, y1, x2, y2)`` tensor per image.
        output_size (int or (int, int)): bins ``(ph, pw)`` per RoI.
        spatial_scale (float): feature cells per image pixel.
        sampling_ratio (int): samples per bin along each axis; ``<= 0`` adaptive.
        aligned (bool): shift the scaled RoI by -0.5 cell.

    Returns:
        Tensor[R, C_out, ph, pw].

    Differentiable in ``input``. float16/bfloat16 are computed in float32.

    Example:
        >>> x = torch.randn(1, 21 * 7 * 7, 20, 20)
        >>> rois = torch.tensor([[0, 8.0, 8.0, 120.0, 90.0]])
        >>> ps_roi_align(x, rois, 7, 1 / 8, sampling_ratio=2).shape
        torch.Size([1, 21, 7, 7])
    """
    a = check_roi_args(
        input, rois, output_size, spatial_scale, sampling_ratio, position_sensitive=True
    )
    with autocast_off(a.input):
        out = torch.ops.torchdcn.ps_roi_align(
            a.input, a.rois, *a.pooled, float(spatial_scale), sampling_ratio, bool(aligned)
        )
    return out.to(a.out_dtype)


def _fake_forward(input, rois, pooled_h, pooled_w, *args):
    c_out = input.shape[1] // (pooled_h * pooled_w)
    return input.new_empty(rois.shape[0], c_out, pooled_h, pooled_w)


def _fake_backward(grad, input, *args):
    return torch.empty_like(input)


@torch.library.custom_op("torchdcn::ps_roi_pool", mutates_args=())
def _ps_roi_pool_op(
    input: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float
) -> Tensor:
    return run("forward_ps_roi_pool", input, rois, pooled_h, pooled_w, spatial_scale)


@torch.library.custom_op("torchdcn::ps_roi_pool_backward", mutates_args=())
def _ps_roi_pool_backward_op(
    grad: Tensor, input: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float
) -> Tensor:
    return run("backward_ps_roi_pool", grad, input, rois, pooled_h, pooled_w, spatial_scale)


@torch.library.custom_op("torchdcn::ps_roi_align", mutates_args=())
def _ps_roi_align_op(
    input: Tensor,
    rois: Tensor,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    args = (pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned)
    return run("forward_ps_roi_align", input, rois, *args)


@torch.library.custom_op("torchdcn::ps_roi_align_backward", mutates_args=())
def _ps_roi_align_backward_op(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    args = (pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned)
    return run("backward_ps_roi_align", grad, input, rois, *args)


_ps_roi_pool_op.register_fake(_fake_forward)
_ps_roi_pool_backward_op.register_fake(_fake_backward)
_ps_roi_align_op.register_fake(_fake_forward)
_ps_roi_align_backward_op.register_fake(_fake_backward)
register_autograd(_ps_roi_pool_op, torch.ops.torchdcn.ps_roi_pool_backward, 2, 1)
register_autograd(_ps_roi_align_op, torch.ops.torchdcn.ps_roi_align_backward, 2, 1)
