"""Functional ops with exact gradients: deformable convolution v1/v2 and the RoI pooling family."""

from ._backend import BACKENDS, set_workspace_limit, use_backend, workspace_limit
from ._checks import (
    pair,  # argument normaliser shared with torchdcn.nn (kernel_size, output_size)
    real_scalar,  # the scalar-argument rule, shared with torchdcn.nn
)
from ._onnx import OnnxExportUnsupported, onnx_translation_table
from ._onnx_torchscript import register_onnx_symbolics
from ._roi_checks import RoIs  # the RoI argument type: Tensor[R, 5] or list of Tensor[R_i, 4]
from ._types import IntPair  # a size argument: 3 or (3, 5)
from .boxes import box_area, box_iou, clip_boxes_to_image, remove_small_boxes
from .deform_conv import deform_conv2d
from .deform_ps_roi_pool import deform_ps_roi_pool
from .deform_roi_pool import deform_roi_pool
from .nms import batched_nms, nms
from .ps_roi_align import ps_roi_align, ps_roi_pool
from .roi_align import roi_align
from .roi_pool import roi_pool

__all__ = [
    "BACKENDS",
    "IntPair",
    "OnnxExportUnsupported",
    "RoIs",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "deform_conv2d",
    "deform_ps_roi_pool",
    "deform_roi_pool",
    "nms",
    "onnx_translation_table",
    "pair",
    "ps_roi_align",
    "ps_roi_pool",
    "real_scalar",
    "register_onnx_symbolics",
    "remove_small_boxes",
    "roi_align",
    "roi_pool",
    "set_workspace_limit",
    "use_backend",
    "workspace_limit",
]

register_onnx_symbolics()  # TorchScript exporter: DeformConv, RoiAlign, MaxRoiPool (cheap)
