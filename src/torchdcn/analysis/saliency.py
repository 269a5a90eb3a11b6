"""Error-bounded saliency regions (v2 paper, section 2, Fig. 1-2).

The smallest image region that alone gives a node (:mod:`~torchdcn.analysis.erf`) its full-image
response within a relative error bound. Found by growing a square window: windows of odd side
``s = 1, 3, 5, ...`` (all of them up to ``max_steps`` sizes, else evenly spaced odd sides; the last
always covers the whole image) centred on the node's pixel (``node * stride`` with the stride of
the layer's output, unless ``centre`` is given), clipped to the image. The image outside the window
is replaced by ``baseline`` (0 by default: a black image, or the value images are normalised to),
and the first window whose response ``r_s`` satisfies ``|r_s - r| <= bound * |r|`` is the region.
With ``channel=None`` the node's response is the vector of its channels and the error is the
2-norm ``||r_s - r|| <= bound * ||r||``. The covering window gives ``r_s = r`` (error 0), so every
node has a region. Its area is the number of pixels of the clipped window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops._checks import real_scalar
from .erf import _node_index, check_channel, check_map, node_vector
from .probe import (
    Forward,
    check_images,
    default_forward,
    evaluating,
    feature_stride,
    layer_output,
)


@dataclass
class SaliencyRegions:
    """Result of :func:`saliency_regions` for a batch.

    Attributes:
        boxes: ``Tensor[N, 4]`` ``(x1, y1, x2, y2)`` pixel edges of each region (the window covers
            pixels ``x1 <= x < x2``, ``y1 <= y < y2``).
        areas: ``Tensor[N]`` pixels in each region.
        errors: ``Tensor[N]`` relative error of the region's response.
        sides: ``Tensor[N]`` side of the (unclipped) window.
        centres: ``Tensor[N, 2]`` ``(y, x)`` pixel the windows grow around.
    """

    boxes: Tensor
    areas: Tensor
    errors: Tensor
    sides: Tensor
    centres: Tensor


def window_sides(cover: int, max_steps: int = 64) -> list[int]:
    """Odd window sides from 1 to ``cover`` (odd): all when there are at most ``max_steps``, else
    ``max_steps`` evenly spaced ones (1 and ``cover`` included)."""
    if cover < 1 or max_steps < 2:
        raise ValueError(f"need cover >= 1 and max_steps >= 2, got {cover}, {max_steps}")
    sides = list(range(1, cover + 1, 2))
    if len(sides) <= max_steps:
        return sides
    picks = torch.linspace(0, len(sides) - 1, max_steps).round().long().unique()
    return [sides[int(i)] for i in picks]


def window_mask(
    size: tuple[int, int], centre: tuple[int, int], side: int, device=None
) -> tuple[Tensor, tuple[int, int, int, int]]:
    """A ``[H, W]`` 0/1 mask of the square window of odd ``side`` centred on pixel ``centre``
    ``(y, x)``, clipped; and its box ``(x1, y1, x2, y2)`` (pixel edges, end exclusive)."""
    h, w = size
    r = side // 2
    y1, y2 = max(centre[0] - r, 0), min(centre[0] + r + 1, h)
    x1, x2 = max(centre[1] - r, 0), min(centre[1] + r + 1, w)
    mask = torch.zeros(h, w, device=device)
    mask[y1:y2, x1:x2] = 1
    return mask, (x1, y1, x2, y2)


def _response(feats: Tensor, node: tuple[int, int], channel: int | None) -> Tensor:
    """The node's channels ``Tensor[B, C]`` (``channel`` given: ``Tensor[B, 1]``) of a map
    ``feats`` ``[B, C, h, w]``; a channel outside ``[0, C)`` is a ``ValueError``."""
    vec = node_vector(feats, node)  # [B, C]
    check_channel(channel, vec.shape[1])
    return vec if channel is None else vec[:, channel : channel + 1]


@torch.no_grad()
def saliency_regions(
    model: nn.Module,
    images: Tensor,
    layer: str,
    node: tuple[int, int] | None = None,
    channel: int | None = None,
    bound: float = 0.1,
    forward: Forward = default_forward,
    centre: tuple[int, int] | None = None,
    baseline: float = 0.0,
    max_steps: int = 64,
    chunk: int = 16,
) -> SaliencyRegions:
    """The error-bounded saliency region of a node, per image (see the module docstring).

    Args:
        model: any model (eval mode inside; left as it was).
        images: ``Tensor[N, C, H, W]`` as ``forward`` takes them.
        layer, node, channel: the node (see :mod:`~torchdcn.analysis.erf`): ``layer`` outputs a
            map ``[N, C, h, w]``, ``channel`` is in ``[0, C)`` or ``None``.
        bound: relative error bound (0.1: 10%), ``>= 0``.
        forward: how the model is run.
        centre: ``(y, x)`` pixel to grow around (default the node's pixel, ``node * stride``).
        baseline: value of the pixels outside the window.
        max_steps: at most this many window sizes are tried (``>= 2``).
        chunk: masked images per forward pass (``>= 1``).

    Returns:
        :class:`SaliencyRegions`.
    """
    check_images(images)
    if not bound >= 0:
        raise ValueError(f"bound must be >= 0, got {bound}")
    for name, value, least in (("max_steps", max_steps, 2), ("chunk", chunk, 1)):
        if real_scalar(value, name, integral=True, wanted=f"an int >= {least}") < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    n, _, h, w = images.shape
    with evaluating(model):
        full_feats = check_map(layer_output(model, images, layer, forward), layer)
        fh, fw = full_feats.shape[-2:]
        node = _node_index(node, (fh, fw))
        full = _response(full_feats, node, channel)  # [N, C']
        stride = feature_stride(h, fh)
        c = centre if centre is not None else (node[0] * stride, node[1] * stride)
        c = (min(max(int(c[0]), 0), h - 1), min(max(int(c[1]), 0), w - 1))
        cover = 2 * max(c[0], h - 1 - c[0], c[1], w - 1 - c[1]) + 1
        sides = window_sides(cover, max_steps)
        masks = [window_mask((h, w), c, s, images.device) for s in sides]
        boxes, areas, errors, chosen = [], [], [], []
        for i in range(n):
            img, target = images[i], full[i]
            scale = target.norm().clamp_min(torch.finfo(target.dtype).tiny)
            found = None
            for start in range(0, len(sides), chunk):
                part = masks[start : start + chunk]
                m = torch.stack([mk for mk, _ in part])[:, None]
                batch = img[None] * m + baseline * (1 - m)
                resp = _response(layer_output(model, batch, layer, forward), node, channel)
                err = (resp - target).norm(dim=1) / scale
                ok = torch.nonzero(err <= bound)
                if len(ok):
                    k = int(ok[0])
                    found = (start + k, float(err[k]))
                    break
            if found is None:  # rounding kept even the covering window out: take it
                found = (len(sides) - 1, 0.0)
            k, e = found
            x1, y1, x2, y2 = masks[k][1]
            boxes.append([x1, y1, x2, y2])
            areas.append((x2 - x1) * (y2 - y1))
            errors.append(e)
            chosen.append(sides[k])
    return SaliencyRegions(
        torch.tensor(boxes, dtype=torch.float32),
        torch.tensor(areas, dtype=torch.float32),
        torch.tensor(errors),
        torch.tensor(chosen),
        torch.tensor([c] * n, dtype=torch.float32),
    )
