"""Effective dilation (v1 paper, section 4.1, Table 2).

For one output position of a deformable layer, the filter's ``kh x kw`` sampling locations are
``p = p_0 * stride - padding + p_k * dilation + offset(p_0)`` in cells of the layer's input. Its
*effective dilation* is the mean distance between all adjacent pairs of them: the
``kh * (kw - 1)`` horizontal and ``(kh - 1) * kw`` vertical neighbours of the kernel grid (12 pairs
for 3x3). A plain layer of dilation ``d`` has effective dilation ``d`` everywhere; offsets that
spread the filter make it larger. With several offset groups the value is the mean over groups.

Positions are sorted by what the filter centre (the regular one, ``p_0 * stride - padding +
dilation * (k - 1) / 2``, mapped to image pixels as ``cell * s`` with ``s`` the input's stride)
falls on: the smallest ground-truth box containing it, classed small / medium / large by its area
(COCO thresholds ``32 ** 2`` and ``96 ** 2`` pixels by default), or background. v1's Table 2 reports
mean +- std of the effective dilation per class and layer; :class:`DilationTable` accumulates them
over a data set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..ops._checks import real_scalar
from .probe import (
    Forward,
    LayerGeometry,
    check_boxes,
    check_images,
    default_forward,
    evaluating,
    feature_stride,
    record_offsets,
    require_deformable,
)

#: COCO's area thresholds (pixels): small below the first, large from the second
COCO_AREAS: tuple[float, float] = (32.0**2, 96.0**2)
#: position classes, in table order
CLASSES: tuple[str, ...] = ("small", "medium", "large", "background")
_BACKGROUND = 3


def sampling_grid(offset: Tensor, geometry: LayerGeometry) -> Tensor:
    """Sampling locations of every output position of a deformable layer.

    Args:
        offset: ``Tensor[N, 2 * G * kh * kw, H_out, W_out]`` (``(dy, dx)`` per kernel point, group
            by group, as :func:`torchdcn.ops.deform_conv2d` reads it).
        geometry: the layer's :class:`~torchdcn.analysis.probe.LayerGeometry`.

    Returns:
        ``Tensor[N, G, kh, kw, H_out, W_out, 2]``: ``(y, x)`` in cells of the layer's input.
    """
    kh, kw = geometry.kernel_size
    n, c, h, w = offset.shape
    if c % (2 * kh * kw):
        raise ValueError(
            f"offset must have 2 * G * kh * kw = multiple of {2 * kh * kw} channels, got {c}"
        )
    g = c // (2 * kh * kw)
    off = offset.reshape(n, g, kh, kw, 2, h, w).movedim(4, -1)  # [N, G, kh, kw, H, W, 2]
    dev, dt = offset.device, offset.dtype
    oy = torch.arange(h, device=dev, dtype=dt) * geometry.stride[0] - geometry.padding[0]
    ox = torch.arange(w, device=dev, dtype=dt) * geometry.stride[1] - geometry.padding[1]
    ky = torch.arange(kh, device=dev, dtype=dt) * geometry.dilation[0]
    kx = torch.arange(kw, device=dev, dtype=dt) * geometry.dilation[1]
    y = ky.view(kh, 1, 1, 1) + oy.view(1, 1, h, 1)
    x = kx.view(1, kw, 1, 1) + ox.view(1, 1, 1, w)
    base = torch.stack(torch.broadcast_tensors(y, x), -1)  # [kh, kw, H, W, 2]
    return base + off


def filter_dilation(offset: Tensor, geometry: LayerGeometry) -> Tensor:
    """Effective dilation of every output position: ``offset`` as :func:`sampling_grid` ->
    ``Tensor[N, H_out, W_out]``, in cells of the layer's input (mean over offset groups)."""
    kh, kw = geometry.kernel_size
    if kh * kw < 2:
        raise ValueError(f"a 1x1 filter has no adjacent pairs; kernel_size={geometry.kernel_size}")
    p = sampling_grid(offset, geometry)
    dists = []
    if kw > 1:
        dists.append((p[:, :, :, 1:] - p[:, :, :, :-1]).norm(dim=-1).flatten(2, 3))
    if kh > 1:
        dists.append((p[:, :, 1:] - p[:, :, :-1]).norm(dim=-1).flatten(2, 3))
    return torch.cat(dists, 2).mean(2).mean(1)


