"""Feature Pyramid Network neck (Lin et al. 2017): P2-P5 from conv2-conv5, P6 by subsampling P5.

Optional: the papers' layout (RPN on conv4, RoI pooling on conv5 at stride 16) stays the default
of :func:`~torchdcn.models.detection.faster_rcnn`; ``fpn=True`` puts this neck between the
backbone and the heads. Each input map gets a 1x1 lateral conv to ``out_channels``; from the
coarsest down, the running top-down map is upsampled (nearest) to the next finer map's size and
added to its lateral; a 3x3 conv smooths each sum. ``P6`` is ``P5`` subsampled by 2 (a 1x1 max
pool of stride 2), used by the RPN only.

The output names are ``"p<level>"`` with ``level = log2(stride)``, so the backbone's strides (read
from its ``feature_info``) name the levels; nothing is hard-coded.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import FeatureInfo


class FPN(nn.Module):
    """Top-down pathway with lateral connections over a backbone's maps.

    Args:
        in_feature_info: the backbone maps to use, finest first (e.g. the four
            :class:`~torchdcn.models.FeatureInfo` of a ResNet at output stride 32).
        out_channels: channels of every output map (256).
        top_block: add ``P(last + 1)`` by stride-2 subsampling of the coarsest output (P6).

    Attributes:
        feature_info: one :class:`~torchdcn.models.FeatureInfo` ``("p<l>", out_channels, stride)``
            per output, finest first.

    Shape:
        ``features``: a mapping holding every ``in_feature_info`` name, ``[N, C_l, H_l, W_l]`` ->
        an ordered dict ``{"p2": [N, out, H_2, W_2], ..., "p6": [N, out, ceil(H_5 / 2), ...]}``.
    """

    def __init__(
        self,
        in_feature_info: Sequence[FeatureInfo],
        out_channels: int = 256,
        top_block: bool = True,
    ) -> None:
        super().__init__()
        infos = list(in_feature_info)
        if not infos or not all(isinstance(i, FeatureInfo) for i in infos):
            raise TypeError(f"in_feature_info must be a non-empty list of FeatureInfo, got {infos}")
        strides = [i.stride for i in infos]
        if strides != sorted(strides):
            raise ValueError(f"in_feature_info must be ordered finest first, got strides {strides}")
        if len(set(strides)) != len(strides):
            raise ValueError(
                f"in_feature_info strides must be distinct (a dilated stage shares its input's "
                f"stride: build the backbone at output_stride=32 for FPN), got {strides}"
            )
        if out_channels <= 0:
            raise ValueError(f"out_channels must be positive, got {out_channels}")
        self.in_names = [i.name for i in infos]
        self.lateral = nn.ModuleList(nn.Conv2d(i.channels, out_channels, 1) for i in infos)
        self.output = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in infos
        )
        self.top_block = top_block
        self.feature_info = [
            FeatureInfo(f"p{round(math.log2(s))}", out_channels, s) for s in strides
        ]
        if top_block:
            last = strides[-1] * 2
            self.feature_info.append(FeatureInfo(f"p{round(math.log2(last))}", out_channels, last))
        self.out_channels = out_channels
        for conv in [*self.lateral, *self.output]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
        """``{"p2": ..., "p6": ...}``; see the class docstring."""
        missing = [n for n in self.in_names if n not in features]
        if missing:
            raise ValueError(f"features must hold {self.in_names}, missing {missing}")
        maps = [features[n] for n in self.in_names]
        top = self.lateral[-1](maps[-1])
        outs = [self.output[-1](top)]
        for i in range(len(maps) - 2, -1, -1):
            lateral = self.lateral[i](maps[i])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](top))
        if self.top_block:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return OrderedDict((info.name, out) for info, out in zip(self.feature_info, outs))
