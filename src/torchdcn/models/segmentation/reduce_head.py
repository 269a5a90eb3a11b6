"""DeepLab's head in the v1 paper (section 2.3 and 4): a randomly initialised 1x1 conv from conv5
to 1024 channels followed by a ReLU; the 1x1 classifier to ``C + 1`` scores comes after it (in
:class:`~.deeplab.DeepLab`)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ReduceHead(nn.Module):
    """1x1 conv + ReLU.

    Args:
        in_channels: channels of the backbone map (2048 for ResNet-50's conv5).
        out_channels: channels after the conv (1024 in the paper).

    Attributes:
        out_channels: as given.

    Shape:
        ``x``: ``[N, in_channels, H, W]`` -> ``[N, out_channels, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int = 1024) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        return F.relu(self.conv(x))
