"""Sampling locations of stacked deformable layers (v1 paper, Fig. 5-6).

An activation of the last of ``L`` stacked ``k x k`` layers reads ``k*k`` points of its input, each
of which is an activation of the layer below reading ``k*k`` points, and so on: ``(k*k) ** L``
points of the first layer's input (``9 ** 3 = 729`` for three 3x3 layers). With deformable layers
every point moves by the offset predicted *at the position that reads it*: a point ``q`` (real
valued) of layer ``l``'s output reads ``q * stride - padding + p_k * dilation + offset_l(q)``, where
``offset_l(q)`` is layer ``l``'s offset field interpolated bilinearly at ``q``. For modulated (v2)
layers each point also carries the product of the masks along its path, its weight in the output.

Coordinates are ``(y, x)`` in cells of the first layer's input (pixel centres at integers); a model
maps them to image pixels (e.g. :meth:`torchdcn.models.MnistCNN.cell_to_pixel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .probe import LayerGeometry


def _sample_field(field: Tensor, points: Tensor) -> Tensor:
    """Bilinear values of ``field`` ``[C, H, W]`` at ``points`` ``[P, 2]`` (y, x; border clamped):
    ``[P, C]``."""
    c, h, w = field.shape
    y = points[:, 0] * (2 / max(h - 1, 1)) - 1
    x = points[:, 1] * (2 / max(w - 1, 1)) - 1
    grid = torch.stack([x, y], -1).view(1, 1, -1, 2).to(field.dtype)
    out = F.grid_sample(
        field[None], grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    return out.view(c, -1).t()


def compose_sampling_locations(
    offsets: Sequence[Tensor | None],
    position: tuple[float, float],
    geometries: Sequence[LayerGeometry],
    masks: Sequence[Tensor | None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Sampling locations of one activation through stacked layers.

    Args:
        offsets: per layer, first to last, ``Tensor[2 * K, H_out, W_out]`` (offset group 0 of one
            image; channel ``2k`` is ``dy``, ``2k + 1`` is ``dx``), or ``None`` for a plain conv.
        position: ``(y, x)`` of the activation in the last layer's output.
        geometries: per layer, its :class:`LayerGeometry`.
        masks: per layer, ``Tensor[K, H_out, W_out]`` or ``None`` (v1 / plain layers).

    Returns:
        ``points`` ``Tensor[K ** L, 2]`` (y, x) in the first layer's input, and ``weights``
        ``Tensor[K ** L]``: the product of the masks along each point's path (ones without masks).
        Point ``n``'s path is the base-``K`` digits of ``n``, last layer's kernel point first.
    """
    if len(offsets) != len(geometries) or (masks is not None and len(masks) != len(offsets)):
        raise ValueError(
            f"need one geometry (and mask entry) per layer: got {len(offsets)} offsets, "
            f"{len(geometries)} geometries, {None if masks is None else len(masks)} masks"
        )
    points = torch.tensor([position], dtype=torch.float32)
    weights = torch.ones(1)
    for layer in reversed(range(len(offsets))):
        g = geometries[layer]
        kh, kw = g.kernel_size
        ky, kx = torch.meshgrid(torch.arange(kh), torch.arange(kw), indexing="ij")
        base_y = points[:, :1] * g.stride[0] - g.padding[0] + ky.reshape(1, -1) * g.dilation[0]
        base_x = points[:, 1:] * g.stride[1] - g.padding[1] + kx.reshape(1, -1) * g.dilation[1]
        off = offsets[layer]
        if off is not None:
            field = _sample_field(off[: 2 * kh * kw].float(), points)  # [P, 2K]
            base_y = base_y + field[:, 0::2]
            base_x = base_x + field[:, 1::2]
        mask = None if masks is None else masks[layer]
        if mask is not None:
            weights = (weights[:, None] * _sample_field(mask[: kh * kw].float(), points)).flatten()
        else:
            weights = weights.repeat_interleave(kh * kw)
        points = torch.stack([base_y.flatten(), base_x.flatten()], -1)
    return points, weights


