"""Deformable convolution modules (SPEC 2-3).

Two kinds, named as in mmcv:

* :class:`DeformConv2d` (torchvision's module, same constructor, ``forward(input, offset,
  mask=None)``, state dict ``weight``/``bias``) and :class:`ModulatedDeformConv2d` (the same with a
  required mask) take their offsets from the caller and own no predictor, so no parameter is left
  unused (DDP) and a ``torchvision.ops.DeformConv2d`` state dict loads as it is.
* :class:`DeformConv2dPack` (v1) and :class:`ModulatedDeformConv2dPack` (v2) own a zero-initialised
  offset (and mask) predictor ``conv_offset`` and take only ``forward(input)``: drop-in
  replacements for ``nn.Conv2d``, as :func:`torchdcn.nn.convert_to_deformable` makes them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..ops import IntPair, deform_conv2d, pair


class DeformConv2d(nn.Module):
    """torchvision's ``DeformConv2d``: deformable convolution with offsets (and, v2, masks) given.

    Same constructor, attributes, initialisation, ``forward(input, offset, mask=None)`` and state
    dict (``weight``, ``bias``) as ``torchvision.ops.DeformConv2d``: switch the import and nothing
    else changes. The layer owns no predictor (see :class:`DeformConv2dPack` for one that does);
    the offset groups are read from the offset's shape. See :func:`torchdcn.ops.deform_conv2d`.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups, bias: as ``nn.Conv2d``.
        padding: as ``nn.Conv2d`` (zeros): an int, a pair, ``'valid'`` or ``'same'`` (stride 1).
            ``'valid'`` and a ``'same'`` that pads both sides equally are stored in
            ``self.padding`` as the pair of ints they mean; a ``'same'`` with an odd total
            (``dilation * (kernel - 1)`` odd, e.g. an even kernel) stays ``'same'``, and the
            extra zero row or column goes at the bottom or right, as ``nn.Conv2d`` puts it.
        offset_groups (keyword only; mmcv's ``deform_groups``, the older ``deformable_groups``
            also accepted): the offset groups ``G`` the offsets must have; ``forward`` then
            checks the offset's ``2 * G * kh * kw`` channels. Default: read from the offset.

    mmcv's positional order differs after ``groups`` (mmcv: ``deform_groups, bias``; here, as
    torchvision: ``bias``): a non-boolean ``bias`` is refused, so an mmcv-ordered call cannot
    silently take its offset groups for a bias.

    Shape:
        ``input [N, in_channels, H, W]``, ``offset [N, 2 * G * kh * kw, H_out, W_out]``, optional
        ``mask [N, G * kh * kw, H_out, W_out]`` -> ``[N, out_channels, H_out, W_out]``, sizes as
        ``nn.Conv2d``.

    Example:
        >>> layer = DeformConv2d(16, 32, 3, padding=1)
        >>> layer(torch.randn(2, 16, 20, 20), torch.zeros(2, 18, 20, 20)).shape
        torch.Size([2, 32, 20, 20])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair | str = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        offset_groups: int | None = None,
        deform_groups: int | None = None,
        deformable_groups: int | None = None,
    ) -> None:
        super().__init__()
        _check_bias(bias)
        groups_given = _offset_groups(offset_groups, deform_groups, deformable_groups)
        if groups_given is not None and (groups_given <= 0 or in_channels % groups_given):
            raise ValueError(f"offset_groups={groups_given} must divide in_channels={in_channels}")
        # 0: read from the offset (an int, not None, so torch.jit.script types it)
        self.offset_groups: int = 0 if groups_given is None else groups_given
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        factory = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        self.padding = _resolve_padding(padding, self.kernel_size, self.stride, self.dilation)
        self.groups = groups
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, kh, kw, **factory)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s (and torchvision's) initialisation of the weight and bias."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def _check_offset_groups(self, offset: Tensor) -> None:
        if self.offset_groups > 0:
            want = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
            if offset.dim() != 4 or offset.shape[1] != want:
                raise ValueError(
                    "offset must have 2 * offset_groups * kh * kw = " + str(want) + " channels "
                    "(offset_groups="
                    + str(self.offset_groups)
                    + "), got shape "
                    + str(list(offset.shape))
                )

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        """Deformable convolution of ``input`` at ``offset`` (v2 with ``mask``)."""
        self._check_offset_groups(offset)
        return deform_conv2d(
            input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask
        )

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, **kwargs):
        """A deformable twin of a trained ``conv`` with its weights (``kwargs``: the extra
        constructor arguments of the class, e.g. ``offset_groups`` of the Pack layers). With zero
        offsets (a fresh Pack layer) it computes what ``conv`` computes, up to float rounding (v2:
        masks start at 0.5, so half of ``conv`` without its bias, plus the bias). Any zero
        padding converts (ints, ``'same'``, ``'valid'``); another ``padding_mode`` is a
        ``ValueError``. The weight and bias keep ``requires_grad`` (a frozen conv converts to a
        frozen one whose new offset predictor trains) and the layer its train/eval mode.

        Only what ``nn.Conv2d.forward`` computes converts: a subclass with its own ``forward``
        (e.g. a weight-standardised conv) is a ``TypeError``, and a conv with a parametrised or
        hooked weight (``weight_norm``, ``spectral_norm``, pruning, any forward pre-hook) a
        ``ValueError``, since the twin would silently compute something else or lose it."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        own = [
            m
            for m in ("forward", "_conv_forward")
            if getattr(type(conv), m) is not getattr(nn.Conv2d, m)
        ]
        if own:
            raise TypeError(
                f"conv is a {type(conv).__name__}, a subclass of nn.Conv2d with its own {own[0]}; "
                "from_conv2d converts what nn.Conv2d computes, and that forward would be dropped"
            )
        hooked = hasattr(conv, "weight_g") or hasattr(conv, "weight_orig")  # old-style hooks
        if parametrize.is_parametrized(conv) or hooked or conv._forward_pre_hooks:
            raise ValueError(
                "conv has a parametrised or hooked weight (weight_norm, spectral_norm, pruning, "
                "torch.nn.utils.parametrize, a forward pre-hook); the deformable twin would keep "
                "only its current value: remove it first (e.g. torch.nn.utils.parametrize."
                "remove_parametrizations(conv, 'weight') or torch.nn.utils.prune.remove)"
            )
        if conv.padding_mode != "zeros":
            raise ValueError(
                "only zero padding converts (a deformable layer reads zeros outside the map), "
                f"got padding_mode={conv.padding_mode!r}; want 'zeros'"
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
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            **kwargs,
        )
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        new.weight.requires_grad_(conv.weight.requires_grad)
        if conv.bias is not None:
            new.bias.requires_grad_(conv.bias.requires_grad)
        new.train(conv.training)
        return new

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        s += f", stride={self.stride}" if self.stride != (1, 1) else ""
        s += f", padding={self.padding!r}" if self.padding != (0, 0) else ""
        s += f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        s += f", groups={self.groups}" if self.groups != 1 else ""
        s += ", bias=False" if self.bias is None else ""
        return s


class ModulatedDeformConv2d(DeformConv2d):
    """Modulated deformable convolution v2 with offsets and masks given: :class:`DeformConv2d`
    whose ``forward(input, offset, mask)`` requires the mask (mmcv's module of this name).
    :class:`ModulatedDeformConv2dPack` predicts its own."""

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            raise ValueError(
                "ModulatedDeformConv2d needs a mask [N, G * kh * kw, H_out, W_out]; use "
                "DeformConv2d for v1"
            )
        self._check_offset_groups(offset)
        return deform_conv2d(
            input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask
        )


class DeformConv2dPack(DeformConv2d):
    """Deformable convolution v1 that predicts its own offsets: a drop-in for ``nn.Conv2d``.

    A plain convolution ``conv_offset`` on the same input, with this layer's kernel size, stride,
    padding and dilation, predicts ``2 * offset_groups * kh * kw`` offset channels. It is
    zero-initialised, so a fresh layer computes what ``nn.Conv2d`` with the same weight computes
    (to float rounding: measured within 1e-6 relative, a different summation order); its learning
    rate is ``offset_lr_mult`` times the base rate (1.0 in v1), which
    :func:`torchdcn.nn.param_groups` applies. ``forward`` takes only the input, so the predictor
    is always used (a layer fed external offsets is :class:`DeformConv2d`).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as
            :class:`DeformConv2d` (``nn.Conv2d``'s, zero padding; ``'same'`` and ``'valid'``
            too). The predictor gets the same padding, so its offset map has the output's size.
        offset_groups: number of channel groups ``G`` that share one offset field (divides
            ``in_channels``); mmcv's ``deform_groups`` and the older ``deformable_groups`` are
            accepted as keywords for it.
        offset_lr_mult: learning-rate multiplier of the predictor (default: 1.0 for v1, 0.1 v2).

    Shape:
        ``input [N, in_channels, H, W]`` -> ``[N, out_channels, H_out, W_out]``.

    Example:
        >>> layer = DeformConv2dPack(16, 32, 3, padding=1)
        >>> layer(torch.randn(2, 16, 20, 20)).shape
        torch.Size([2, 32, 20, 20])
    """

    MODULATED = False
    DEFAULT_OFFSET_LR_MULT = 1.0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair | str = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        offset_groups: int = 1,
        offset_lr_mult: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        deform_groups: int | None = None,
        deformable_groups: int | None = None,
    ) -> None:
        _check_bias(bias)
        if deform_groups is not None or deformable_groups is not None:
            given = None if offset_groups == 1 else offset_groups
            offset_groups = _offset_groups(given, deform_groups, deformable_groups) or 1
        if offset_groups <= 0 or in_channels % offset_groups:
            raise ValueError(f"offset_groups={offset_groups} must divide in_channels={in_channels}")
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            device, dtype,
        )  # fmt: skip
        # instance attributes (not class ones) so torch.jit.script sees plain typed attributes
        self.modulated: bool = self.MODULATED
        self.offset_groups = offset_groups
        self.offset_lr_mult = (
            self.DEFAULT_OFFSET_LR_MULT if offset_lr_mult is None else float(offset_lr_mult)
        )
        kh, kw = self.kernel_size
        per_point = 3 if self.modulated else 2
        self.conv_offset = nn.Conv2d(
            in_channels,
            per_point * offset_groups * kh * kw,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=True,
            device=device,
            dtype=dtype,
        )
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialisation for the weight; zeros for the predictor."""
        super().reset_parameters()
        if hasattr(self, "conv_offset"):  # not yet built when the base constructor calls this
            nn.init.zeros_(self.conv_offset.weight)
            nn.init.zeros_(self.conv_offset.bias)

    def offset_parameters(self) -> list[nn.Parameter]:
        """The predictor's parameters, trained at ``offset_lr_mult`` times the base rate."""
        return list(self.conv_offset.parameters())

    def predict(self, input: Tensor) -> tuple[Tensor, Tensor | None]:
        """Offsets ``[N, 2GK, H_out, W_out]`` (and for v2 masks ``[N, GK, H_out, W_out]``)."""
        out = self.conv_offset(input)
        if not self.modulated:
            return out, None
        n_off = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        return out[:, :n_off], out[:, n_off:].sigmoid()

    def forward(self, input: Tensor) -> Tensor:  # type: ignore[override]
        """Predict offsets (and masks) from ``input`` and convolve."""
        offset, mask = self.predict(input)
        return deform_conv2d(
            input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask
        )

    def extra_repr(self) -> str:
        s = super().extra_repr()
        s += f", offset_groups={self.offset_groups}" if self.offset_groups != 1 else ""
        if self.offset_lr_mult != self.DEFAULT_OFFSET_LR_MULT:
            s += f", offset_lr_mult={self.offset_lr_mult}"
        return s


class ModulatedDeformConv2dPack(DeformConv2dPack):
    """Modulated deformable convolution v2 that predicts its own offsets and masks.

    ``conv_offset`` predicts ``3 * offset_groups * kh * kw`` channels: the first ``2GK`` are
    offsets, the last ``GK`` go through a sigmoid to give masks in [0, 1]. It is zero-initialised
    (offsets 0, masks 0.5, so a fresh layer computes half of ``nn.Conv2d`` without its bias, plus
    the bias) and trains at 0.1 times the base learning rate (SPEC section 3). Arguments and shapes
    as :class:`DeformConv2dPack`.
    """

    MODULATED = True
    DEFAULT_OFFSET_LR_MULT = 0.1


def _offset_groups(*values: int | None) -> int | None:
    """The offset groups given under any of ``offset_groups``, ``deform_groups`` (mmcv),
    ``deformable_groups`` (older mmcv, detectron2), or None; different values are refused."""
    given = {v for v in values if v is not None}
    if len(given) > 1:
        raise ValueError(
            "offset_groups, deform_groups and deformable_groups name the same thing; got "
            f"different values {sorted(given)}"
        )
    return given.pop() if given else None


def _check_bias(bias: object) -> None:
    if not isinstance(bias, bool) and type(bias).__name__ != "bool_":
        raise TypeError(
            f"bias must be True or False, got {bias!r}; in mmcv's positional order the 8th "
            "argument is deform_groups, here (torchvision's order) it is bias: pass "
            "deform_groups=... (or offset_groups=...) by keyword"
        )


def _resolve_padding(
    padding: IntPair | str,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int] | str:
    """``padding`` as the layer stores it: ``(pad_h, pad_w)``, or ``'same'`` when ``'same'`` pads
    one more row or column at the bottom or right than at the top or left (odd total)."""
    if not isinstance(padding, str):
        return pair(padding, "padding")
    if padding == "valid":
        return (0, 0)
    if padding != "same":
        raise ValueError(
            f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}"
        )
    if stride != (1, 1):
        raise ValueError(f"padding='same' needs stride 1 (as nn.Conv2d), got stride={stride}")
    total_h, total_w = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
    if total_h % 2 or total_w % 2:
        return "same"  # the op pads the extra row/column at the bottom/right, as conv2d does
    return (total_h // 2, total_w // 2)
