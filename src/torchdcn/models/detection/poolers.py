"""RoI feature extraction chosen by name, on one feature map or on several (FPN levels).

``RoIPooler(kind=...)`` pools every RoI of a batch into a ``[R, C, ph, pw]`` tensor with

- ``"roi_pool"``: max pooling over integer bins (Fast R-CNN, :func:`torchdcn.ops.roi_pool`);
- ``"roi_align"``: aligned bilinear bins (:func:`torchdcn.ops.roi_align`);
- ``"deform"``: v1 deformable RoI pooling (:class:`torchdcn.nn.DeformRoIPool`, an fc offset branch
  at learning-rate multiplier 0.01);
- ``"mdeform"``: v2 modulated deformable RoI pooling (:class:`torchdcn.nn.ModulatedDeformRoIPool`,
  2 fc 1024 + fc 3K offset/mask branch).

With several maps each RoI is pooled from one level, chosen by its size as in the FPN paper
(Eq. 1): ``k = floor(k0 + log2(sqrt(w * h) / 224))`` clamped to the available levels, with the
canonical level ``k0 = 4`` (a 224-pixel RoI pools from the stride-16 map). A deformable pooler on
several levels keeps one pooling module per level (each with its own ``spatial_scale``) but they
share one offset branch, so the branch sees every RoI and is not multiplied by the level count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ...nn import DeformRoIPool, ModulatedDeformRoIPool
from ...ops import pair, roi_align, roi_pool

POOLER_KINDS = ("roi_pool", "roi_align", "deform", "mdeform")


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image boxes ``[R_i, 4]`` -> ``[sum R_i, 5]`` rows ``(image_index, x1, y1, x2, y2)``."""
    if len(boxes) == 0:
        raise ValueError("boxes must hold one [R_i, 4] tensor per image, got an empty sequence")
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            got = list(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"boxes[{i}] must be a Tensor[R_i, 4], got {got}")
    index = torch.cat(
        [torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)]
    )
    return torch.cat([index, torch.cat(list(boxes))], dim=1)


