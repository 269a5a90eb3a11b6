"""Architectures built from :mod:`torchdcn.nn`, one sub-package per task.

- :mod:`.backbones`: ResNet / ResNeXt with deformable presets, :func:`load_pretrained`.
- :mod:`.classification`: the MNIST demo CNN.
- :mod:`.detection`: RPN, class-aware RPN detector, Faster R-CNN, R-FCN, Mask R-CNN
  (:func:`faster_rcnn`, :func:`rpn_detector`, :func:`rfcn`, :func:`mask_rcnn`), R-CNN feature
  mimicking.
- :mod:`.segmentation`: DeepLab (:func:`deeplab`, paper head or ASPP).

Tasks stand side by side and never import each other; all of them read backbones.
"""

from .backbones import (
    DCN_V1,
    DCN_V2,
    BasicBlock,
    Bottleneck,
    DeformConfig,
    FeatureInfo,
    LoadReport,
    ResNet,
    load_pretrained,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x4d,
    resnext101_32x8d,
)
from .classification import MnistCNN, MnistCNNConfig
from .detection import FasterRCNN, RPNDetector, faster_rcnn, rpn_detector
from .segmentation import DeepLab, deeplab

__all__ = [
    "DCN_V1",
    "DCN_V2",
    "BasicBlock",
    "Bottleneck",
    "DeepLab",
    "DeformConfig",
    "FasterRCNN",
    "FeatureInfo",
    "LoadReport",
    "MnistCNN",
    "MnistCNNConfig",
    "RPNDetector",
    "ResNet",
    "deeplab",
    "faster_rcnn",
    "load_pretrained",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "resnext101_32x8d",
    "rpn_detector",
]
