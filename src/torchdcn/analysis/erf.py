"""Effective receptive field (v2 paper, section 2, Fig. 1-2).

A *node* is one position ``(y, x)`` of a layer's output map (one channel of it, or all channels).
Its response is the channel's value there, or with ``channel=None`` the sum over channels. The
effective receptive field is the gradient of the response with respect to every image pixel,
``|d response / d image|`` summed over the image channels: ``Tensor[N, H, W]``, zero outside the
theoretical receptive field. Batched: each image's node has its own gradient (a batch whose images
do not interact, e.g. eval-mode BatchNorm or GroupNorm).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .probe import Forward, check_images, default_forward, evaluating, layer_output


def check_map(features: Tensor, layer: str | None = None) -> Tensor:
    """``features`` must be a map ``[N, C, h, w]`` (a node is a position ``(y, x)`` of it); a
    ``ValueError`` naming ``layer`` otherwise (e.g. class logits ``[N, C]``)."""
    if features.dim() != 4:
        where = "the node's layer" if layer is None else f"layer {layer!r}"
        raise ValueError(
            f"{where} must output a map [N, C, h, w] to hold a node (y, x), got a tensor of shape "
            f"{list(features.shape)}: choose a convolutional layer"
        )
    return features


def check_channel(channel: int | None, channels: int) -> None:
    """``channel`` must be ``None`` or in ``[0, channels)``."""
    if channel is not None and not 0 <= channel < channels:
        raise ValueError(f"channel must be in [0, {channels}), got {channel}")


def _node_index(node: tuple[int, int] | None, size: tuple[int, int]) -> tuple[int, int]:
    if node is None:
        return size[0] // 2, size[1] // 2
    y, x = node
    if not (0 <= y < size[0] and 0 <= x < size[1]):
        raise ValueError(
            f"node must be (y, x) inside the layer's {size[0]}x{size[1]} map, got {node}"
        )
    return int(y), int(x)


def node_response(
    features: Tensor, node: tuple[int, int] | None = None, channel: int | None = None
) -> Tensor:
    """The node's response per image: ``features`` ``[N, C, h, w]`` -> ``Tensor[N]`` (channel
    ``channel`` at ``node``, or the channel sum; ``node=None``: the map's centre)."""
    check_map(features)
    y, x = _node_index(node, (features.shape[-2], features.shape[-1]))
    if channel is None:
        return features[:, :, y, x].sum(1)
    check_channel(channel, features.shape[1])
    return features[:, channel, y, x]


def node_vector(features: Tensor, node: tuple[int, int] | None = None) -> Tensor:
    """All channels of the node: ``[N, C, h, w]`` -> ``Tensor[N, C]``."""
    check_map(features)
    y, x = _node_index(node, (features.shape[-2], features.shape[-1]))
    return features[:, :, y, x]


def effective_receptive_field(
    model: nn.Module,
    images: Tensor,
    layer: str,
    node: tuple[int, int] | None = None,
    channel: int | None = None,
    forward: Forward = default_forward,
) -> Tensor:
    """Gradient magnitude of a node's response with respect to each image pixel.

    Args:
        model: any model (run in eval mode; weights, flags and ``.grad`` left as they were).
        images: ``Tensor[N, C, H, W]``, as ``forward`` takes them.
        layer: qualified name of the sub-module whose output (a map ``[N, C, h, w]``; class
            logits ``[N, C]`` are a ``ValueError``) holds the node.
        node: ``(y, x)`` in that output (default its centre).
        channel: one channel in ``[0, C)``, or ``None`` for the sum over channels.
        forward: how the model is run (``model(images)`` by default).

    Returns:
        ``Tensor[N, H, W]``: ``|d response_n / d images[n]|`` summed over image channels.
    """
    check_images(images)
    x = images.detach().clone().requires_grad_()
    with torch.enable_grad(), evaluating(model):
        feats = check_map(layer_output(model, x, layer, forward), layer)
        response = node_response(feats, node, channel)
        (grad,) = torch.autograd.grad(response.sum(), x, allow_unused=True)
    if grad is None:
        return torch.zeros(images.shape[0], *images.shape[2:], device=images.device)
    return grad.abs().sum(1)
