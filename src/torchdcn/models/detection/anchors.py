"""Anchors: reference boxes tiled over every cell of each feature map (Faster R-CNN's RPN).

Conventions (one place, tested against hand-computed boxes):

- A level with sizes ``s_1..s_S`` and aspect ratios ``r_1..r_R`` has ``A = S * R`` anchors per
  cell, ordered size-major: anchor ``a = i * R + j`` has size ``s_i`` and ratio ``r_j``.
- The ratio is ``height / width`` and the area is ``size ** 2``: ``w = size / sqrt(r)``,
  ``h = size * sqrt(r)``; no rounding.
- The anchors of cell ``(y, x)`` are centred on ``(x * stride, y * stride)`` in input-image
  pixels (offset 0, as torchvision and detectron2 do).
- One level's anchors are listed position-major: row ``y``, then column ``x``, then anchor index
  ``a``, i.e. index ``(y * W + x) * A + a``. A head output ``[N, A * K, H, W]`` whose channel is
  ``a * K + k`` lines up with these anchors after ``view(N, A, K, H, W).permute(0, 3, 4, 1, 2)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class AnchorGenerator(nn.Module):
    """Anchors for one or more feature levels.

    Args:
        sizes (tuple[tuple[float, ...], ...]): one tuple of anchor sizes (square root of the area,
            in input pixels) per level. Default: 5 sizes on one level (SPEC section 6).
        aspect_ratios (tuple[tuple[float, ...], ...]): one tuple of ``height / width`` ratios per
            level (a single tuple is reused for every level). Default ``((0.5, 1.0, 2.0),)``.
        strides (tuple[int, ...]): input pixels per cell of each level, from
            ``backbone.feature_info``. Default ``(16,)`` (conv4 of a ResNet).

    Example:
        >>> gen = AnchorGenerator(sizes=((32,),), aspect_ratios=((1.0,),), strides=(16,))
        >>> gen([(1, 2)], torch.device("cpu"), torch.float32)[0]
        tensor([[-16., -16.,  16.,  16.],
                [  0., -16.,  32.,  16.]])
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]] = ((32, 64, 128, 256, 512),),
        aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),),
        strides: Sequence[int] = (16,),
    ) -> None:
        super().__init__()
        sizes = _tuple_of_tuples(sizes, "sizes")
        aspect_ratios = _tuple_of_tuples(aspect_ratios, "aspect_ratios")
        if isinstance(strides, (str, bytes)) or not isinstance(strides, Sequence):
            raise TypeError(f"strides must be a tuple of ints (one per level), got {strides!r}")
        strides = tuple(strides)
        for stride in strides:
            if isinstance(stride, bool) or not isinstance(stride, numbers.Integral) or stride < 1:
                raise ValueError(f"strides must hold positive ints, got {strides!r}")
        if len(aspect_ratios) == 1 and len(sizes) > 1:
            aspect_ratios = aspect_ratios * len(sizes)
        if not (len(sizes) == len(aspect_ratios) == len(strides)):
            raise ValueError(
                f"sizes, aspect_ratios and strides must give one entry per feature level, got "
                f"{len(sizes)}, {len(aspect_ratios)} and {len(strides)} levels"
            )
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        self.strides = tuple(int(s) for s in strides)
        self._cell = [_cell_anchors(s, r) for s, r in zip(sizes, aspect_ratios)]

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def num_anchors_per_location(self) -> list[int]:
        """``A_l = len(sizes[l]) * len(aspect_ratios[l])`` for each level ``l``."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def cell_anchors(self, level: int = 0) -> Tensor:
        """Tensor[A_l, 4] (float64): the anchors of a cell at the origin, in anchor order."""
        return self._cell[level].clone()

    def forward(
        self,
        feature_shapes: Sequence[tuple[int, int]],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> list[Tensor]:
        """Anchors of every cell of every level.

        Args:
            feature_shapes (list[tuple[int, int]]): ``(H_l, W_l)`` of each level's feature map.
            device, dtype: of the returned anchors.

        Returns:
            list[Tensor[H_l * W_l * A_l, 4]]: per level, ``(x1, y1, x2, y2)`` in input pixels,
            position-major then anchor index (see the module docstring).
        """
        if isinstance(feature_shapes, (str, bytes)) or not isinstance(feature_shapes, Sequence):
            raise TypeError(f"feature_shapes must be a list of (H, W), got {feature_shapes!r}")
        if len(feature_shapes) != self.num_levels:
            raise ValueError(
                f"feature_shapes must give one (H, W) per level: the generator has "
                f"{self.num_levels} levels, got {len(feature_shapes)} shapes"
            )
        out = []
        for cell, stride, shape in zip(self._cell, self.strides, feature_shapes):
            if len(shape) != 2 or any(int(n) < 0 for n in shape):
                raise ValueError(f"each feature shape must be (H, W) >= 0, got {tuple(shape)}")
            height, width = int(shape[0]), int(shape[1])
            ys = torch.arange(height, dtype=torch.float64) * stride
            xs = torch.arange(width, dtype=torch.float64) * stride
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)
            anchors = (shifts + cell[None]).reshape(-1, 4)
            out.append(anchors.to(device=device, dtype=dtype))
        return out

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}, strides={self.strides}"


def _cell_anchors(sizes: tuple[float, ...], ratios: tuple[float, ...]) -> Tensor:
    rows = []
    for size in sizes:
        for ratio in ratios:
            w = size / math.sqrt(ratio)
            h = size * math.sqrt(ratio)
            rows.append((-w / 2, -h / 2, w / 2, h / 2))
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)


def _tuple_of_tuples(value: object, name: str) -> tuple[tuple[float, ...], ...]:
    bad = TypeError(f"{name} must be a tuple of tuples of positive numbers, got {value!r}")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise bad
    out = []
    for level in value:
        if isinstance(level, (str, bytes)) or not isinstance(level, Sequence) or len(level) == 0:
            raise bad
        for v in level:
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise bad
            if not math.isfinite(float(v)) or float(v) <= 0:
                raise ValueError(f"{name} must hold positive finite numbers, got {value!r}")
        out.append(tuple(float(v) for v in level))
    return tuple(out)
