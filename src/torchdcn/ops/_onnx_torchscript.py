"""The TorchScript exporter's (``torch.onnx.export(..., dynamo=False)``) symbolics of the
torchdcn ops: functions over ``torch._C.Graph`` that ``import torchdcn`` registers
(:func:`register_onnx_symbolics`). What each op becomes: :mod:`._onnx`."""

from __future__ import annotations

import torch

from ._onnx import (
    DEFORM_CONV_OPSET,
    ROI_ALIGN_OPSET,
    OnnxExportUnsupported,
    nms_iou_threshold,
    roi_aligned_pool_unsupported,
    roi_integer_pool_unsupported,
)


def _static_sizes(g, value, position: int, name: str, dims: tuple[int, ...]) -> list[int]:
    """Sizes of ``dims`` of the op's input ``value`` (its ``position``-th input), which must be
    known at export time.

    ONNX shape inference gives them for most graphs, but not after an op whose output shape it
    cannot infer (``F.pad`` in reflect mode, a ``Pad`` whose pads are computed): then they come
    from the traced graph, which records the example input's sizes. The dims asked for are
    channel counts and kernel sizes, which the weights fix, so the example's are the model's.
    """
    from torch.onnx import symbolic_helper

    node = getattr(g, "original_node", None)
    candidates = [value] + ([node.inputsAt(position)] if node is not None else [])
    sizes = None
    for candidate in candidates:
        sizes = symbolic_helper._get_tensor_sizes(candidate)
        if sizes is not None and all(d < len(sizes) and sizes[d] is not None for d in dims):
            return [sizes[d] for d in dims]
    raise OnnxExportUnsupported(
        f"torchdcn.ops.deform_conv2d export needs the static sizes of {name} dims {dims}, "
        f"got sizes {sizes}"
    )


def _deform_conv2d_symbolic(
    g, input, offset, mask, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w
):
    """``torchdcn::deform_conv2d`` -> ONNX ``DeformConv`` (inputs X, W, offset, B, mask)."""
    from torch.onnx import symbolic_helper

    ints = [
        symbolic_helper._get_const(v, "i", n)
        for v, n in zip(
            (stride_h, stride_w, pad_h, pad_w, dil_h, dil_w),
            ("stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w"),
        )
    ]
    sh, sw, ph, pw, dh, dw = (int(i) for i in ints)
    # positions in the op's schema: input, offset, mask, weight, ...
    (c_in,) = _static_sizes(g, input, 0, "input", (1,))
    c_out, c_per_group, kh, kw = _static_sizes(g, weight, 3, "weight", (0, 1, 2, 3))
    (offset_channels,) = _static_sizes(g, offset, 1, "offset", (1,))
    inputs = [input, weight, offset]
    if symbolic_helper._is_none(bias):
        # DeformConv's B is optional, but mask comes after it: an explicit zero bias is exact
        dtype = weight.type().dtype() if weight.type().dtype() is not None else torch.float32
        bias = g.op("Constant", value_t=torch.zeros(c_out, dtype=dtype))
    inputs.append(bias)
    if not symbolic_helper._is_none(mask):
        inputs.append(mask)
    return g.op(
        "DeformConv",
        *inputs,
        kernel_shape_i=[kh, kw],
        strides_i=[sh, sw],
        pads_i=[ph, pw, ph, pw],
        dilations_i=[dh, dw],
        group_i=c_in // c_per_group,
        offset_group_i=offset_channels // (2 * kh * kw),
    )


def _roi_aligned_pool_symbolic(
    g, input, rois, offset, mask, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned,
    gamma, position_sensitive,
):  # fmt: skip
    """``torchdcn::roi_aligned_pool`` of :func:`torchdcn.ops.roi_align` -> ONNX ``RoiAlign``."""
    from torch.onnx import symbolic_helper

    ps = bool(symbolic_helper._get_const(position_sensitive, "b", "position_sensitive"))
    error = roi_aligned_pool_unsupported(not symbolic_helper._is_none(offset), ps)
    if error is not None:
        raise error
    start = g.op("Constant", value_t=torch.tensor([1], dtype=torch.long))
    end = g.op("Constant", value_t=torch.tensor([5], dtype=torch.long))
    axis = g.op("Constant", value_t=torch.tensor([1], dtype=torch.long))
    boxes = g.op("Slice", rois, start, end, axis)
    zero = g.op("Constant", value_t=torch.tensor(0, dtype=torch.long))
    batch = g.op("Cast", g.op("Gather", rois, zero, axis_i=1), to_i=7)  # 7: INT64
    ratio = int(symbolic_helper._get_const(sampling_ratio, "i", "sampling_ratio"))
    is_aligned = bool(symbolic_helper._get_const(aligned, "b", "aligned"))
    return g.op(
        "RoiAlign",
        input,
        boxes,
        batch,
        coordinate_transformation_mode_s="half_pixel" if is_aligned else "output_half_pixel",
        mode_s="avg",
        output_height_i=int(symbolic_helper._get_const(pooled_h, "i", "pooled_h")),
        output_width_i=int(symbolic_helper._get_const(pooled_w, "i", "pooled_w")),
        sampling_ratio_i=max(ratio, 0),
        spatial_scale_f=float(symbolic_helper._get_const(spatial_scale, "f", "spatial_scale")),
    )


