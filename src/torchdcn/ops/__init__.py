"""Functional ops with exact gradients: deformable convolution v1/v2 and the RoI pooling family."""

from ._backend import BACKENDS, set_workspace_limit, use_backend, workspace_limit
from .deform_conv import deform_conv2d

__all__ = [
    "BACKENDS",
    "deform_conv2d",
    "set_workspace_limit",
    "use_backend",
    "workspace_limit",
]
