"""Architectures built from :mod:`torchdcn.nn`: ResNet/ResNeXt backbones and the MNIST demo CNN."""

from .deform_config import DCN_V1, DCN_V2, DeformConfig
from .mnist_cnn import MnistCNN, MnistCNNConfig
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
    "LoadReport",
    "MnistCNN",
    "MnistCNNConfig",
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