def filter_centres(geometry: LayerGeometry, out_size: tuple[int, int]) -> Tensor:
    """Regular filter centres ``Tensor[H_out, W_out, 2]`` ``(y, x)`` in cells of the input."""
    cy = [
        torch.arange(n, dtype=torch.float32) * s - p + d * (k - 1) / 2
        for n, s, p, d, k in zip(
            out_size, geometry.stride, geometry.padding, geometry.dilation, geometry.kernel_size
        )
    ]
    y, x = torch.meshgrid(cy[0], cy[1], indexing="ij")
    return torch.stack([y, x], -1)


def check_thresholds(thresholds: object) -> tuple[float, float]:
    """``thresholds`` as ``(small_max, medium_max)`` floats with ``0 <= small_max <
    medium_max``: a ``TypeError`` unless two real numbers
    (:func:`~torchdcn.ops._checks.real_scalar`: not bools or text), a ``ValueError`` naming
    ``thresholds`` for other values (e.g. reversed)."""
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
        raise TypeError(f"thresholds must be two areas (small_max, medium_max), got {thresholds!r}")
    if len(thresholds) == 2:
        small, medium = (real_scalar(t, f"thresholds[{i}]") for i, t in enumerate(thresholds))
    if len(thresholds) != 2 or not 0 <= small < medium:
        raise ValueError(
            "thresholds must be two areas (small_max, medium_max) with 0 <= small_max < "
            f"medium_max, got {thresholds!r}"
        )
    return float(small), float(medium)


def position_classes(
    centres: Tensor,
    boxes: Tensor,
    areas: Tensor | None = None,
    thresholds: tuple[float, float] = COCO_AREAS,
) -> Tensor:
    """Class of each position by the smallest box containing it.

    Args:
        centres: ``Tensor[..., 2]`` ``(y, x)`` in image pixels.
        boxes: ``Tensor[M, 4]`` ``(x1, y1, x2, y2)`` in image pixels (``M`` may be 0; RoIs
            ``[K, 5]`` with a batch index are a ``ValueError``).
        areas: ``Tensor[M]`` object areas (default the boxes' areas).
        thresholds: ``(small_max, medium_max)`` areas, ``0 <= small_max < medium_max``.

    Returns:
        int64 ``Tensor[...]``: 0 small, 1 medium, 2 large, 3 background (see :data:`CLASSES`).
    """
    thresholds = check_thresholds(thresholds)
    boxes = check_boxes(boxes).float().cpu()
    if areas is None:
        areas = (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)
    areas = torch.as_tensor(areas, dtype=torch.float32).reshape(-1).cpu()
    if len(areas) != len(boxes):
        raise ValueError(f"areas must be [M] = [{len(boxes)}], got {tuple(areas.shape)}")
    if len(boxes) == 0:
        return torch.full(centres.shape[:-1], _BACKGROUND, dtype=torch.int64)
    c = centres.float().cpu().reshape(-1, 1, 2)
    inside = (
        (c[..., 1] >= boxes[:, 0])
        & (c[..., 1] <= boxes[:, 2])
        & (c[..., 0] >= boxes[:, 1])
        & (c[..., 0] <= boxes[:, 3])
    )  # [P, M]
    smallest = torch.where(inside, areas, torch.full_like(areas, math.inf)).amin(1)
    cls = torch.full(smallest.shape, _BACKGROUND, dtype=torch.int64)
    cls[smallest < math.inf] = 2
    cls[smallest < thresholds[1]] = 1
    cls[smallest < thresholds[0]] = 0
    return cls.reshape(centres.shape[:-1])


