"""The registered ops of the RoI pooling family: two kernels, selected by flags.

Every public RoI function is a thin wrapper over one of two ``torch.library`` ops (each with a
backward op, fake implementations for ``torch.compile``/meta tensors, and autograd):

* ``torchdcn::roi_integer_pool(input, rois, pooled_h, pooled_w, spatial_scale, mode,
  position_sensitive)``: integer bins (:func:`._roi_common.integer_bins`); ``mode`` ``"max"``
  (torchvision's ``roi_pool``) or ``"avg"`` (v1 Eq. 5; with ``position_sensitive``,
  ``ps_roi_pool``).
* ``torchdcn::roi_aligned_pool(input, rois, offset, mask, pooled_h, pooled_w, spatial_scale,
  sampling_ratio, aligned, gamma, position_sensitive)``: real-valued bins of bilinear samples
  (:func:`._roi_common.aligned_geometry`); ``roi_align``, ``ps_roi_align`` and the deformable ones
  (``offset``/``mask`` None when absent).

Every op checks what its kernel indexes with (:func:`._roi_checks.check_kernel_args`: RoI batch
indices, coordinates, shapes, devices) before the kernel runs, backward ops included: TorchScript,
``torch.compile`` and direct ``torch.ops.torchdcn.*`` calls reach them without the eager checks.
The eager public functions call the ops through :func:`call_checked`, and autograd the backward
ops under :func:`._roi_checks.values_checked`: the RoIs' values (one device sync) are checked
once per eager forward and backward, by the public function.

The kernel module comes from :func:`._dispatch.kernel_backend` in :func:`_kernels`: ``_roi_cpu``
(Numba), ``_roi_triton`` (Triton) or the reference ``_roi_ref``; all three implement the interface
documented in :mod:`._roi_cpu`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from . import _roi_ref
from ._dispatch import kernel_backend
from ._roi_checks import check_kernel_args, values_checked

MODES = ("max", "avg")


def _kernels(input: Tensor) -> ModuleType:
    """The kernel module for ``input``'s device and dtype."""
    backend = kernel_backend(input.device, input.dtype)
    if backend == "numba":
        from . import _roi_cpu

        return _roi_cpu
    if backend == "triton":
        from . import _roi_triton

        return _roi_triton
    return _roi_ref


def call_checked(op: Callable[..., Tensor], *args: Any) -> Tensor:
    """``op(*args)`` for an eager public function whose :func:`._roi_checks.check_roi_args` has
    checked the RoIs' values: the op skips checking them again. While ``torch.compile`` traces,
    the eager check skipped the values, so the call is plain and the compiled op checks them."""
    if torch.compiler.is_compiling():
        return op(*args)
    with values_checked():
        return op(*args)


def _check_mode(mode: str, position_sensitive: bool) -> None:
    if mode not in MODES or (position_sensitive and mode != "avg"):
        raise ValueError(
            f'mode must be "max" or "avg" ("avg" only when position_sensitive), got "{mode}" '
            f"with position_sensitive={position_sensitive}"
        )


def _out_channels(input: Tensor, pooled_h: int, pooled_w: int, position_sensitive: bool) -> int:
    return input.shape[1] // (pooled_h * pooled_w) if position_sensitive else input.shape[1]


# --------------------------------------------------------------------------------------------
# Integer bins


@torch.library.custom_op("torchdcn::roi_integer_pool", mutates_args=())
def _integer_op(
    input: Tensor,
    rois: Tensor,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    mode: str,
    position_sensitive: bool,
) -> Tensor:
    _check_mode(mode, position_sensitive)
    pooled = (pooled_h, pooled_w)
    check_kernel_args(input, rois, None, None, pooled, spatial_scale, 0, 0.0, position_sensitive)
    with torch.no_grad():
        return _kernels(input).integer_pool(
            input, rois, pooled, spatial_scale, mode, position_sensitive
        )


@_integer_op.register_fake
def _(input, rois, pooled_h, pooled_w, spatial_scale, mode, position_sensitive):
    c_out = _out_channels(input, pooled_h, pooled_w, position_sensitive)
    return input.new_empty(rois.shape[0], c_out, pooled_h, pooled_w)


