"""Deformable convolution v1 and modulated deformable convolution v2 (SPEC sections 2-3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import _backend, _deform_conv_ref
from ._checks import autocast_dtype, autocast_off, check_same, check_shape, check_tensor, pair

IntPair = int | Sequence[int]


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution v1 (Dai et al. 2017), or modulated v2 (Zhu et al. 2019) with ``mask``.

    ``y(p0) = sum_k w_k * x(p0 + p_k + dp_k) * m_k + b``, with ``x`` sampled bilinearly and zero
    outside the map. Same signature and tensor layouts as ``torchvision.ops.deform_conv2d`` (and
    mmcv, detectron2, ONNX ``DeformConv``), so offsets and weights trained there load unchanged.

    Args:
        input (Tensor[N, C_in, H, W]): input features.
        offset (Tensor[N, 2 * G * kh * kw, H_out, W_out]): offsets for ``G`` offset groups (``G``
            divides ``C_in``); channel ``g*2K + 2k`` is the row offset ``dy`` of kernel point
            ``k = i*kw + j`` and ``g*2K + 2k + 1`` its column offset ``dx``, in input pixels.
        weight (Tensor[C_out, C_in / groups, kh, kw]): convolution weight; ``groups`` is inferred.
        bias (Tensor[C_out], optional): added to every output position.
        stride, padding, dilation (int or (int, int)): as for :func:`torch.nn.functional.conv2d`.
        mask (Tensor[N, G * kh * kw, H_out, W_out], optional): modulation scalars (v2); channel
            ``g*K + k``. ``None`` gives v1.

    Returns:
        Tensor[N, C_out, H_out, W_out], with
        ``H_out = (H + 2*pad_h - dil_h*(kh - 1) - 1) // stride_h + 1`` (likewise ``W_out``).

    Differentiable in ``input``, ``offset``, ``mask``, ``weight`` and ``bias``. A sampling point
    outside ``(-1, H) x (-1, W)`` reads 0 and its offset gets zero gradient; a NaN or infinite
    offset is treated the same way (the point reads 0, nothing out of bounds is touched), so the
    output stays finite. float16 and bfloat16 compute in float32 and return the input's dtype;
    under ``torch.autocast`` every tensor is cast to the autocast dtype first, as for ``conv2d``.

    Example:
        >>> x = torch.randn(2, 8, 16, 16)
        >>> w = torch.randn(4, 8, 3, 3)
        >>> off = torch.zeros(2, 2 * 3 * 3, 16, 16)
        >>> deform_conv2d(x, off, w, padding=1).shape
        torch.Size([2, 4, 16, 16])
    """
    stride, padding, dilation = (
        pair(stride, "stride"),
        pair(padding, "padding"),
        pair(dilation, "dilation"),
    )
    dtype = autocast_dtype(input)
    if dtype is not None:
        input, offset, weight = (_cast(t, dtype) for t in (input, offset, weight))
        bias, mask = _cast(bias, dtype), _cast(mask, dtype)
    check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask)
    out_dtype = input.dtype
    # the Triton kernels take float16/bfloat16 as they are (float32 accumulation); others upcast
    if out_dtype in (torch.float16, torch.bfloat16) and (
        _backend.select_backend(input.device, out_dtype) != "triton"
    ):
        input, offset, weight = (t.float() for t in (input, offset, weight))
        bias = None if bias is None else bias.float()
        mask = None if mask is None else mask.float()
    with autocast_off(input):
        out = torch.ops.torchdcn.deform_conv2d(
            input, offset, mask, weight, bias, *stride, *padding, *dilation
        )
    return out.to(out_dtype)


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return t.to(dtype) if t is not None and t.is_floating_point() else t


def output_size(
    in_size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """``(H_out, W_out)`` of a convolution with these settings (as ``nn.Conv2d``)."""
    return tuple(  # type: ignore[return-value]
        (s + 2 * p - d * (k - 1) - 1) // st + 1
        for s, k, st, p, d in zip(in_size, kernel, stride, padding, dilation)
    )


def check_deform_conv2d_args(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    mask: Tensor | None,
) -> None:
    """Raise ``ValueError``/``TypeError`` naming the argument, the shape got and the one wanted."""
    check_tensor(input, "input", 4, "[N, C_in, H, W]")
    check_tensor(weight, "weight", 4, "[C_out, C_in / groups, kh, kw]")
    check_tensor(offset, "offset", 4, "[N, 2 * G * kh * kw, H_out, W_out]")
    if mask is not None:
        check_tensor(mask, "mask", 4, "[N, G * kh * kw, H_out, W_out]")
    if bias is not None:
        check_tensor(bias, "bias", 1, "[C_out]")
    check_same(input, "input", offset=offset, weight=weight, bias=bias, mask=mask)
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(
            f"stride and dilation must be >= 1 and padding >= 0, got stride={stride}, "
            f"padding={padding}, dilation={dilation}"
        )
    n, c_in, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    if c_per_group == 0 or kh == 0 or kw == 0 or c_in % c_per_group:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)}: its dim 1 (C_in / groups) must divide the "
            f"input's {c_in} channels"
        )
    groups = c_in // c_per_group
    if c_out % groups:
        raise ValueError(
            f"weight has {c_out} output channels, not divisible by groups={groups} "
            f"(C_in={c_in} / weight.shape[1]={c_per_group})"
        )
    if bias is not None:
        check_shape(bias, "bias", (c_out,), "[C_out]")
    ho, wo = output_size((h, w), (kh, kw), stride, padding, dilation)
    if ho <= 0 or wo <= 0:
        raise ValueError(
            f"input of spatial size {(h, w)} is too small for kernel {(kh, kw)} with "
            f"stride={stride}, padding={padding}, dilation={dilation}: output would be {(ho, wo)}"
        )
    k = kh * kw
    oc = offset.shape[1]
    g = oc // (2 * k)
    if oc == 0 or oc % (2 * k) or c_in % g:
        raise ValueError(
            f"offset must have 2 * G * kh * kw channels with G offset groups dividing C_in={c_in} "
            f"(kh * kw = {k}), got offset of shape {tuple(offset.shape)}"
        )
    check_shape(offset, "offset", (n, 2 * g * k, ho, wo), "[N, 2 * G * kh * kw, H_out, W_out]")
    if mask is not None:
        check_shape(mask, "mask", (n, g * k, ho, wo), "[N, G * kh * kw, H_out, W_out]")