@dataclass
class DilationTable:
    """Running mean and std of the effective dilation per layer and position class.

    ``stats[layer][cls] = [count, sum, sum of squares]``; :meth:`rows` gives ``(layer,
    {class: (mean, std, count)})``, :meth:`markdown` the table of v1's Table 2 (mean +- std;
    ``-`` where no position fell).
    """

    stats: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, layer: str, dilation: Tensor, classes: Tensor) -> None:
        """Add positions: ``dilation`` and ``classes`` of one shape (e.g. ``[H_out, W_out]``)."""
        d, c = dilation.detach().double().cpu().flatten(), classes.cpu().flatten()
        per = self.stats.setdefault(layer, {name: [0.0, 0.0, 0.0] for name in CLASSES})
        for i, name in enumerate(CLASSES):
            sel = d[c == i]
            per[name][0] += len(sel)
            per[name][1] += sel.sum().item()
            per[name][2] += (sel * sel).sum().item()

    def rows(self) -> list[tuple[str, dict[str, tuple[float, float, int]]]]:
        out = []
        for layer, per in self.stats.items():
            cells = {}
            for name, (n, s, ss) in per.items():
                mean = s / n if n else math.nan
                var = max(ss / n - mean * mean, 0.0) if n else math.nan
                cells[name] = (mean, math.sqrt(var), int(n))
            out.append((layer, cells))
        return out

    def markdown(self) -> str:
        lines = ["| layer | " + " | ".join(CLASSES) + " |", "|---" * (len(CLASSES) + 1) + "|"]
        for layer, cells in self.rows():
            text = [f"{m:.2f} ± {s:.2f} ({n})" if n else "-" for m, s, n in cells.values()]
            lines.append(f"| {layer} | " + " | ".join(text) + " |")
        return "\n".join(lines)


@torch.no_grad()
def effective_dilation(
    model: nn.Module,
    images: Tensor,
    boxes: Sequence[Tensor],
    areas: Sequence[Tensor | None] | None = None,
    thresholds: tuple[float, float] = COCO_AREAS,
    forward: Forward = default_forward,
    table: DilationTable | None = None,
) -> DilationTable:
    """Effective dilation of every deformable layer of ``model`` on a batch, added to ``table``
    (a layer called several times in a pass, e.g. a head shared by pyramid levels, adds the
    positions of every call).

    Args:
        model: any model with deformable layers (run in eval mode; left as it was).
        images: ``Tensor[N, C, H, W]`` as ``forward`` takes them.
        boxes: per image, ``Tensor[M_i, 4]`` ground-truth ``(x1, y1, x2, y2)`` in pixels of
            ``images``.
        areas: per image, object areas ``Tensor[M_i]`` or ``None`` (the boxes' areas).
        thresholds: area thresholds of small and medium objects (the first smaller).
        forward: how the model is run (:func:`~torchdcn.analysis.probe.detector_forward` for
            detectors).
        table: accumulate into this table (default a new one).

    Returns:
        The table (``ValueError`` for a model without deformable layers).
    """
    check_images(images)
    require_deformable(model, "effective_dilation")
    if len(boxes) != len(images):
        raise ValueError(f"boxes must have one entry per image ({len(images)}), got {len(boxes)}")
    for i, b in enumerate(boxes):
        check_boxes(b, f"boxes[{i}]")
    thresholds = check_thresholds(thresholds)
    table = table if table is not None else DilationTable()
    with evaluating(model), record_offsets(model) as rec:
        forward(model, images)
    for name, calls in rec.items():
        for r in calls:  # a layer shared by several inputs (pyramid levels): every call counts
            geo = r.geometry
            dil = filter_dilation(r.offset.float(), geo)  # [N, H_out, W_out]
            stride = feature_stride(images.shape[-2], r.input_size[0])
            centres = filter_centres(geo, (dil.shape[1], dil.shape[2])) * stride
            for i in range(len(images)):
                area = None if areas is None else areas[i]
                table.add(name, dil[i], position_classes(centres, boxes[i], area, thresholds))
    return table
