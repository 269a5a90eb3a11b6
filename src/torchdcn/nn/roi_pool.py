"""RoI pooling modules: thin wrappers of the ops, and the deformable ones with their offset branches
(SPEC section 4).

The deformable modules follow :class:`torchdcn.nn.DeformConv2d`'s protocol: the offset branch is
zero-initialised where SPEC says so (a fresh module computes exactly the plain pooling; v2: half of
it, masks start at 0.5), and ``offset_parameters()`` with ``offset_lr_mult`` tell
:func:`torchdcn.nn.param_groups` the branch's learning-rate multiplier.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from ..ops import (
    IntPair,
    RoIs,
    deform_ps_roi_pool,
    deform_roi_pool,
    pair,
    ps_roi_align,
    ps_roi_pool,
    roi_align,
    roi_pool,
)
from ._roi_module_checks import channels_alias, check_branch_size, check_roi_module_args


class _Pool(nn.Module):
    """Shared constructor and ``__repr__`` of the plain pooling modules."""

    def __init__(
        self,
        output_size: IntPair,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = pair(output_size, "output_size")
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def extra_repr(self) -> str:
        s = f"output_size={self.output_size}, spatial_scale={self.spatial_scale:g}"
        if isinstance(self, (RoIAlign, PSRoIAlign)):
            s += f", sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        return s


class RoIPool(_Pool):
    """torchvision's ``RoIPool``: max pooling over integer bins; ``mode="avg"`` is v1's average
    (Eq. 5). See :func:`torchdcn.ops.roi_pool`.

    Shape: ``input [N, C, H, W]``, ``rois [K, 5]`` (or a list of ``[K_i, 4]``) ->
    ``[K, C, ph, pw]``.
    """

    def __init__(self, output_size: IntPair, spatial_scale: float = 1.0, mode: str = "max") -> None:
        super().__init__(output_size, spatial_scale)
        if mode not in ("max", "avg"):
            raise ValueError(f'mode must be "max" (torchvision) or "avg" (v1 Eq. 5), got {mode!r}')
        self.mode = mode

    def forward(self, input: Tensor, rois: RoIs) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale, self.mode)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", mode='avg'" if self.mode != "max" else "")


class RoIAlign(_Pool):
    """torchvision's ``RoIAlign`` (same arguments and defaults, ``aligned=False``). See
    :func:`torchdcn.ops.roi_align`.

    Shape: ``input [N, C, H, W]``, ``rois [K, 5]`` (or a list of ``[K_i, 4]``) ->
    ``[K, C, ph, pw]``.
    """

    def forward(self, input: Tensor, rois: RoIs) -> Tensor:
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )


class PSRoIPool(_Pool):
    """torchvision's ``PSRoIPool``: position-sensitive average pooling (R-FCN). See
    :func:`torchdcn.ops.ps_roi_pool`.

    Shape: ``input [N, C_out * ph * pw, H, W]``, ``rois [K, 5]`` -> ``[K, C_out, ph, pw]``.
    """

    def __init__(self, output_size: IntPair, spatial_scale: float = 1.0) -> None:
        super().__init__(output_size, spatial_scale)

    def forward(self, input: Tensor, rois: RoIs) -> Tensor:
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)


class PSRoIAlign(_Pool):
    """torchvision's ``PSRoIAlign`` (which always shifts by -0.5 cell: ``aligned=True`` here, the
    default). See :func:`torchdcn.ops.ps_roi_align`.

    Shape: ``input [N, C_out * ph * pw, H, W]``, ``rois [K, 5]`` -> ``[K, C_out, ph, pw]``.
    """

    def __init__(
        self,
        output_size: IntPair,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = True,
    ) -> None:
        super().__init__(output_size, spatial_scale, sampling_ratio, aligned)

    def forward(self, input: Tensor, rois: RoIs) -> Tensor:
        return ps_roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )


class DeformRoIPool(nn.Module):
    """Deformable RoI pooling (v1): RoIAlign -> fc -> ``2 * ph * pw`` normalised offsets ->
    :func:`torchdcn.ops.deform_roi_pool`.

    The fc ``offset_fc`` reads the plain pooled features (flattened ``C * ph * pw``) and is
    zero-initialised, so a fresh module computes exactly :func:`torchdcn.ops.roi_align` with the
    same arguments; it trains at ``offset_lr_mult`` (0.01, v1's Faster R-CNN) times the base rate,
    applied by :func:`torchdcn.nn.param_groups`. Its first ``ph * pw`` outputs are the x offsets,
    the next ``ph * pw`` the y offsets (``[R, 2, ph, pw]``), scaled by ``gamma`` and the RoI's width
    and height in the op.

    Args:
        in_channels: channels ``C`` of the feature map.
        output_size (int or (int, int)): bins ``(ph, pw)`` per RoI.
        spatial_scale: feature cells per image pixel (1/16 for a stride-16 map).
        sampling_ratio: samples per bin along each axis; ``<= 0`` adaptive; at most 64
            (``MAX_ADAPTIVE_GRID``), a ValueError above.
        gamma: offset scale (0.1).
        aligned: shift RoIs by -0.5 cell (see :func:`torchdcn.ops.roi_align`).
        offset_lr_mult: learning-rate multiplier of the offset branch (default 0.01).
        output_channels (keyword only): mmcv's name for ``in_channels``.

    The order is ``(in_channels, output_size, ...)``; a call in mmcv's order
    (``DeformRoIPool((7, 7), 1 / 16)``, ``DeformRoIPoolPack(7, 256)``, ``(7, 64)``) raises a
    ``TypeError`` or ``ValueError`` that says so (at most 64 bins per side, no more than 14 bins
    per side where they outnumber the channels; the offset branch at most 2**30 parameters), see
    :mod:`torchdcn.nn._roi_module_checks`. Below that the two orders cannot be told apart:
    ``DeformRoIPool(7, 14)`` is 7 channels in 14 x 14 bins.

    Shape:
        ``input [N, C, H, W]``, ``rois [R, 5]`` (or a list of per-image ``[R_i, 4]``) in image
        pixels -> ``[R, C, ph, pw]``.

    Example:
        >>> pool = DeformRoIPool(256, 7, spatial_scale=1 / 16, sampling_ratio=2)
        >>> pool(torch.randn(1, 256, 38, 50), torch.tensor([[0, 32.0, 32.0, 320.0, 400.0]])).shape
        torch.Size([1, 256, 7, 7])
    """

    MODULATED = False
    default_offset_lr_mult: float = 0.01

    def __init__(
        self,
        in_channels: int | None = None,
        output_size: IntPair | None = None,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        gamma: float = 0.1,
        aligned: bool = True,
        offset_lr_mult: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        output_channels: int | None = None,
        deform_fc_channels: int | None = None,
    ) -> None:
        super().__init__()
        if deform_fc_channels is not None:
            raise TypeError(
                f"{type(self).__name__} has v1's offset branch, one fc with no hidden layer, so "
                f"it takes no deform_fc_channels (got {deform_fc_channels!r}); mmcv's "
                "DeformRoIPoolPack has a 3-layer fc of that width, a different module whose "
                "weights do not map onto this one"
            )
        in_channels = channels_alias(in_channels, output_channels, type(self).__name__)
        self.in_channels = in_channels
        # an instance attribute (not a class one) so torch.jit.script sees a plain typed attribute
        self.modulated: bool = self.MODULATED
        self.output_size = check_roi_module_args(
            type(self).__name__, "in_channels", in_channels, output_size, spatial_scale
        )
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = sampling_ratio
        self.gamma = float(gamma)
        self.aligned = aligned
        self.offset_lr_mult = (
            self.default_offset_lr_mult if offset_lr_mult is None else float(offset_lr_mult)
        )
        check_branch_size(type(self).__name__, self._branch_parameters(), self.output_size)
        self.offset_fc = self._make_offset_branch(device, dtype)
        self.reset_parameters()

    @property
    def _bins(self) -> int:
        return self.output_size[0] * self.output_size[1]

    def _branch_parameters(self) -> int:
        return (self.in_channels * self._bins + 1) * 2 * self._bins

    def _make_offset_branch(self, device, dtype) -> nn.Module:
        return nn.Linear(self.in_channels * self._bins, 2 * self._bins, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        """Zeros for the offset fc."""
        nn.init.zeros_(self.offset_fc.weight)
        nn.init.zeros_(self.offset_fc.bias)

    def offset_parameters(self) -> list[nn.Parameter]:
        """The offset branch's parameters, trained at ``offset_lr_mult`` times the base rate."""
        return list(self.offset_fc.parameters())

    def _plain(self, input: Tensor, rois: RoIs) -> Tensor:
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def predict(self, input: Tensor, rois: RoIs) -> tuple[Tensor, Tensor | None]:
        """Normalised offsets ``[R, 2, ph, pw]`` (and for v2 masks ``[R, 1, ph, pw]``)."""
        if input.dim() != 4 or input.shape[1] != self.in_channels:
            raise ValueError(
                f"this module expects input [N, {self.in_channels}, H, W], got {list(input.shape)}"
            )
        out = self.offset_fc(self._plain(input, rois).flatten(1))
        r, (ph, pw) = out.shape[0], self.output_size
        offset = out[:, : 2 * self._bins].reshape(r, 2, ph, pw)
        if not self.modulated:
            return offset, None
        return offset, out[:, 2 * self._bins :].sigmoid().reshape(r, 1, ph, pw)

    def forward(self, input: Tensor, rois: RoIs) -> Tensor:
        offset, mask = self.predict(input, rois)
        return deform_roi_pool(
            input, rois, offset, self.output_size, self.spatial_scale, self.sampling_ratio,
            self.gamma, mask, self.aligned,
        )  # fmt: skip

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, output_size={self.output_size}"
        s += f", spatial_scale={self.spatial_scale:g}"
        s += f", sampling_ratio={self.sampling_ratio}" if self.sampling_ratio != -1 else ""
        s += f", gamma={self.gamma:g}" if self.gamma != 0.1 else ""
        s += ", aligned=False" if not self.aligned else ""
        if self.offset_lr_mult != self.default_offset_lr_mult:
            s += f", offset_lr_mult={self.offset_lr_mult:g}"
        return s


class ModulatedDeformRoIPool(DeformRoIPool):
    """Modulated deformable RoI pooling (v2): RoIAlign -> fc ``hidden`` -> ReLU -> fc ``hidden``
    -> ReLU -> fc ``3 * ph * pw`` -> offsets and masks -> :func:`torchdcn.ops.deform_roi_pool`.

    The two hidden fcs (1024 wide in v2) are initialised from a Gaussian of std 0.01 with zero
    bias, the last fc with zeros: offsets start at 0 and masks (its last ``ph * pw`` outputs
    through a sigmoid) at 0.5, so a fresh module computes exactly half of
    :func:`torchdcn.ops.roi_align`. The first ``2 * ph * pw`` outputs are the normalised offsets
    (x then y), scaled by ``gamma`` and the RoI's width and height. v2 trains the branch at the
    base learning rate (``offset_lr_mult = 1``).

    Args:
        in_channels, output_size, spatial_scale, sampling_ratio, gamma, aligned, offset_lr_mult:
            as :class:`DeformRoIPool` (``offset_lr_mult`` default 1.0; ``sampling_ratio=2`` in v2).
        hidden_channels: width of the two hidden fcs (1024); mmcv's keyword
            ``deform_fc_channels`` too.

    Shape:
        ``input [N, C, H, W]``, ``rois [R, 5]`` (or a list of per-image ``[R_i, 4]``) ->
        ``[R, C, ph, pw]``.
    """

    MODULATED = True
    default_offset_lr_mult = 1.0

    def __init__(
        self,
        in_channels: int | None = None,
        output_size: IntPair | None = None,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        gamma: float = 0.1,
        aligned: bool = True,
        offset_lr_mult: float | None = None,
        hidden_channels: int = 1024,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        output_channels: int | None = None,
        deform_fc_channels: int | None = None,
    ) -> None:
        if deform_fc_channels is not None:  # mmcv's name
            if hidden_channels not in (1024, deform_fc_channels):
                raise ValueError(
                    f"hidden_channels={hidden_channels} and deform_fc_channels="
                    f"{deform_fc_channels} (mmcv's name for it) differ"
                )
            hidden_channels = deform_fc_channels
        if isinstance(hidden_channels, bool) or not isinstance(hidden_channels, numbers.Integral):
            raise TypeError(f"hidden_channels must be an int, got {hidden_channels!r}")
        if hidden_channels <= 0:
            raise ValueError(f"hidden_channels must be positive, got {hidden_channels}")
        self.hidden_channels = hidden_channels
        super().__init__(
            in_channels, output_size, spatial_scale, sampling_ratio, gamma, aligned,
            offset_lr_mult, device, dtype, output_channels=output_channels,
        )  # fmt: skip

    def _branch_parameters(self) -> int:
        h = self.hidden_channels
        return (self.in_channels * self._bins + 1) * h + (h + 1) * h + (h + 1) * 3 * self._bins

    def _make_offset_branch(self, device, dtype) -> nn.Module:
        factory = {"device": device, "dtype": dtype}
        hidden = self.hidden_channels
        return nn.Sequential(
            nn.Linear(self.in_channels * self._bins, hidden, **factory),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden, **factory),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 3 * self._bins, **factory),
        )

    def reset_parameters(self) -> None:
        """Gaussian (std 0.01) hidden fcs, zero last fc; zero biases."""
        first, _, second, _, last = self.offset_fc
        for fc in (first, second):
            nn.init.normal_(fc.weight, std=0.01)
            nn.init.zeros_(fc.bias)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (
            f", hidden_channels={self.hidden_channels}" if self.hidden_channels != 1024 else ""
        )


