"""Deformable convolution v1 and modulated deformable convolution v2 (SPEC sections 2-3)."""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _deform_conv_ref, _onnx
from ._checks import (
    autocast_dtype,
    autocast_off,
    check_same,
    check_shape,
    check_tensor,
    pair,
    script_pair,
)  # fmt: skip
from ._dispatch import compute_dtype, kernel_backend
from ._types import IntPair  # noqa: F401  (re-exported by torchdcn.ops)


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
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
            ``C_out = 0`` gives an empty ``[N, 0, H_out, W_out]`` output (and zero gradients).
        bias (Tensor[C_out], optional): added to every output position.
        stride, dilation (int or (int, int)): as for :func:`torch.nn.functional.conv2d`, which
            also takes a NumPy integer, a 0-d integer tensor or a one-element sequence.
        padding (int, (int, int), ``'valid'`` or ``'same'``): as for ``conv2d``. ``'same'``
            needs stride 1 and pads ``dil*(k-1)`` in total, the extra cell (even kernels) at the
            bottom/right as torch does; zeros added there change no sampled value.
        mask (Tensor[N, G * kh * kw, H_out, W_out], optional): modulation scalars (v2); channel
            ``g*K + k``. ``None`` gives v1.

    Returns:
        Tensor[N, C_out, H_out, W_out], with
        ``H_out = (H + 2*pad_h - dil_h*(kh - 1) - 1) // stride_h + 1`` (likewise ``W_out``);
        channels-last in memory when ``input`` or ``weight`` is (as ``conv2d`` on CPU).

    Differentiable in ``input``, ``offset``, ``mask``, ``weight`` and ``bias``. A sampling point
    outside ``[-1, H) x [-1, W)`` reads 0 and its offset gets zero gradient; a point exactly on
    -1 reads 0 but its offset gets the right-hand derivative, as in torchvision (the border taps
    of a fresh padded layer sit there). A NaN or infinite offset reads 0 with zero gradient
    (nothing out of bounds is touched), so the output stays finite. float16 and bfloat16
    compute in float32 and return the input's dtype; under ``torch.autocast`` every tensor is
    cast to the autocast dtype first, as for ``conv2d``.
    Tensors of any strides are accepted (they are made dense before any kernel sees them).

    ``torch.jit.script`` compiles callers of this function; the scripted path takes ``int``
    or ``(int, int)`` (not lists) for ``stride``/``padding``/``dilation``, checks the tensors
    inside the registered op and ignores ``torch.autocast``.

    Example:
        >>> x = torch.randn(2, 8, 16, 16)
        >>> w = torch.randn(4, 8, 3, 3)
        >>> off = torch.zeros(2, 2 * 3 * 3, 16, 16)
        >>> deform_conv2d(x, off, w, padding=1).shape
        torch.Size([2, 4, 16, 16])
    """
    if torch.jit.is_scripting():
        return _deform_conv2d_scripted(input, offset, weight, bias, stride, padding, dilation, mask)
    return _deform_conv2d_eager(input, offset, weight, bias, stride, padding, dilation, mask)


def string_padding(
    padding: str, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``(pad_h, pad_w, extra_h, extra_w)`` for ``padding='valid'`` or ``'same'``: symmetric
    padding plus ``extra`` zero rows/columns at the bottom/right (torch's rule for even kernels).
    """
    if padding == "valid":
        return 0, 0, 0, 0
    if padding != "same":
        raise ValueError(
            f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding}"
        )
    if stride[0] != 1 or stride[1] != 1:
        raise ValueError(
            f"padding='same' needs stride 1 (as for conv2d), got stride=({stride[0]}, {stride[1]})"
        )
    total_h = dilation[0] * (kernel[0] - 1)
    total_w = dilation[1] * (kernel[1] - 1)
    return total_h // 2, total_w // 2, total_h - 2 * (total_h // 2), total_w - 2 * (total_w // 2)


def _deform_conv2d_scripted(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int] | str,
    dilation: int | tuple[int, int],
    mask: Tensor | None,
) -> Tensor:
    """The TorchScript path: argument normalisation only; the op checks the tensors."""
    st, dil = script_pair(stride), script_pair(dilation)
    if isinstance(padding, str):
        kernel = (weight.shape[2], weight.shape[3])
        ph, pw, eh, ew = string_padding(padding, kernel, st, dil)
        if eh > 0 or ew > 0:
            input = F.pad(input, [0, ew, 0, eh])
    else:
        ph, pw = script_pair(padding)
    out_dtype = input.dtype
    low = out_dtype == torch.float16 or out_dtype == torch.bfloat16
    if low and input.device.type != "cuda" and weight.dtype == out_dtype:
        input, offset, weight = input.float(), offset.float(), weight.float()
        if bias is not None:
            bias = bias.float()
        if mask is not None:
            mask = mask.float()
    out = torch.ops.torchdcn.deform_conv2d(
        input, offset, mask, weight, bias, st[0], st[1], ph, pw, dil[0], dil[1]
    )
    return out.to(out_dtype)


