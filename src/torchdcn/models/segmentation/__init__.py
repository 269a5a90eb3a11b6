"""Semantic segmenters: DeepLab (v1 paper, section 2.3) with the paper's 1x1 head or ASPP.

- :mod:`.deeplab`: :class:`DeepLab` and the preset :func:`deeplab`;
- :mod:`.reduce_head`: the paper's 1x1 conv to 1024 + ReLU;
- :mod:`.aspp`: atrous spatial pyramid pooling.

A segmenter reads its backbone through ``feature_info`` / ``size_divisibility`` and never imports
from :mod:`torchdcn.models.detection`.
"""

from .aspp import ASPP, default_aspp_rates
from .deeplab import HEADS, IGNORE_INDEX, DeepLab, deeplab
from .reduce_head import ReduceHead

__all__ = [
    "ASPP",
    "HEADS",
    "IGNORE_INDEX",
    "DeepLab",
    "ReduceHead",
    "deeplab",
    "default_aspp_rates",
]
