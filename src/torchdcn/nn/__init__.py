"""Modules: torchvision's (``DeformConv2d``, ``RoIAlign``, ``RoIPool``, ``PSRoIAlign``,
``PSRoIPool``, same arguments and results), layers that predict their own offsets and drop in for
``nn.Conv2d`` (``DeformConv2dPack``, ``ModulatedDeformConv2dPack``) or RoI pooling (the deformable
RoI pooling modules), and training helpers."""

from .convert import convert_to_deformable
from .deform_conv import (
    DeformConv2d,
    DeformConv2dPack,
    ModulatedDeformConv2d,
    ModulatedDeformConv2dPack,
)
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
    "DeformConv2dPack",
    "DeformPSRoIPool",
    "DeformRoIPool",
    "FrozenBatchNorm2d",
    "ModulatedDeformConv2d",
    "ModulatedDeformConv2dPack",
    "ModulatedDeformRoIPool",
    "PSRoIAlign",
    "PSRoIPool",
    "RoIAlign",
    "RoIPool",
    "convert_to_deformable",
    "param_groups",
]