@torch.library.custom_op("torchdcn::roi_integer_pool_backward", mutates_args=())
def _integer_backward_op(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    mode: str,
    position_sensitive: bool,
) -> Tensor:
    """``[N, C, H, W]``: the gradient of the input."""
    _check_mode(mode, position_sensitive)
    pooled = (pooled_h, pooled_w)
    check_kernel_args(
        input, rois, None, None, pooled, spatial_scale, 0, 0.0, position_sensitive, grad
    )
    return _kernels(input).integer_pool_backward(
        grad.contiguous(), input, rois, pooled, spatial_scale, mode, position_sensitive
    )


@_integer_backward_op.register_fake
def _(grad, input, *args):
    return torch.empty_like(input)


def _integer_setup(ctx, inputs, output):
    input, rois, *values = inputs
    ctx.save_for_backward(input, rois)
    ctx.values = values


def _integer_backward(ctx, grad):
    input, rois = ctx.saved_tensors
    with values_checked():  # the forward op (or its caller) checked these saved rois
        g_input = torch.ops.torchdcn.roi_integer_pool_backward(grad, input, rois, *ctx.values)
    return g_input, None, *([None] * len(ctx.values))


_integer_op.register_autograd(_integer_backward, setup_context=_integer_setup)


# --------------------------------------------------------------------------------------------
# Aligned bins


@torch.library.custom_op("torchdcn::roi_aligned_pool", mutates_args=())
def _aligned_op(
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
    position_sensitive: bool,
) -> Tensor:
    values = (spatial_scale, sampling_ratio, aligned, gamma, position_sensitive)
    pooled = (pooled_h, pooled_w)
    check_kernel_args(
        input, rois, offset, mask, pooled, spatial_scale, sampling_ratio, gamma, position_sensitive
    )
    with torch.no_grad():
        return _kernels(input).aligned_pool(input, rois, offset, mask, pooled, *values)


@_aligned_op.register_fake
def _(input, rois, offset, mask, pooled_h, pooled_w, *args):
    c_out = _out_channels(input, pooled_h, pooled_w, args[-1])
    return input.new_empty(rois.shape[0], c_out, pooled_h, pooled_w)


@torch.library.custom_op("torchdcn::roi_aligned_pool_backward", mutates_args=())
def _aligned_backward_op(
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
    position_sensitive: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (input, offset, mask); empty tensors for an absent offset or mask."""
    values = (spatial_scale, sampling_ratio, aligned, gamma, position_sensitive)
    pooled = (pooled_h, pooled_w)
    check_kernel_args(
        input,
        rois,
        offset,
        mask,
        pooled,
        spatial_scale,
        sampling_ratio,
        gamma,
        position_sensitive,
        grad,
    )
    grads = _kernels(input).aligned_pool_backward(
        grad.contiguous(), input, rois, offset, mask, pooled, *values
    )
    # one fresh empty tensor each: outputs of a custom op may not alias
    return tuple(input.new_empty(0) if g is None else g for g in grads)  # type: ignore[return-value]


@_aligned_backward_op.register_fake
def _(grad, input, rois, offset, mask, *args):
    return (
        torch.empty_like(input),
        input.new_empty(0) if offset is None else torch.empty_like(offset),
        input.new_empty(0) if mask is None else torch.empty_like(mask),
    )


def _aligned_setup(ctx, inputs, output):
    input, rois, offset, mask, *values = inputs
    ctx.save_for_backward(input, rois, offset, mask)
    ctx.values = values


def _aligned_backward(ctx, grad):
    input, rois, offset, mask = ctx.saved_tensors
    with values_checked():  # the forward op (or its caller) checked these saved rois
        g_input, g_offset, g_mask = torch.ops.torchdcn.roi_aligned_pool_backward(
            grad, input, rois, offset, mask, *ctx.values
        )
    return (
        g_input,
        None,
        None if offset is None else g_offset,
        None if mask is None else g_mask,
        *([None] * len(ctx.values)),
    )


_aligned_op.register_autograd(_aligned_backward, setup_context=_aligned_setup)
