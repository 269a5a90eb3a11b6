"""Atrous spatial pyramid pooling (ASPP): parallel dilated 3x3 convs over one feature map.

DeepLab v2 samples the map at several rates side by side; v3 adds a 1x1 branch and a branch of
image-level (global average) features, concatenates the branches and projects them with a 1x1
conv. That is what :class:`ASPP` computes. The usual rates are 6, 12, 18 at output stride 16 and
twice those (12, 24, 36) at output stride 8, so the branches see the same image distances.

Every conv has a bias and is followed by a ReLU; there is no normalisation layer, so the head works
with any batch size, including one image per process (the image-pooling branch sees a single
value per channel and image, where BatchNorm in training mode fails).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def default_aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """The dilation rates for ``output_stride``: ``(6, 12, 18)`` at 16, ``(12, 24, 36)`` at 8,
    ``(3, 6, 9)`` at 32 (the same distances in image pixels, 96 / 192 / 288)."""
    rates = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}
    if output_stride not in rates:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    return rates[output_stride]


class ASPP(nn.Module):
    """ASPP head: a 1x1 branch, one dilated 3x3 branch per rate, an image-pooling branch;
    concatenated and projected to ``out_channels`` by a 1x1 conv (each conv + ReLU).

    Args:
        in_channels: channels of the input map (conv5: 2048 for ResNet-50).
        out_channels: channels of every branch and of the output (256).
        rates: dilation (= padding) of the 3x3 branches, at least one, each >= 1.
        image_pooling: include the global-average-pooling branch.

    Attributes:
        out_channels: as given (what a classifier after the head reads).

    Shape:
        ``x``: ``[N, in_channels, H, W]`` -> ``[N, out_channels, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        image_pooling: bool = True,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}"
            )
        rates = tuple(rates)
        if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
            raise ValueError(f"rates must be a non-empty sequence of ints >= 1, got {rates!r}")
        self.in_channels, self.out_channels, self.rates = in_channels, out_channels, rates
        branches = [nn.Conv2d(in_channels, out_channels, 1)]
        branches += [nn.Conv2d(in_channels, out_channels, 3, padding=r, dilation=r) for r in rates]
        self.branches = nn.ModuleList(branches)
        self.pool = nn.Conv2d(in_channels, out_channels, 1) if image_pooling else None
        n_branches = len(branches) + (1 if image_pooling else 0)
        self.project = nn.Conv2d(n_branches * out_channels, out_channels, 1)
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        outs = [F.relu(branch(x)) for branch in self.branches]
        if self.pool is not None:
            pooled = F.relu(self.pool(x.mean(dim=(2, 3), keepdim=True)))
            outs.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return F.relu(self.project(torch.cat(outs, dim=1)))

    def extra_repr(self) -> str:
        pooling = "" if self.pool is not None else ", image_pooling=False"
        return f"{self.in_channels}, {self.out_channels}, rates={self.rates}{pooling}"
