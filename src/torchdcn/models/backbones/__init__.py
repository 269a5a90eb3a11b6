"""Feature extractors that detectors and segmenters build on.

- :mod:`.resnet`: ResNet-18/34/50/101/152 and ResNeXt (one table, :data:`.resnet.ARCHITECTURES`)
  with deformable presets (``deform="v1"/"v2"``), output stride 32/16/8 and ``features_only``.
- :mod:`.feature_info`: the backbone contract, :class:`FeatureInfo` ``(name, channels, stride)``
  per output and ``size_divisibility``, which detectors and segmenters read.
- :mod:`.deform_config`: which 3x3 convs become deformable (:class:`DeformConfig`, the presets).
- :mod:`.pretrained`: :func:`load_pretrained` from a torchvision / timm / mmdetection file on disk.
"""

from .deform_config import DCN_V1, DCN_V2, DeformConfig
from .feature_info import FeatureInfo
from .pretrained import LoadReport, load_pretrained
from .resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x4d,
    resnext101_32x8d,
)

__all__ = [
    "DCN_V1",
    "DCN_V2",
    "BasicBlock",
    "Bottleneck",
    "DeformConfig",
    "FeatureInfo",
    "LoadReport",
    "ResNet",
    "load_pretrained",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "resnext101_32x8d",
]