# --------------------------------------------------------------------------------------------
# The registered op: one entry point for eager, autograd and torch.compile; it picks a kernel.


def _kernel(device: torch.device, dtype: torch.dtype):
    name = _backend.select_backend(device, dtype)
    if name == "numba":
        from . import _deform_conv_cpu

        return _deform_conv_cpu
    if name == "triton" and dtype != torch.float64:  # float64 runs the reference
        from . import _deform_conv_triton

        return _deform_conv_triton
    return None


@torch.library.custom_op("torchdcn::deform_conv2d", mutates_args=())
def _deform_conv2d_op(
    input: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dil_h: int,
    dil_w: int,
) -> Tensor:
    args = ((stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w))
    kernel = _kernel(input.device, input.dtype)
    if kernel is None:
        with torch.no_grad():
            return _deform_conv_ref.deform_conv2d_reference(
                input, offset, mask, weight, bias, *args
            )
    return kernel.forward(input, offset, mask, weight, bias, *args)


@_deform_conv2d_op.register_fake
def _(input, offset, mask, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    n, ho, wo = input.shape[0], offset.shape[2], offset.shape[3]
    return input.new_empty(n, weight.shape[0], ho, wo)


@torch.library.custom_op("torchdcn::deform_conv2d_backward", mutates_args=())
def _deform_conv2d_backward_op(
    grad: Tensor,
    input: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dil_h: int,
    dil_w: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (input, offset, mask, weight, bias); mask/bias ones are empty when absent."""
    args = ((stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w))
    kernel = _kernel(input.device, input.dtype)
    if kernel is None:
        grads = _reference_backward(grad, input, offset, mask, weight, bias, *args)
    else:
        grads = kernel.backward(grad, input, offset, mask, weight, bias, *args)
    # absent mask/bias get empty tensors, one each (outputs of a custom op may not alias)
    return tuple(input.new_empty(0) if g is None else g for g in grads)  # type: ignore[return-value]


@_deform_conv2d_backward_op.register_fake
def _(grad, input, offset, mask, weight, bias, *args):
    return (
        torch.empty_like(input),
        torch.empty_like(offset),
        input.new_empty(0) if mask is None else torch.empty_like(mask),
        torch.empty_like(weight),
        input.new_empty(0) if bias is None else torch.empty_like(bias),
    )


def _reference_backward(grad, input, offset, mask, weight, bias, stride, padding, dilation):
    """Gradients of the reference (exact derivatives of SPEC's definition), by ``torch.func.vjp``
    (plain autograd is switched off inside a custom op's backward)."""
    present = [t for t in (input, offset, mask, weight, bias) if t is not None]

    def f(*ts):
        it = iter(ts)
        args = [None if t is None else next(it) for t in (input, offset, mask, weight, bias)]
        return _deform_conv_ref.deform_conv2d_reference(*args, stride, padding, dilation)

    _, vjp = torch.func.vjp(f, *present)
    it = iter(vjp(grad))
    return tuple(None if t is None else next(it) for t in (input, offset, mask, weight, bias))


def _setup_context(ctx, inputs, output):
    input, offset, mask, weight, bias, *args = inputs
    ctx.save_for_backward(input, offset, mask, weight, bias)
    ctx.args = args


def _backward(ctx, grad):
    input, offset, mask, weight, bias = ctx.saved_tensors
    g_in, g_off, g_mask, g_w, g_b = torch.ops.torchdcn.deform_conv2d_backward(
        grad, input, offset, mask, weight, bias, *ctx.args
    )
    return (
        g_in,
        g_off,
        None if mask is None else g_mask,
        g_w,
        None if bias is None else g_b,
        *([None] * 6),
    )


_deform_conv2d_op.register_autograd(_backward, setup_context=_setup_context)
