"""Figures of the analysis tools: one row per model, one column per image (matplotlib, Agg).

Each :class:`Overlay` is one picture: the image in grey (or colour), optionally a heat map on top
(an effective receptive field, normalised to its maximum), weighted points (effective sampling
locations: red dots, size and opacity by weight; those under :data:`MIN_WEIGHT` of the largest are
left out), boxes (saliency regions, RoI bins) and the node
as a green cross.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

#: points weighing less than this fraction of the picture's largest weight are not drawn
MIN_WEIGHT = 0.02


@dataclass
class Overlay:
    """One picture.

    Attributes:
        image: ``Tensor[C, H, W]`` (1 or 3 channels) or ``Tensor[H, W]``, values in [0, 1].
        heat: ``Tensor[H, W]`` heat map (>= 0) or ``None``.
        points: ``Tensor[P, 2]`` ``(y, x)`` pixels or ``None``; ``weights`` ``Tensor[P]``.
        boxes: ``Tensor[B, 4]`` ``(x1, y1, x2, y2)`` pixel edges, drawn in ``box_color``.
        regular_boxes: ``Tensor[B', 4]`` drawn dashed in grey (e.g. undeformed RoI bins).
        centre: ``(y, x)`` of the node, or ``None``.
        title: text above.
    """

    image: Tensor
    heat: Tensor | None = None
    points: Tensor | None = None
    weights: Tensor | None = None
    boxes: Tensor | None = None
    regular_boxes: Tensor | None = None
    centre: tuple[float, float] | None = None
    title: str = ""
    box_color: str = "yellow"
    extra: dict = field(default_factory=dict)


def _show_image(ax, image: Tensor) -> None:
    img = image.detach().float().cpu()
    if img.dim() == 3 and img.shape[0] == 1:
        img = img[0]
    if img.dim() == 2:
        ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())


def _rectangles(ax, boxes: Tensor, color: str, style: str, width: float) -> None:
    from matplotlib.patches import Rectangle

    for x1, y1, x2, y2 in boxes.detach().float().cpu().reshape(-1, 4).tolist():
        ax.add_patch(
            Rectangle(
                (x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                linestyle=style, linewidth=width,
            )
        )  # fmt: skip


def wrap_to_width(text: str, inches: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``inches`` at ``fontsize`` points (about 0.6 of the
    size per character, a little under the widest average of matplotlib's default font)."""
    chars = max(int(inches * 72 / (0.6 * fontsize)), 10)
    return "\n".join(textwrap.wrap(text, chars)) or text


def draw_overlays(rows: Sequence[Sequence[Overlay]], path: str | Path, suptitle: str = "") -> Path:
    """Draw a grid of :class:`Overlay` to a PNG at ``path``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.7 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c >= len(row):
                continue
            o = row[c]
            _show_image(ax, o.image)
            h, w = o.image.shape[-2:]
            if o.heat is not None:
                heat = o.heat.detach().float().cpu()
                heat = heat / heat.max().clamp_min(1e-12)
                ax.imshow(heat.numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
            if o.regular_boxes is not None:
                _rectangles(ax, o.regular_boxes, "0.7", "--", 0.6)
            if o.boxes is not None:
                _rectangles(ax, o.boxes, o.box_color, "-", 1.0)
            if o.points is not None and len(o.points):
                pts = o.points.detach().float().cpu()
                wts = torch.ones(len(pts)) if o.weights is None else o.weights.float().cpu()
                keep = wts >= MIN_WEIGHT * wts.max().clamp_min(1e-30)
                pts, wts = pts[keep], wts[keep]
                if len(pts) and float(wts.max()) > 0:
                    rel = wts / wts.max()
                    colors = [(0.95, 0.15, 0.1, float(0.2 + 0.8 * a)) for a in rel]
                    ax.scatter(
                        pts[:, 1].numpy(), pts[:, 0].numpy(), s=(2 + 14 * rel).numpy(),
                        c=colors, linewidths=0,
                    )  # fmt: skip
            if o.centre is not None:
                ax.plot([o.centre[1]], [o.centre[0]], marker="+", color="lime", ms=9, mew=2)
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_title(o.title, fontsize=7)
    if suptitle:  # wrapped to the figure's width (a 2-column figure cut a long one off)
        fig.suptitle(wrap_to_width(suptitle, fig.get_figwidth(), 8), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
