"""Deformable convolution modules that own their offset (and mask) predictors (SPEC 2-3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..ops._checks import pair
from ..ops.deform_conv import IntPair, deform_conv2d


class DeformConv2d(nn.Module):
    """Deformable convolution v1: a drop-in replacement for :class:`torch.nn.Conv2d`.

    A plain convolution ``conv_offset`` on the same input, with this layer's kernel size, stride,
    padding and dilation, predicts ``2 * offset_groups * kh * kw`` offset channels. It is
    zero-initialised, so a fresh layer computes exactly what ``nn.Conv2d`` with the same weight
    computes; its learning rate is ``offset_lr_mult`` times the base rate (1.0 in v1), which
    :func:`torchdcn.nn.param_groups` applies. See :func:`torchdcn.ops.deform_conv2d` for the math.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as
            ``nn.Conv2d`` (zero padding only).
        offset_groups: number of channel groups ``G`` that share one offset field (divides
            ``in_channels``).
        offset_lr_mult: learning-rate multiplier of the predictor (default: 1.0 for v1, 0.1 v2).

    Shape:
        ``x``: ``[N, in_channels, H, W]`` -> ``[N, out_channels, H_out, W_out]``, sizes as
        ``nn.Conv2d``.

    Example:
        >>> layer = DeformConv2d(16, 32, 3, padding=1)
        >>> layer(torch.randn(2, 16, 20, 20)).shape
        torch.Size([2, 32, 20, 20])
    """

    modulated: bool = False
    default_offset_lr_mult: float = 1.0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        offset_groups: int = 1,
        offset_lr_mult: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        if offset_groups <= 0 or in_channels % offset_groups:
            raise ValueError(f"offset_groups={offset_groups} must divide in_channels={in_channels}")
        factory = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding")
        self.dilation = pair(dilation, "dilation")
        self.groups = groups
        self.offset_groups = offset_groups
        self.offset_lr_mult = (
            self.default_offset_lr_mult if offset_lr_mult is None else float(offset_lr_mult)
        )
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, kh, kw, **factory)
        )
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        per_point = 3 if self.modulated else 2
        self.conv_offset = nn.Conv2d(
            in_channels,
            per_point * offset_groups * kh * kw,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=True,
            **factory,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialisation for the weight; zeros for the predictor."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def offset_parameters(self) -> list[nn.Parameter]:
        """The predictor's parameters, trained at ``offset_lr_mult`` times the base rate."""
        return list(self.conv_offset.parameters())

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Offsets ``[N, 2GK, H_out, W_out]`` (and for v2 masks ``[N, GK, H_out, W_out]``)."""
        out = self.conv_offset(x)
        if not self.modulated:
            return out, None
        n_off = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        return out[:, :n_off], out[:, n_off:].sigmoid()

    def forward(
        self, x: Tensor, offset: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """Predict offsets (and masks) from ``x``, or use the ``offset``/``mask`` given."""
        if offset is None:
            if mask is not None:
                raise ValueError("mask was given without offset; pass both or neither")
            offset, mask = self.predict(x)
        elif self.modulated and mask is None:
            gk = self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
            raise ValueError(
                f"{type(self).__name__} needs a mask with external offsets; pass mask of shape "
                f"[N, G * kh * kw = {gk}, H_out, W_out]"
            )
        elif not self.modulated and mask is not None:
            raise ValueError("DeformConv2d (v1) takes no mask; use ModulatedDeformConv2d")
        return deform_conv2d(
            x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask
        )

    @classmethod
    def from_conv2d(
        cls, conv: nn.Conv2d, offset_groups: int = 1, offset_lr_mult: float | None = None
    ) -> DeformConv2d:
        """A deformable twin of a trained ``conv`` with its weights; the output is unchanged at
        initialisation (v2: half of it, since the masks start at 0.5)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(
                f"only numeric zero padding converts, got padding={conv.padding!r}, "
                f"padding_mode={conv.padding_mode!r}"
            )
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            offset_groups,
            offset_lr_mult,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        new.train(conv.training)
        return new

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        s += f", stride={self.stride}" if self.stride != (1, 1) else ""
        s += f", padding={self.padding}" if self.padding != (0, 0) else ""
        s += f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        s += f", groups={self.groups}" if self.groups != 1 else ""
        s += f", offset_groups={self.offset_groups}" if self.offset_groups != 1 else ""
        s += ", bias=False" if self.bias is None else ""
        if self.offset_lr_mult != self.default_offset_lr_mult:
            s += f", offset_lr_mult={self.offset_lr_mult}"
        return s


class ModulatedDeformConv2d(DeformConv2d):
    """Modulated deformable convolution v2: offsets and modulation masks from one predictor.

    ``conv_offset`` predicts ``3 * offset_groups * kh * kw`` channels: the first ``2GK`` are
    offsets, the last ``GK`` go through a sigmoid to give masks in [0, 1]. It is zero-initialised
    (offsets 0, masks 0.5, so a fresh layer computes half of ``nn.Conv2d`` without its bias, plus
    the bias) and trains at 0.1 times the base learning rate (SPEC section 3). Arguments and shapes
    as :class:`DeformConv2d`; ``forward(x, offset, mask)`` takes external offsets and masks.
    """

    modulated = True
    default_offset_lr_mult = 0.1