@torch.jit.unused
def _deform_conv2d_eager(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int] | str,
    dilation: int | tuple[int, int],
    mask: Tensor | None,
) -> Tensor:
    """The Python path: conv2d-style argument parsing, checks naming each argument, autocast
    and the float32 upcast of 16-bit tensors, then the registered op."""
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    extra = (0, 0)
    if isinstance(padding, str):
        check_tensor(weight, "weight", 4, "[C_out, C_in / groups, kh, kw]")
        ph, pw, eh, ew = string_padding(padding, tuple(weight.shape[2:]), stride, dilation)
        padding, extra = (ph, pw), (eh, ew)
    else:
        padding = pair(padding, "padding")
    dtype = autocast_dtype(input)
    if dtype is not None:
        input, offset, weight = (_cast(t, dtype) for t in (input, offset, weight))
        bias, mask = _cast(bias, dtype), _cast(mask, dtype)
    if extra != (0, 0):
        check_tensor(input, "input", 4, "[N, C_in, H, W]")
        channels_last = _is_channels_last(input)
        input = F.pad(input, (0, extra[1], 0, extra[0]))
        if channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
    check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask)
    if _onnx.in_dynamo_onnx_export():  # the standard DeformConv node, no translation table
        return _onnx.deform_conv_node(input, offset, mask, weight, bias, stride, padding, dilation)
    out_dtype = input.dtype
    # the Triton kernels take float16/bfloat16 as they are (float32 accumulation); others upcast
    if compute_dtype(input.device, out_dtype) != out_dtype:
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


def _kernel(t: Tensor) -> ModuleType | None:
    """The fast kernel module for ``t``'s device and dtype, None for the reference."""
    backend = kernel_backend(t.device, t.dtype)
    if backend == "numba":
        from . import _deform_conv_cpu

        return _deform_conv_cpu
    if backend == "triton":
        from . import _deform_conv_triton

        return _deform_conv_triton
    return None


def _is_channels_last(t: Tensor) -> bool:
    """Dense channels-last and not also plain contiguous (``[N, C, 1, 1]`` and the like are)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _output_format(input: Tensor, weight: Tensor) -> torch.memory_format:
    """conv2d's rule on CPU: channels-last out when the input or the weight is channels-last."""
    if _is_channels_last(input) or _is_channels_last(weight):
        return torch.channels_last
    return torch.contiguous_format


def _dense(t: Tensor | None) -> Tensor | None:
    """The one rule of every kernel entry point: kernels (Numba, Triton) index
    raw memory as dense row-major, so every tensor is made so (no copy when it already is)."""
    return None if t is None else t.contiguous()


def _empty_output(input: Tensor, offset: Tensor, weight: Tensor, device=None) -> Tensor:
    """An output buffer ``[N, C_out, H_out, W_out]`` in the memory format the op promises (on
    ``device`` if given, e.g. ``"meta"`` to learn its strides without allocating)."""
    size = (input.shape[0], weight.shape[0], offset.shape[2], offset.shape[3])
    fmt = _output_format(input, weight)
    device = input.device if device is None else device
    return torch.empty(size, dtype=input.dtype, device=device, memory_format=fmt)


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
    # also guards callers that reach the op directly (TorchScript, torch.ops): nothing unchecked
    # reaches a kernel that reads raw memory
    check_deform_conv2d_args(input, offset, weight, bias, *args, mask)
    if input.shape[0] == 0 or weight.shape[0] == 0:  # empty batch or C_out = 0
        return _empty_output(input, offset, weight)
    want = _empty_output(input, offset, weight, "meta")
    input, offset, mask, weight, bias = (_dense(t) for t in (input, offset, mask, weight, bias))
    kernel = _kernel(input)
    if kernel is None:
        with torch.no_grad():
            out = _deform_conv_ref.deform_conv2d_reference(input, offset, mask, weight, bias, *args)
    else:
        out = kernel.forward(input, offset, mask, weight, bias, *args)
    if out.stride() == want.stride():
        return out
    return torch.empty_like(want, device=out.device).copy_(out)


@_deform_conv2d_op.register_fake
def _(input, offset, mask, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    return _empty_output(input, offset, weight)


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
    """Gradients (input, offset, mask, weight, bias), all contiguous; mask/bias ones are empty
    when absent. ``grad`` may have any strides (expanded by ``sum()``, channel-major, ...)."""
    args = ((stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w))
    grad, input, offset, mask, weight, bias = (
        _dense(t) for t in (grad, input, offset, mask, weight, bias)
    )
    if grad.numel() == 0:
        # empty batch or C_out = 0: nothing flows back (and no kernel gets zero-size operands)
        grads = tuple(None if t is None else torch.zeros_like(t) for t in
                      (input, offset, mask, weight, bias))  # fmt: skip
    else:
        kernel = _kernel(input)
        if kernel is None:
            grads = _reference_backward(grad, input, offset, mask, weight, bias, *args)
        else:
            grads = kernel.backward(grad, input, offset, mask, weight, bias, *args)
    # absent mask/bias get empty tensors, one each (outputs of a custom op may not alias)
    return tuple(input.new_empty(0) if g is None else g.contiguous() for g in grads)  # type: ignore[return-value]


@_deform_conv2d_backward_op.register_fake
def _(grad, input, offset, mask, weight, bias, *args):
    dense = torch.contiguous_format
    return (
        torch.empty_like(input, memory_format=dense),
        torch.empty_like(offset, memory_format=dense),
        input.new_empty(0) if mask is None else torch.empty_like(mask, memory_format=dense),
        torch.empty_like(weight, memory_format=dense),
        input.new_empty(0) if bias is None else torch.empty_like(bias, memory_format=dense),
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
