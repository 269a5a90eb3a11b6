"""The papers' 1x1 channel reduction between conv5 and the RoI pooling (SPEC section 5).

v1 adds "a randomly initialised 1x1 conv" on conv5 before the task head. Its width depends on the
head: 1024 for R-FCN's score maps and DeepLab, 256 for the Faster R-CNN 2fc head in the authors'
released Faster R-CNN networks (the first fc then reads ``256 * 7 * 7`` values instead of
``2048 * 7 * 7``: 12.8 M parameters instead of 103 M). :func:`~.faster_rcnn.faster_rcnn` uses
256 by default (``reduce_channels``; 0 or ``None`` pools from conv5 directly).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import FeatureInfo


class ConvReduce(nn.Module):
    """1x1 conv + ReLU on one backbone map, added to the features under ``<name>_reduced``.

    Args:
        in_feature_info: the backbone's ``feature_info``.
        name: the map to reduce (``"conv5"``).
        out_channels: channels after the conv (256).

    Attributes:
        feature_info: the input's entries followed by ``FeatureInfo("<name>_reduced",
            out_channels, stride)``.
        out_name: ``"<name>_reduced"``.

    Shape:
        ``features``: a mapping holding ``name`` (``[N, C, H, W]``) -> an ordered dict with the
        same entries and ``out_name``: ``[N, out_channels, H, W]``.
    """

    def __init__(
        self, in_feature_info: Sequence[FeatureInfo], name: str = "conv5", out_channels: int = 256
    ) -> None:
        super().__init__()
        infos = {i.name: i for i in in_feature_info}
        if name not in infos:
            raise ValueError(f"name must be one of the backbone's maps {list(infos)}, got {name!r}")
        if out_channels <= 0:
            raise ValueError(f"out_channels must be positive, got {out_channels}")
        self.name = name
        self.out_name = f"{name}_reduced"
        self.conv = nn.Conv2d(infos[name].channels, out_channels, 1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)
        self.feature_info = [
            *in_feature_info,
            FeatureInfo(self.out_name, out_channels, infos[name].stride),
        ]

    def forward(self, features: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
        """The features plus ``out_name``; see the class docstring."""
        if self.name not in features:
            raise ValueError(f"features must hold {self.name!r}, got keys {list(features)}")
        out = OrderedDict(features)
        out[self.out_name] = F.relu(self.conv(features[self.name]))
        return out
