"""ONNX Script translations of the torchdcn ops for the dynamo exporter (needs ``onnxscript``).

Each function is traced by ``torch.onnx.export(dynamo=True)`` with the op's arguments: tensors
arrive as ONNX IR values (static channel counts readable from ``.shape``), ints/floats/bools/strs
as Python values (ONNX attributes). Parameter names are the op schema's. See :mod:`._onnx`.
"""

from __future__ import annotations

from typing import Any

import torch

# written with opset 18's operators (Cast without opset 19's saturate attribute, which a model at
# opset 13-18 rejects), so that nms (13) and RoiAlign (16) export at the opsets they need;
# DeformConv alone is opset 19's
from onnxscript import opset18 as op
from onnxscript import opset19 as op19

from . import (
    _roi_ops,  # noqa: F401  (registers torch.ops.torchdcn.roi_*_pool)
    deform_conv,  # noqa: F401  (registers torch.ops.torchdcn.deform_conv2d)
)
from . import nms as _nms  # noqa: F401  (registers torch.ops.torchdcn.nms)
from ._onnx import (
    DEFORM_CONV_OPSET,
    ROI_ALIGN_OPSET,
    OnnxExportUnsupported,
    check_export_opset,
    nms_iou_threshold,
    roi_aligned_pool_unsupported,
    roi_integer_pool_unsupported,
)


def _static_dim(value, dim: int, name: str) -> int:
    size = value.shape[dim] if value.shape is not None else None
    if not isinstance(size, int):
        raise OnnxExportUnsupported(
            f"torchdcn.ops.deform_conv2d export needs a static size of {name} dim {dim}, got "
            f"shape {value.shape}"
        )
    return size


def deform_conv2d(
    input,
    offset,
    mask,
    weight,
    bias,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dil_h: int,
    dil_w: int,
):
    """``torchdcn::deform_conv2d`` -> ONNX ``DeformConv`` (X, W, offset, B, mask)."""
    check_export_opset("torchdcn.ops.deform_conv2d", "DeformConv", DEFORM_CONV_OPSET)
    c_in = _static_dim(input, 1, "input")
    _, c_per_group, kh, kw = (_static_dim(weight, d, "weight") for d in range(4))
    offset_channels = _static_dim(offset, 1, "offset")
    return op19.DeformConv(
        input,
        weight,
        offset,
        bias,
        mask,
        kernel_shape=[kh, kw],
        strides=[stride_h, stride_w],
        pads=[pad_h, pad_w, pad_h, pad_w],
        dilations=[dil_h, dil_w],
        group=c_in // c_per_group,
        offset_group=offset_channels // (2 * kh * kw),
    )


def roi_aligned_pool(
    input,
    rois,
    offset,
    mask,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    gamma: float,
    position_sensitive: bool,
):
    """``torchdcn::roi_aligned_pool`` of :func:`torchdcn.ops.roi_align` -> ONNX ``RoiAlign``;
    the deformable and position-sensitive variants raise :class:`OnnxExportUnsupported`."""
    error = roi_aligned_pool_unsupported(offset is not None, bool(position_sensitive))
    if error is not None:
        raise error
    check_export_opset("torchdcn.ops.roi_align", "RoiAlign", ROI_ALIGN_OPSET)
    boxes = op.Slice(rois, [1], [5], [1])
    batch = op.Cast(op.Gather(rois, 0, axis=1), to=7)  # 7: INT64
    return op.RoiAlign(
        input,
        boxes,
        batch,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        mode="avg",
        output_height=pooled_h,
        output_width=pooled_w,
        sampling_ratio=max(int(sampling_ratio), 0),
        spatial_scale=float(spatial_scale),
    )


def roi_integer_pool(
    input,
    rois,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    mode: str,
    position_sensitive: bool,
):
    """``torchdcn::roi_integer_pool`` of ``roi_pool(mode="max")`` -> ONNX ``MaxRoiPool``;
    average and position-sensitive pooling raise :class:`OnnxExportUnsupported`."""
    error = roi_integer_pool_unsupported(mode, bool(position_sensitive))
    if error is not None:
        raise error
    return op.MaxRoiPool(
        input, rois, pooled_shape=[pooled_h, pooled_w], spatial_scale=float(spatial_scale)
    )


def nms(boxes, scores, idxs, iou_threshold: float):
    """``torchdcn::nms`` -> ``NonMaxSuppression`` on the boxes sorted by score, with their ranks
    as scores and ``batched_nms``'s categories as classes (the graph: :mod:`._onnx`; the same
    as the TorchScript exporter's)."""
    threshold = nms_iou_threshold(iou_threshold)
    n = op.Shape(boxes, start=0, end=1)  # [1]
    _, order = op.TopK(scores, n, axis=0, largest=1, sorted=1)
    sorted_boxes = op.Cast(op.Gather(boxes, order, axis=0), to=1)  # 1: FLOAT
    rank = op.Cast(op.Range(op.Squeeze(n, [0]), op.Constant(value_int=0),
                            op.Constant(value_int=-1)), to=1)  # fmt: skip
    if idxs is None:
        class_scores = op.Unsqueeze(rank, [0, 1])  # [1, 1, N]
    else:
        categories = op.Cast(op.Gather(idxs, order, axis=0), to=7)  # 7: INT64
        classes, _, inverse, _ = op.Unique(categories, sorted=1)
        c = op.Squeeze(op.Shape(classes, start=0, end=1), [0])
        member = op.Equal(
            op.Unsqueeze(op.Range(op.Constant(value_int=0), c, op.Constant(value_int=1)), [1]),
            op.Unsqueeze(inverse, [0]),
        )  # [C, N]
        class_scores = op.Unsqueeze(
            op.Where(member, rank, op.Constant(value_float=0.0)), [0]
        )  # [1, C, N]
    selected = op.NonMaxSuppression(
        op.Unsqueeze(sorted_boxes, [0]),  # [1, N, 4]
        class_scores,
        op.Constant(value_ints=[2**63 - 1]),  # max_output_boxes_per_class: all
        op.Constant(value_floats=[threshold]),
        op.Constant(value_floats=[0.5]),  # score_threshold: ranks are >= 1, other classes' 0
    )  # [K, 3]: (batch, class, rank)
    kept = op.Gather(selected, op.Constant(value_int=2), axis=1)  # [K]
    kept, _ = op.TopK(kept, op.Shape(kept), axis=0, largest=0, sorted=1)
    return op.Gather(order, kept, axis=0)


def translation_table() -> dict[Any, Any]:
    """``{op overload: translation}`` for ``torch.onnx.export(custom_translation_table=...)``."""
    ops = torch.ops.torchdcn
    return {
        ops.deform_conv2d.default: deform_conv2d,
        ops.roi_aligned_pool.default: roi_aligned_pool,
        ops.roi_integer_pool.default: roi_integer_pool,
        ops.nms.default: nms,
    }
