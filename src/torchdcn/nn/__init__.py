"""Modules that own their offset/mask predictors and drop in for ``nn.Conv2d`` or RoI pooling."""

from .convert import convert_to_deformable
from .deform_conv import DeformConv2d, ModulatedDeformConv2d
from .frozen_bn import FrozenBatchNorm2d
from .param_groups import param_groups

__all__ = [
    "DeformConv2d",
    "FrozenBatchNorm2d",
    "ModulatedDeformConv2d",
    "convert_to_deformable",
    "param_groups",
]
