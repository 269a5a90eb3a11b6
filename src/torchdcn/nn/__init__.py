"""Modules that own their offset/mask predictors and drop in for ``nn.Conv2d`` or RoI pooling."""

from .convert import convert_to_deformable
from .deform_conv import DeformConv2d, ModulatedDeformConv2d
from .frozen_bn import FrozenBatchNorm2d
from .param_groups import param_groups
from .roi_pool import (
    DeformPSRoIPool,
    DeformRoIPool,
    ModulatedDeformRoIPool,
    PSRoIAlign,
    PSRoIPool,
    RoIAlign,
    RoIPool,
)

__all__ = [
    "DeformConv2d",
    "DeformPSRoIPool",
    "DeformRoIPool",
    "FrozenBatchNorm2d",
    "ModulatedDeformConv2d",
    "ModulatedDeformRoIPool",
    "PSRoIAlign",
    "PSRoIPool",
    "RoIAlign",
    "RoIPool",
    "convert_to_deformable",
    "param_groups",
]