def assign_levels(
    boxes: Tensor,
    min_level: int,
    max_level: int,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """The FPN level of each box, counted from ``min_level`` (0 = the finest map).

    ``level = clamp(floor(canonical_level + log2(sqrt(area) / canonical_scale)), min_level,
    max_level) - min_level``; a degenerate box (area 0) goes to the finest level.

    Args:
        boxes (Tensor[R, 4]): ``(x1, y1, x2, y2)`` in image pixels.
        min_level, max_level: levels of the finest and coarsest maps (``log2(stride)``: 2 and 5
            for P2-P5).
        canonical_scale, canonical_level: a box of side ``canonical_scale`` pixels goes to
            ``canonical_level`` (224 and 4 in the FPN paper).

    Returns:
        Tensor[R] int64 in ``[0, max_level - min_level]``.

    Example:
        >>> assign_levels(torch.tensor([[0.0, 0.0, 224.0, 224.0], [0.0, 0.0, 50.0, 50.0]]), 2, 5)
        tensor([2, 0])
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [R, 4], got {list(boxes.shape)}")
    if min_level > max_level:
        raise ValueError(f"min_level must be <= max_level, got {min_level} > {max_level}")
    side = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    side = side.sqrt()
    # the small epsilon keeps exact powers of two (224 * 2^k) on their own level despite rounding
    level = torch.floor(canonical_level + torch.log2(side / canonical_scale + 1e-8))
    level = torch.nan_to_num(level, nan=min_level, neginf=min_level)
    return (level.clamp(min_level, max_level) - min_level).to(torch.int64)


class RoIPooler(nn.Module):
    """Pool RoIs from one or several feature maps with the RoI pooling named by ``kind``.

    Args:
        kind: ``"roi_pool"``, ``"roi_align"``, ``"deform"`` or ``"mdeform"`` (module docstring).
        feature_names: keys of the maps to pool from, finest first (``("conv5",)`` in the papers'
            layout, ``("p2", "p3", "p4", "p5")`` with FPN).
        strides: stride of each map in input pixels (``spatial_scale = 1 / stride``); with several
            maps they must be consecutive powers of two.
        channels: channels ``C`` of the maps (the deformable offset branches read ``C * ph * pw``).
        output_size (int or (int, int)): bins ``(ph, pw)`` per RoI (7).
        sampling_ratio: bilinear samples per bin along each axis (2, as v2); ``<= 0`` adaptive;
            at most 64 (``MAX_ADAPTIVE_GRID``), larger values are refused by the ops.
            Unused by ``"roi_pool"``.
        aligned: shift RoIs by -0.5 cell (pixel-centre convention; ``"roi_pool"`` ignores it).
        canonical_scale, canonical_level: FPN level assignment, see :func:`assign_levels`.
        deform_hidden: hidden width of ``"mdeform"``'s offset branch (1024 in v2).
        gamma: offset scale of the deformable kinds (0.1).
        offset_lr_mult: learning-rate multiplier of the offset branch; ``None`` takes the module's
            default (0.01 for ``"deform"``, v1; 1.0 for ``"mdeform"``, v2).

    Shape:
        ``features``: a mapping holding ``feature_names``, each ``[N, C, H_l, W_l]``;
        ``boxes``: one ``[R_i, 4]`` tensor per image, ``(x1, y1, x2, y2)`` in input pixels ->
        ``[sum R_i, C, ph, pw]``, RoIs in the order given (image 0's first).
    """

    def __init__(
        self,
        kind: str,
        feature_names: Sequence[str],
        strides: Sequence[int],
        channels: int,
        output_size: int | tuple[int, int] = 7,
        sampling_ratio: int = 2,
        aligned: bool = True,
        canonical_scale: float = 224.0,
        canonical_level: int = 4,
        deform_hidden: int = 1024,
        gamma: float = 0.1,
        offset_lr_mult: float | None = None,
    ) -> None:
        super().__init__()
        if kind not in POOLER_KINDS:
            raise ValueError(f"kind must be one of {POOLER_KINDS}, got {kind!r}")
        feature_names, strides = tuple(feature_names), tuple(int(s) for s in strides)
        if not feature_names or len(feature_names) != len(strides):
            raise ValueError(
                f"feature_names and strides must be non-empty and of one length, got "
                f"{feature_names} and {strides}"
            )
        levels = [math.log2(s) for s in strides]
        if len(strides) > 1 and any(
            lv != round(lv) or round(lv) != round(levels[0]) + i for i, lv in enumerate(levels)
        ):
            raise ValueError(
                f"strides must be consecutive powers of two, finest first, got {strides}"
            )
        if channels <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        self.kind = kind
        self.feature_names = feature_names
        self.strides = strides
        self.channels = channels
        self.output_size = pair(output_size, "output_size")
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_scale = float(canonical_scale)
        self.canonical_level = int(canonical_level)
        self.min_level = round(levels[0])
        self.max_level = round(levels[-1])
        self.deformable = kind in ("deform", "mdeform")
        if self.deformable:
            pools = [
                self._deform_module(kind, s, deform_hidden, gamma, offset_lr_mult) for s in strides
            ]
            for p in pools[1:]:  # one offset branch for every level
                p.offset_fc = pools[0].offset_fc
            self.pools = nn.ModuleList(pools)
        else:
            self.pools = None

    def _deform_module(self, kind, stride, hidden, gamma, offset_lr_mult) -> DeformRoIPool:
        common = {
            "in_channels": self.channels,
            "output_size": self.output_size,
            "spatial_scale": 1.0 / stride,
            "sampling_ratio": self.sampling_ratio,
            "gamma": gamma,
            "aligned": self.aligned,
            "offset_lr_mult": offset_lr_mult,
        }
        if kind == "mdeform":
            return ModulatedDeformRoIPool(hidden_channels=hidden, **common)
        return DeformRoIPool(**common)

    @property
    def out_channels(self) -> int:
        """``C`` of the pooled ``[R, C, ph, pw]`` output."""
        return self.channels

    def _pool_level(self, level: int, feature: Tensor, rois: Tensor) -> Tensor:
        scale = 1.0 / self.strides[level]
        if self.pools is not None:
            return self.pools[level](feature, rois)
        if self.kind == "roi_pool":
            return roi_pool(feature, rois, self.output_size, scale)
        return roi_align(feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned)

    def forward(self, features: Mapping[str, Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Pooled RoI features ``[sum R_i, C, ph, pw]``; see the class docstring."""
        missing = [n for n in self.feature_names if n not in features]
        if missing:
            raise ValueError(
                f"features must hold {list(self.feature_names)}, missing {missing} "
                f"(got keys {list(features)})"
            )
        maps = [features[n] for n in self.feature_names]
        for name, m in zip(self.feature_names, maps):
            if m.dim() != 4 or m.shape[1] != self.channels:
                raise ValueError(
                    f"features[{name!r}] must have shape [N, {self.channels}, H, W], "
                    f"got {list(m.shape)}"
                )
        if len(boxes) != maps[0].shape[0]:
            raise ValueError(
                f"boxes must hold one tensor per image ({maps[0].shape[0]}), got {len(boxes)}"
            )
        # boxes stay in float32 under autocast (the ops upcast then; a bfloat16 box is coarse)
        box_dtype = maps[0].dtype
        if torch.is_autocast_enabled(maps[0].device.type):
            box_dtype = torch.promote_types(box_dtype, torch.float32)
        rois = boxes_to_rois([b.to(box_dtype) for b in boxes])
        if len(maps) == 1:
            return self._pool_level(0, maps[0], rois)
        levels = assign_levels(
            rois[:, 1:], self.min_level, self.max_level, self.canonical_scale, self.canonical_level
        )
        ph, pw = self.output_size
        out = maps[0].new_zeros((rois.shape[0], self.channels, ph, pw))
        for level, feature in enumerate(maps):
            index = torch.nonzero(levels == level).squeeze(1)
            if index.numel() == 0:
                continue
            out = out.index_copy(0, index, self._pool_level(level, feature, rois[index]))
        return out

    def extra_repr(self) -> str:
        s = f"kind={self.kind!r}, feature_names={self.feature_names}, strides={self.strides}"
        s += f", channels={self.channels}, output_size={self.output_size}"
        return s + f", sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
