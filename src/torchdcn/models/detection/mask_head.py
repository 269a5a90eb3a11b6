"""Mask R-CNN's mask branch (v2 paper section 4.1, Mask R-CNN paper Fig. 4 right): the layers
from pooled 14 x 14 RoI features to 28 x 28 class-specific mask logits, and the mask loss.

- :class:`MaskHead`: four 3x3 convs of 256 channels (padding 1) each followed by ReLU, then a
  2x2 stride-2 transposed conv of 256 channels + ReLU: ``[R, C_in, 14, 14] -> [R, 256, 28, 28]``.
- :class:`MaskPredictor`: a 1x1 conv to one logit map per foreground class,
  ``[R, 256, 28, 28] -> [R, C, 28, 28]`` (class ``k`` in channel ``k - 1``; no background map).
- :func:`mask_loss`: mean binary cross-entropy with logits over the ``M x M`` cells of each
  foreground RoI, on the map of the RoI's own class only (the other ``C - 1`` maps get no
  gradient), averaged over the foreground RoIs.

Initialisation: Kaiming-normal (fan-out, ReLU) conv weights, zero biases; the predictor
Gaussian of std 0.001 (Detectron's mask head initialisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskHead(nn.Module):
    """4 x (3x3 conv + ReLU) then 2x2 stride-2 deconv + ReLU.

    Args:
        in_channels: channels of the pooled RoI features (the pooler's).
        channels: width of every layer (256).
        num_convs: number of 3x3 convs (4).

    Shape:
        ``x``: ``[R, in_channels, S, S]`` -> ``[R, channels, 2 S, 2 S]`` (``S = 14`` -> 28).
    """

    def __init__(self, in_channels: int, channels: int = 256, num_convs: int = 4) -> None:
        super().__init__()
        if in_channels <= 0 or channels <= 0 or num_convs < 0:
            raise ValueError(
                f"in_channels and channels must be positive and num_convs >= 0, got "
                f"{in_channels}, {channels}, {num_convs}"
            )
        self.in_channels = in_channels
        convs = []
        for i in range(num_convs):
            convs.append(nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1))
        self.convs = nn.ModuleList(convs)
        self.deconv = nn.ConvTranspose2d(channels if num_convs else in_channels, channels, 2, 2)
        self.out_channels = channels
        for layer in [*self.convs, self.deconv]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[R, in_channels, S, S]`` -> ``[R, channels, 2 S, 2 S]``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape [R, {self.in_channels}, S, S], got {list(x.shape)}"
            )
        for conv in self.convs:
            x = F.relu(conv(x))
        return F.relu(self.deconv(x))


class MaskPredictor(nn.Module):
    """1x1 conv to ``C`` class-specific mask logit maps (class ``k`` in channel ``k - 1``).

    Args:
        in_channels: channels of :class:`MaskHead`'s output (256).
        num_classes: foreground classes ``C`` (no background map).

    Shape:
        ``x``: ``[R, in_channels, M, M]`` -> ``[R, C, M, M]``.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes counts the foreground classes, >= 1; got {num_classes}")
        self.num_classes = num_classes
        self.mask_logits = nn.Conv2d(in_channels, num_classes, 1)
        nn.init.normal_(self.mask_logits.weight, std=0.001)
        nn.init.zeros_(self.mask_logits.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[R, in_channels, M, M]`` -> ``[R, C, M, M]``."""
        return self.mask_logits(x)


def select_class_masks(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """The map of each RoI's class: ``[R, C, M, M]`` logits and ``[R]`` labels in ``1..C`` ->
    ``[R, M, M]`` (label ``k`` reads channel ``k - 1``)."""
    if mask_logits.dim() != 4 or labels.shape != mask_logits.shape[:1]:
        raise ValueError(
            f"mask_logits must be [R, C, M, M] and labels [R], got {list(mask_logits.shape)} "
            f"and {list(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 1 or labels.max() > mask_logits.shape[1]):
        raise ValueError(
            f"labels must be in 1..{mask_logits.shape[1]} (foreground classes), got values "
            f"{labels.min().item()}..{labels.max().item()}"
        )
    index = torch.arange(labels.numel(), device=labels.device)
    return mask_logits[index, labels.to(torch.int64) - 1]


def mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy of the foreground RoIs' own-class masks.

    Args:
        mask_logits (Tensor[R, C, M, M]): logits of the foreground RoIs only.
        labels (Tensor[R] int64): their classes, ``1..C``.
        targets (Tensor[R, M, M]): 0/1 targets (:func:`~.mask_targets.mask_targets`).

    Returns:
        A scalar: ``mean over R x M x M`` of ``BCEWithLogits(logit[r, labels[r] - 1], target[r])``;
        0 (still connected to ``mask_logits``, zero gradient) when ``R = 0``.
    """
    if targets.shape != (mask_logits.shape[0], *mask_logits.shape[2:]):
        raise ValueError(
            f"targets must have shape [R, M, M] = "
            f"{[mask_logits.shape[0], *mask_logits.shape[2:]]}, got {list(targets.shape)}"
        )
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    chosen = select_class_masks(mask_logits, labels)
    return F.binary_cross_entropy_with_logits(chosen, targets.to(chosen.dtype), reduction="mean")
