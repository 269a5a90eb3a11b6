"""The position-sensitive head of R-FCN (v1 section 2.3, SPEC section 4): score maps, (deformable)
PS RoI pooling and voting.

On the stride-16 feature map (conv5 after the 1x1 reduction to 1024 channels) two 1x1 convs make
the position-sensitive score maps: ``k * k * (C + 1)`` for the classes and ``k * k * 4`` for
class-agnostic boxes (``k * k * 4 (C + 1)`` class-specific), ``k = 7``. Channel
``(c * k + i) * k + j`` is the map of output ``c``, bin ``(i, j)``. Each RoI is split into
``k x k`` bins and bin ``(i, j)`` of output ``c`` pools only its own map; the ``k * k`` bins of
an output are then averaged ("voting", :func:`vote`) into one class logit or box delta.

Pooling choices (``pool``):

- ``"ps"``: :func:`torchdcn.ops.ps_roi_pool`, integer bins averaged (the original R-FCN);
- ``"ps_align"``: :func:`torchdcn.ops.ps_roi_align`, real-valued bins, ``sampling_ratio ** 2``
  bilinear samples per bin;
- ``"deform"``: deformable PS RoI pooling (:class:`torchdcn.nn.DeformPSRoIPool`,
  :func:`torchdcn.ops.deform_ps_roi_pool`) with ``ps_align``'s bins and samples, each bin moved
  by ``gamma * offset * (roi_w, roi_h)``, ``gamma = 0.1``. The offsets follow SPEC section 4 and
  the v1 paper ("for each RoI (also for each class)"): a 1x1 conv on the same 1024-channel map
  makes full-resolution offset fields, ``2 * k * k * (C + 1)`` channels (one (x, y) pair of
  fields per class and bin), and PS RoIAlign of those fields under each RoI gives its normalised
  offsets ``[R, 2 (C + 1), k, k]``, no fc. ``offset_class_agnostic=True`` uses one pair shared by
  all classes (``2 * k * k`` channels). The box maps get their own class-agnostic offset branch
  (``2 * k * k`` channels), as the boxes are class-agnostic by default. Offset convs are
  zero-initialised, so a fresh ``"deform"`` head computes exactly the ``"ps_align"`` head with
  the same score-map weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from ...nn import DeformPSRoIPool
from ...ops import ps_roi_align, ps_roi_pool

#: the pooling choices of :class:`PSScoreHead`
PS_POOL_KINDS = ("ps", "ps_align", "deform")


def vote(bins: Tensor) -> Tensor:
    """R-FCN's voting: the average of the ``k x k`` bins of every output.

    Shape:
        ``bins`` ``[R, D, ph, pw]`` -> ``[R, D]``.
    """
    if bins.dim() != 4:
        raise ValueError(f"bins must be [R, D, ph, pw], got shape {list(bins.shape)}")
    return bins.mean(dim=(2, 3))


class PSScoreHead(nn.Module):
    """Position-sensitive score maps + (deformable) PS RoI pooling + voting.

    Args:
        in_channels: channels of the feature map (1024 after the reduction).
        num_classes: classes including the background, ``C + 1``.
        feature_name: the map it reads (``"conv5_reduced"``).
        stride: stride of that map in input pixels (16).
        output_size: bins per side ``k`` (7).
        pool: ``"ps"``, ``"ps_align"`` or ``"deform"`` (see the module docstring).
        class_agnostic_boxes: 4 box outputs shared by the classes (the papers); ``False``:
            ``4 (C + 1)`` class-specific outputs (column ``4c + j`` for class ``c``).
        offset_class_agnostic: ``"deform"`` only: one offset pair for all classes instead of one
            per class (``False``, the default, is SPEC section 4 and the v1 paper).
        sampling_ratio: samples per bin and axis of ``"ps_align"`` / ``"deform"`` (2).
        gamma: offset scale of ``"deform"`` (0.1).
        offset_lr_mult: learning-rate multiplier of the offset convs (``None``: 1.0, v1's).

    Shape:
        ``forward(features, boxes)``: ``features`` a mapping holding ``feature_name``
        ``[N, in_channels, H, W]``; ``boxes`` one ``[R_i, 4]`` tensor of ``(x1, y1, x2, y2)``
        input pixels per image -> ``(class_logits [R, C + 1], box_deltas [R, 4B])``, ``R = sum
        R_i``, ``B = 1`` (class-agnostic) or ``C + 1``. :meth:`pool_bins` gives the bins before
        voting: ``([R, C + 1, k, k], [R, 4B, k, k])``.

    Initialisation: score convs Gaussian std 0.01, zero bias (R-FCN); offset convs zero.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        feature_name: str = "conv5_reduced",
        stride: int = 16,
        output_size: int = 7,
        pool: str = "ps",
        class_agnostic_boxes: bool = True,
        offset_class_agnostic: bool = False,
        sampling_ratio: int = 2,
        gamma: float = 0.1,
        offset_lr_mult: float | None = None,
    ) -> None:
        super().__init__()
        if pool not in PS_POOL_KINDS:
            raise ValueError(f"pool must be one of {PS_POOL_KINDS}, got {pool!r}")
        if num_classes < 2:
            raise ValueError(
                f"num_classes counts the background and must be >= 2, got {num_classes}"
            )
        for name, value in (("in_channels", in_channels), ("stride", stride)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not isinstance(output_size, int) or output_size <= 0:
            raise ValueError(f"output_size must be a positive int (k), got {output_size!r}")
        self.num_classes = num_classes
        self.feature_names = (feature_name,)
        self.stride = stride
        self.spatial_scale = 1.0 / stride
        self.output_size = output_size
        self.kind = pool
        self.class_agnostic_boxes = class_agnostic_boxes
        self.sampling_ratio = sampling_ratio
        self.box_outputs = 4 if class_agnostic_boxes else 4 * num_classes
        bins = output_size * output_size
        self.cls_conv = nn.Conv2d(in_channels, bins * num_classes, 1)
        self.box_conv = nn.Conv2d(in_channels, bins * self.box_outputs, 1)
        for conv in (self.cls_conv, self.box_conv):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.cls_pool: DeformPSRoIPool | None = None
        self.box_pool: DeformPSRoIPool | None = None
        if pool == "deform":
            common = dict(
                output_size=output_size, spatial_scale=self.spatial_scale,
                sampling_ratio=sampling_ratio, gamma=gamma, offset_in_channels=in_channels,
                offset_lr_mult=offset_lr_mult,
            )  # fmt: skip
            self.cls_pool = DeformPSRoIPool(
                num_classes, class_agnostic=offset_class_agnostic, **common
            )
            self.box_pool = DeformPSRoIPool(self.box_outputs, class_agnostic=True, **common)

    def score_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[N, in_channels, H, W]`` -> ``([N, k*k*(C+1), H, W], [N, k*k*4B, H, W])``."""
        return self.cls_conv(x), self.box_conv(x)

    def _pool(
        self, maps: Tensor, boxes: Sequence[Tensor], x: Tensor, deform: DeformPSRoIPool | None
    ) -> Tensor:
        k = self.output_size
        if self.kind == "ps":
            return ps_roi_pool(maps, list(boxes), k, self.spatial_scale)
        if self.kind == "ps_align":
            return ps_roi_align(maps, list(boxes), k, self.spatial_scale, self.sampling_ratio)
        assert deform is not None
        return deform(maps, list(boxes), feature=x)

    def pool_bins(
        self, features: Mapping[str, Tensor], boxes: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """The pooled bins before voting: ``([R, C + 1, k, k], [R, 4B, k, k])``."""
        (name,) = self.feature_names
        if name not in features:
            raise ValueError(f"features must hold {name!r}, got keys {list(features)}")
        x = features[name]
        if x.dim() != 4 or x.shape[1] != self.cls_conv.in_channels:
            raise ValueError(
                f"features[{name!r}] must be [N, {self.cls_conv.in_channels}, H, W], got "
                f"{list(x.shape)}"
            )
        if len(boxes) != x.shape[0]:
            raise ValueError(
                f"boxes must hold one [R_i, 4] tensor per image ({x.shape[0]}), got {len(boxes)}"
            )
        cls_maps, box_maps = self.score_maps(x)
        return (
            self._pool(cls_maps, boxes, x, self.cls_pool),
            self._pool(box_maps, boxes, x, self.box_pool),
        )

    def forward(
        self, features: Mapping[str, Tensor], boxes: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """``(class_logits [R, C + 1], box_deltas [R, 4B])``; see the class docstring."""
        cls_bins, box_bins = self.pool_bins(features, boxes)
        return vote(cls_bins), vote(box_bins)

    def extra_repr(self) -> str:
        s = f"num_classes={self.num_classes}, pool={self.kind!r}, output_size={self.output_size}"
        s += f", stride={self.stride}"
        return s + ("" if self.class_agnostic_boxes else ", class_agnostic_boxes=False")
