"""Functional ops with exact gradients: deformable convolution v1/v2 and the RoI pooling family."""

from ._backend import BACKENDS, set_workspace_limit, use_backend, workspace_limit
from .deform_conv import deform_conv2d
from .deform_ps_roi_pool import deform_ps_roi_pool
from .deform_roi_pool import deform_roi_pool
from .ps_roi_align import ps_roi_align, ps_roi_pool
from .roi_align import roi_align
from .roi_pool import roi_pool

__all__ = [
    "BACKENDS",
    "deform_conv2d",
    "deform_ps_roi_pool",
    "deform_roi_pool",
    "ps_roi_align",
    "ps_roi_pool",
    "roi_align",
    "roi_pool",
    "set_workspace_limit",
    "use_backend",
    "workspace_limit",
]