def _roi_integer_pool_symbolic(g, input, rois, pooled_h, pooled_w, spatial_scale, mode, ps):
    """``torchdcn::roi_integer_pool`` of ``roi_pool(mode="max")`` -> ONNX ``MaxRoiPool``."""
    from torch.onnx import symbolic_helper

    mode_s = symbolic_helper._get_const(mode, "s", "mode")
    error = roi_integer_pool_unsupported(mode_s, bool(symbolic_helper._get_const(ps, "b", "ps")))
    if error is not None:
        raise error
    return g.op(
        "MaxRoiPool",
        input,
        rois,
        pooled_shape_i=[
            int(symbolic_helper._get_const(pooled_h, "i", "pooled_h")),
            int(symbolic_helper._get_const(pooled_w, "i", "pooled_w")),
        ],
        spatial_scale_f=float(symbolic_helper._get_const(spatial_scale, "f", "spatial_scale")),
    )


NMS_OPSET = 13  # NonMaxSuppression and Unique: 11; Unsqueeze / Squeeze take axes as inputs: 13
_INT64, _FLOAT = 7, 1  # ONNX TensorProto data types


def _nms_symbolic(g, boxes, scores, idxs, iou_threshold):
    """``torchdcn::nms`` -> ``NonMaxSuppression`` on the boxes sorted by score, with their ranks
    as scores and ``batched_nms``'s categories as classes (the graph: :mod:`._onnx`)."""
    from torch.onnx import symbolic_helper

    def const(value, dtype=torch.long):
        return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

    threshold = nms_iou_threshold(symbolic_helper._get_const(iou_threshold, "f", "iou_threshold"))
    n = g.op("Gather", g.op("Shape", boxes), const([0]), axis_i=0)  # [1]
    _, order = g.op("TopK", scores, n, axis_i=0, largest_i=1, sorted_i=1, outputs=2)
    sorted_boxes = g.op("Cast", g.op("Gather", boxes, order, axis_i=0), to_i=_FLOAT)
    rank = g.op("Cast", g.op("Range", g.op("Squeeze", n, const([0])), const(0), const(-1)),
                to_i=_FLOAT)  # fmt: skip
    if symbolic_helper._is_none(idxs):
        class_scores = g.op("Unsqueeze", rank, const([0, 1]))  # [1, 1, N]
    else:
        categories = g.op("Cast", g.op("Gather", idxs, order, axis_i=0), to_i=_INT64)
        classes, _, inverse, _ = g.op("Unique", categories, sorted_i=1, outputs=4)
        c = g.op("Squeeze", g.op("Gather", g.op("Shape", classes), const([0]), axis_i=0),
                 const([0]))  # fmt: skip
        member = g.op(
            "Equal",
            g.op("Unsqueeze", g.op("Range", const(0), c, const(1)), const([1])),
            g.op("Unsqueeze", inverse, const([0])),
        )  # [C, N]
        class_scores = g.op(
            "Unsqueeze", g.op("Where", member, rank, const(0.0, torch.float)), const([0])
        )  # [1, C, N]
    selected = g.op(
        "NonMaxSuppression",
        g.op("Unsqueeze", sorted_boxes, const([0])),  # [1, N, 4]
        class_scores,
        const([2**63 - 1]),  # max_output_boxes_per_class: all
        const([threshold], torch.float),
        const([0.5], torch.float),  # score_threshold: ranks are >= 1, other classes' 0
    )  # [K, 3]: (batch, class, rank)
    kept = g.op("Gather", selected, const(2), axis_i=1)  # [K]
    kept, _ = g.op("TopK", kept, g.op("Shape", kept), axis_i=0, largest_i=0, sorted_i=1,
                   outputs=2)  # fmt: skip
    return g.op("Gather", order, kept, axis_i=0)


def register_onnx_symbolics() -> None:
    """Register the TorchScript-exporter symbolics of every torchdcn op (idempotent).

    Called by ``import torchdcn``; DeformConv needs ``opset_version >= 19``, RoiAlign >= 16, NMS
    >= 13 (an older opset makes the exporter report the op as unsupported at that version).
    """
    register = torch.onnx.register_custom_op_symbolic
    register("torchdcn::deform_conv2d", _deform_conv2d_symbolic, DEFORM_CONV_OPSET)
    register("torchdcn::roi_aligned_pool", _roi_aligned_pool_symbolic, ROI_ALIGN_OPSET)
    register("torchdcn::roi_integer_pool", _roi_integer_pool_symbolic, 1)
    register("torchdcn::nms", _nms_symbolic, NMS_OPSET)
