"""Feature extractors that detectors and segmenters build on.

- :mod:`.resnet`: ResNet-18/34/50/101/152 and ResNeXt (one table, :data:`.resnet.ARCHITECTURES`)
  with deformable presets (``deform="v1"/"v2"``), output stride 32/16/8 and ``features_only``.
- :mod:`.feature_info`: the backbone contract, :class:`FeatureInfo` ``(name, channels, stride)``
  per output and ``size_divisibility``, which detectors and segmenters read.
- :mod:`.deform_config`: which 3x3 convs become deformable (:class:`DeformConfig`, the presets).
- :mod:`.pretrained`: :func:`load_pretrained` from a torchvision / timm / mmdetection file on disk.
- :mod:`.checkpoint_sources`, :mod:`.mmdet_weights`, :mod:`.detectron2_weights`: DCN checkpoints
  of mmdetection/mmcv and detectron2 (``load_pretrained(..., source=...)``), the ``deform=``
  they need (:func:`deform_from_checkpoint`); :mod:`.caffe_stride`: :func:`stride_in_1x1`.
"""

from .caffe_stride import stride_in_1x1
from .checkpoint_sources import SOURCES, convert_state_dict, deform_from_checkpoint
from .deform_config import DCN_V1, DCN_V2, DeformConfig
from .detectron2_weights import deform_from_detectron2, detectron2_to_torchdcn
from .feature_info import FeatureInfo
from .mmdet_weights import deform_from_mmdet, mmdet_to_torchdcn
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
from .task_backbone import task_backbone

__all__ = [
    "DCN_V1",
    "DCN_V2",
    "SOURCES",
    "BasicBlock",
    "Bottleneck",
    "DeformConfig",
    "FeatureInfo",
    "LoadReport",
    "ResNet",
    "convert_state_dict",
    "deform_from_checkpoint",
    "deform_from_detectron2",
    "deform_from_mmdet",
    "detectron2_to_torchdcn",
    "load_pretrained",
    "mmdet_to_torchdcn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "resnext101_32x8d",
    "stride_in_1x1",
    "task_backbone",
]