class DeformPSRoIPool(nn.Module):
    """Deformable position-sensitive RoI pooling (R-FCN, v1): a 1x1 conv on the feature map makes
    full-resolution offset fields, PS RoIAlign of the fields gives each RoI's offsets, then
    :func:`torchdcn.ops.deform_ps_roi_pool` pools the score maps.

    ``conv_offset`` has ``2 * ph * pw * C'`` output channels (``C' = out_channels``, one (x, y)
    pair per class, or 1 when ``class_agnostic``), laid out ``[2 * C', ph, pw]`` so PS pooling of
    the fields gives offsets ``[R, 2 * C', ph, pw]``. It is zero-initialised (a fresh module
    computes exactly :func:`torchdcn.ops.ps_roi_align`) and trains at ``offset_lr_mult`` (1.0, the
    v1 default) times the base rate.

    Args:
        out_channels: output channels ``C_out`` (``C + 1`` classes in R-FCN); the score maps have
            ``C_out * ph * pw`` channels.
        output_size (int or (int, int)): bins ``(ph, pw)`` per RoI (7 in R-FCN).
        spatial_scale: feature cells per image pixel.
        sampling_ratio: samples per bin along each axis; ``<= 0`` adaptive; at most 64
            (``MAX_ADAPTIVE_GRID``), a ValueError above.
        gamma: offset scale (0.1).
        aligned: shift RoIs by -0.5 cell (see :func:`torchdcn.ops.roi_align`).
        class_agnostic: one offset field pair shared by all classes.
        offset_in_channels: channels of the map the offset conv reads, when it is not the score
            maps (pass that map as ``forward(..., feature=...)``).
        offset_lr_mult: learning-rate multiplier of ``conv_offset`` (default 1.0).

    Shape:
        ``input [N, C_out * ph * pw, H, W]``, ``rois [R, 5]`` (or a list of per-image
        ``[R_i, 4]``), optional ``feature [N, offset_in_channels, H, W]`` -> ``[R, C_out, ph, pw]``.
    """

    default_offset_lr_mult: float = 1.0

    def __init__(
        self,
        out_channels: int,
        output_size: IntPair,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        gamma: float = 0.1,
        aligned: bool = True,
        class_agnostic: bool = False,
        offset_in_channels: int | None = None,
        offset_lr_mult: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.output_size = check_roi_module_args(
            type(self).__name__, "out_channels", out_channels, output_size, spatial_scale
        )
        self.out_channels = out_channels
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = sampling_ratio
        self.gamma = float(gamma)
        self.aligned = aligned
        self.class_agnostic = class_agnostic
        bins = self.output_size[0] * self.output_size[1]
        self.in_channels = out_channels * bins
        self.offset_in_channels = offset_in_channels or self.in_channels
        self.offset_lr_mult = (
            self.default_offset_lr_mult if offset_lr_mult is None else float(offset_lr_mult)
        )
        pairs = 1 if class_agnostic else out_channels
        check_branch_size(
            type(self).__name__, (self.offset_in_channels + 1) * 2 * pairs * bins, self.output_size
        )
        self.conv_offset = nn.Conv2d(
            self.offset_in_channels, 2 * pairs * bins, 1, device=device, dtype=dtype
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zeros for the offset conv."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def offset_parameters(self) -> list[nn.Parameter]:
        """The offset conv's parameters, trained at ``offset_lr_mult`` times the base rate."""
        return list(self.conv_offset.parameters())

    def predict(self, input: Tensor, rois: RoIs, feature: Tensor | None = None) -> Tensor:
        """Normalised offsets ``[R, 2 * C', ph, pw]`` from the conv's fields under each RoI."""
        fields = self.conv_offset(input if feature is None else feature)
        return ps_roi_align(
            fields, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def forward(self, input: Tensor, rois: RoIs, feature: Tensor | None = None) -> Tensor:
        offset = self.predict(input, rois, feature)
        return deform_ps_roi_pool(
            input, rois, offset, self.output_size, self.spatial_scale, self.sampling_ratio,
            self.gamma, self.aligned,
        )  # fmt: skip

    def extra_repr(self) -> str:
        s = f"{self.out_channels}, output_size={self.output_size}"
        s += f", spatial_scale={self.spatial_scale:g}"
        s += f", sampling_ratio={self.sampling_ratio}" if self.sampling_ratio != -1 else ""
        s += f", gamma={self.gamma:g}" if self.gamma != 0.1 else ""
        s += ", aligned=False" if not self.aligned else ""
        s += ", class_agnostic=True" if self.class_agnostic else ""
        if self.offset_in_channels != self.in_channels:
            s += f", offset_in_channels={self.offset_in_channels}"
        if self.offset_lr_mult != self.default_offset_lr_mult:
            s += f", offset_lr_mult={self.offset_lr_mult:g}"
        return s