@torch.no_grad()
def stacked_sampling_locations(
    layers: Sequence[nn.Module], first_input: Tensor, position: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Sampling locations of layers applied directly one after another (``x -> layers[0] ->
    layers[1] -> ...``); when something runs between them (norms, activations) use
    :func:`sampling_locations_from_inputs` with each layer's actual input instead.

    Offsets and masks come from each deformable layer's own predictor (``layer.predict``).

    Args:
        layers: first to last; ``nn.Conv2d`` (zero offsets) or modules with ``predict(x)``.
        first_input: ``Tensor[1, C, H, W]``: the first layer's input for one image.
        position: ``(y, x)`` in the last layer's output.

    Returns:
        As :func:`compose_sampling_locations`.
    """
    inputs, x = [], first_input
    for layer in layers:
        inputs.append(x)
        x = layer(x)
    return sampling_locations_from_inputs(layers, inputs, position)


@torch.no_grad()
def sampling_locations_from_inputs(
    layers: Sequence[nn.Module], inputs: Sequence[Tensor], position: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Like :func:`stacked_sampling_locations`, given each layer's input ``Tensor[1, C, H, W]``
    (first to last; e.g. from :meth:`torchdcn.models.MnistCNN.body_inputs`, with
    :meth:`~torchdcn.models.MnistCNN.body_layers` as ``layers``)."""
    offsets, masks = [], []
    for layer, x in zip(layers, inputs):
        if hasattr(layer, "predict"):
            off, mask = layer.predict(x)
            offsets.append(off[0])
            masks.append(None if mask is None else mask[0])
        else:
            offsets.append(None)
            masks.append(None)
    geometries = [LayerGeometry.of(layer) for layer in layers]
    return compose_sampling_locations(offsets, position, geometries, masks)


def spread(points: Tensor, centre: Tensor, weights: Tensor | None = None) -> float:
    """Mean distance of ``points`` ``[P, 2]`` from ``centre`` ``[2]`` (weighted by ``weights``
    ``[P]`` if given), in the points' units."""
    d = (points - centre).norm(dim=-1)
    if weights is None:
        return d.mean().item()
    return ((d * weights).sum() / weights.sum().clamp_min(1e-12)).item()


@dataclass
class Panel:
    """One picture of :func:`plot_sampling_locations`.

    Attributes:
        image: ``Tensor[H, W]`` drawn in grey.
        points: ``Tensor[P, 2]`` sampling locations (y, x) in image pixels.
        centre: ``(y, x)`` pixel of the activation.
        weights: ``Tensor[P]`` in [0, 1] (v2 mask products) for the dots' opacity, or ``None``.
        title: text above the picture.
    """

    image: Tensor
    points: Tensor
    centre: tuple[float, float]
    weights: Tensor | None = None
    title: str = ""


def plot_sampling_locations(
    panels: Sequence[Sequence[Panel]], path: str | Path, suptitle: str = ""
) -> Path:
    """Draw a grid of panels (rows of :class:`Panel`) to a PNG at ``path``; returns the path.

    Each panel shows the image, its sampling points as red dots (opacity by weight, normalised per
    panel) and the activation as a green cross. Needs matplotlib (imported here, Agg backend).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(panels), max(len(r) for r in panels)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.4 * rows), squeeze=False)
    for r, row in enumerate(panels):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c >= len(row):
                continue
            p = row[c]
            h, w = p.image.shape
            ax.imshow(p.image.cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            alpha = torch.full((len(p.points),), 0.5)
            if p.weights is not None:
                alpha = 0.1 + 0.8 * p.weights / p.weights.max().clamp_min(1e-12)
            colors = [(0.95, 0.15, 0.1, float(a)) for a in alpha]
            ax.scatter(p.points[:, 1].numpy(), p.points[:, 0].numpy(), s=4, c=colors, linewidths=0)
            ax.plot([p.centre[1]], [p.centre[0]], marker="+", color="lime", markersize=10, mew=2)
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_title(p.title, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
