"""Modules that own their offset/mask predictors and drop in for ``nn.Conv2d`` or RoI pooling."""

from .deform_conv import DeformConv2d, ModulatedDeformConv2d
from .param_groups import param_groups

__all__ = [
    "DeformConv2d",
    "ModulatedDeformConv2d",
    "param_groups",
]
