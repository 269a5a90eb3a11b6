"""ONNX export of the registered ops, with both of ``torch.onnx.export``'s exporters.

* ``torchdcn::deform_conv2d`` becomes the standard ONNX ``DeformConv`` (opset 19; same tensor
  layouts: offsets ``(dy, dx)`` per kernel point, mask ``[N, G*kh*kw, H_out, W_out]``), so
  onnxruntime and any ONNX runtime with ``DeformConv`` run the model without plugins.
* ``torchdcn::roi_aligned_pool`` as called by :func:`torchdcn.ops.roi_align` becomes ONNX
  ``RoiAlign`` (opset 16, ``mode="avg"``): ``aligned=True`` maps to
  ``coordinate_transformation_mode="half_pixel"``, ``aligned=False`` to ``"output_half_pixel"``,
  ``sampling_ratio <= 0`` to 0 (adaptive). Exact except that torchdcn caps the adaptive grid at
  64 samples per axis (only bins wider than 64 feature cells differ).
* ``torchdcn::roi_integer_pool`` as called by :func:`torchdcn.ops.roi_pool` with ``mode="max"``
  (the default, torchvision's) becomes ONNX ``MaxRoiPool`` (opset 1): the same rounding of the
  RoI corners and the same integer bins, exact.
* Every other RoI op (``roi_pool(mode="avg")``, ``ps_roi_pool``, ``ps_roi_align``,
  ``deform_roi_pool``, ``deform_ps_roi_pool``) has no standard ONNX operator: exporting one
  raises :class:`OnnxExportUnsupported` naming the function.
* ``torchdcn::nms`` (:func:`torchdcn.ops.nms`, :func:`torchdcn.ops.batched_nms`) becomes ONNX
  ``NonMaxSuppression`` (opset 11) in a small graph giving the same indices in the same order:
  ``TopK`` sorts the boxes by score (ties: lower index first, as the stable sort), the scores
  given to ``NonMaxSuppression`` are the ranks (``N, N-1, ..., 1``: distinct, so its own order
  and tie rule do not matter), ``batched_nms``'s categories are its classes (``Unique`` numbers
  them; a box's score is 0, under the score threshold, in the other classes), and the kept
  ranks sorted ascending index the sorted boxes. The IoU is computed in float32 by the runtime
  (float64 boxes too) and compared with :func:`nms_iou_threshold`. The TorchScript exporter
  needs nothing; the dynamo exporter needs :func:`onnx_translation_table` (a
  ``torch.onnx.ops.symbolic`` node cannot have an output length that depends on the data).

Deformable convolutions (:func:`torchdcn.ops.deform_conv2d`, the ``torchdcn.nn`` layers) need
nothing passed to either exporter:

* dynamo exporter (``dynamo=True``, torch's default; needs ``onnxscript``):
  :func:`torchdcn.ops.deform_conv2d` returns a ``torch.onnx.ops.symbolic`` ``DeformConv`` node
  while ``torch.onnx.export`` captures the model (:func:`in_dynamo_onnx_export`), so the captured
  graph holds the ONNX node itself;
* TorchScript exporter (``dynamo=False``, deprecated by torch): ``import torchdcn`` registers the
  symbolics (:func:`._onnx_torchscript.register_onnx_symbolics`).

The RoI functions do the same: during ``torch.onnx.export(dynamo=True)``
:func:`torchdcn.ops.roi_align` returns a ``RoiAlign`` node (:func:`roi_align_node`),
``roi_pool(mode="max")`` a ``MaxRoiPool`` node (:func:`max_roi_pool_node`), and the others raise
:class:`OnnxExportUnsupported` naming themselves. The dynamo exporter meets the registered ops
themselves, and needs ``custom_translation_table=torchdcn.ops.onnx_translation_table()``, in
three cases: ``torchdcn::nms`` (always), ``torch.ops.torchdcn.*`` called directly (bypassing the
public functions), and an ``ExportedProgram`` (``torch.export.export``, a loaded ``.pt2``) given
to ``torch.onnx.export``: it was captured before the export began, so the public functions
returned the registered ops, not the ONNX nodes. torch has no public way to register default
translations (its global decomposition table, which the exporter applies to ops it cannot
translate, is also what FakeTensor runs for ops with symbolic shapes, so it is no place for an
export-only rewrite).

An ``opset_version`` below a node's (``DeformConv`` 19, ``RoiAlign`` 16) is refused: the
TorchScript exporter reports the op unsupported at that opset, and with the dynamo exporter,
which would write the node into a model no runtime loads, :func:`check_export_opset` raises
:class:`OnnxExportUnsupported` naming the opsets (:mod:`._onnx_opset`).

Errors: the TorchScript exporter raises :class:`OnnxExportUnsupported` as is; the dynamo
exporter wraps it, raising torch's ``torch.onnx.OnnxExporterError`` (``TorchExportError`` or
``ConversionError``) with the :class:`OnnxExportUnsupported` in its ``__cause__`` chain.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from ._onnx_opset import export_opset

DEFORM_CONV_OPSET = 19  # ONNX DeformConv was added in opset 19
ROI_ALIGN_OPSET = 16  # RoiAlign's coordinate_transformation_mode was added in opset 16


class OnnxExportUnsupported(RuntimeError):
    """A torchdcn op with no equivalent in the standard ONNX operator set, or not at the
    requested opset."""


def check_export_opset(name: str, op_type: str, needed: int) -> None:
    """Raise :class:`OnnxExportUnsupported` when the dynamo export in progress asks for an opset
    below ``needed``, the first with ONNX ``op_type`` as ``name`` uses it (the exporter would
    write the node anyway, into a model that does not load). Unknown opset: no check."""
    opset = export_opset()
    if 0 < opset < needed:
        raise OnnxExportUnsupported(
            f"{name} exports to ONNX {op_type}, which needs opset_version >= {needed}; "
            f"torch.onnx.export got opset_version={opset}, and a model at that opset would not "
            f"load. Pass opset_version={needed} or higher"
        )


def roi_integer_pool_unsupported(
    mode: str, position_sensitive: bool
) -> OnnxExportUnsupported | None:
    """The error for a ``torchdcn::roi_integer_pool`` call that is not max pooling, naming the
    public function that made it; None for :func:`torchdcn.ops.roi_pool` with ``mode="max"``
    (exported as ONNX ``MaxRoiPool``, the same rounding and bins)."""
    if mode == "max" and not position_sensitive:
        return None
    name = "torchdcn.ops.ps_roi_pool" if position_sensitive else (
        f"torchdcn.ops.roi_pool (mode={mode!r})")  # fmt: skip
    return OnnxExportUnsupported(
        f"{name} (op torchdcn::roi_integer_pool, average pooling) has no standard ONNX operator "
        "and cannot be exported; roi_pool with mode='max' exports to ONNX MaxRoiPool and "
        "roi_align to RoiAlign"
    )


def roi_aligned_pool_unsupported(
    has_offset: bool, position_sensitive: bool
) -> OnnxExportUnsupported | None:
    """The error for a ``torchdcn::roi_aligned_pool`` call that is not plain RoIAlign, naming the
    public function that made it; None for plain RoIAlign (exported as ONNX ``RoiAlign``)."""
    if not has_offset and not position_sensitive:
        return None
    if has_offset:
        name = "torchdcn.ops.deform_ps_roi_pool" if position_sensitive else (
            "torchdcn.ops.deform_roi_pool")  # fmt: skip
    else:
        name = "torchdcn.ops.ps_roi_align (or deform_ps_roi_pool without offsets)"
    return OnnxExportUnsupported(
        f"{name} (op torchdcn::roi_aligned_pool with "
        f"{'offsets' if has_offset else 'position-sensitive bins'}) has no standard ONNX "
        "operator and cannot be exported; only torchdcn.ops.roi_align maps to ONNX RoiAlign"
    )


def nms_iou_threshold(iou_threshold: float) -> float:
    """The float32 threshold of the exported ``NonMaxSuppression``, which takes one in [0, 1]:
    the largest float32 number not above ``iou_threshold`` (a float32 IoU is above it exactly
    when it is above ``iou_threshold``, as :func:`torchdcn.ops.nms` compares), and 1 for a
    threshold above 1 (no IoU is above either: nothing is suppressed).

    Raises:
        OnnxExportUnsupported: ``iou_threshold < 0``, with which torchdcn suppresses every box
            after the first, overlapping or not (IoU 0 > threshold).
    """
    from .nms import threshold_in

    if iou_threshold < 0:
        raise OnnxExportUnsupported(
            f"torchdcn.ops.nms export needs iou_threshold >= 0, got {iou_threshold}: ONNX "
            "NonMaxSuppression takes a threshold in [0, 1], and a negative one, which suppresses "
            "boxes that do not overlap, has no equivalent"
        )
    return threshold_in(torch.float32, min(float(iou_threshold), 1.0))


def onnx_translation_table() -> dict[Any, Any]:
    """The translations to pass to the dynamo exporter (``torch.onnx.export(..., dynamo=True)``)
    when it meets the registered ops themselves: :func:`~torchdcn.ops.nms` and
    :func:`~torchdcn.ops.batched_nms` (always), and the other ops called as
    ``torch.ops.torchdcn.*`` or held by an ``ExportedProgram`` given to ``torch.onnx.export``
    (``torch.export.export``'s, a loaded ``.pt2``). (Models calling
    :func:`~torchdcn.ops.deform_conv2d`, :func:`~torchdcn.ops.roi_align`,
    :func:`~torchdcn.ops.roi_pool` or the ``torchdcn.nn`` layers export without it.)

    Returns:
        ``{torch.ops.torchdcn.<op>.default: onnxscript function}`` for ``deform_conv2d``
        (``DeformConv``), the two RoI ops (``RoiAlign`` for :func:`~torchdcn.ops.roi_align`,
        ``MaxRoiPool`` for :func:`~torchdcn.ops.roi_pool` with ``mode="max"``, a clear error for
        the others) and ``nms`` (``NonMaxSuppression``, see the module docstring).

    Raises:
        ImportError: ``onnxscript`` is not installed (``pip install torchdcn[onnx]``).

    Example:
        >>> torch.onnx.export(model, (x,), "model.onnx", opset_version=19, dynamo=True,
        ...                   custom_translation_table=onnx_translation_table())  # doctest: +SKIP
    """
    try:
        from . import _onnx_dynamo
    except ImportError as e:
        raise ImportError(
            "torch.onnx.export(dynamo=True) of torchdcn ops needs onnxscript "
            "(pip install 'torchdcn[onnx]' or pip install onnxscript); the TorchScript exporter "
            f"(dynamo=False) does not: {e}"
        ) from e
    return _onnx_dynamo.translation_table()


# --------------------------------------------------------------------------------------------
# Dynamo exporter without a translation table: torch.onnx.ops.symbolic nodes


# Evaluated for real when Dynamo traces them (torch.onnx.export's strict capture), which would
# otherwise fold torch.onnx.is_in_onnx_export() to False and capture the raw op.
@torch.compiler.assume_constant_result
def in_onnx_export() -> bool:
    """True during ``torch.onnx.export`` with either exporter, also under its Dynamo capture."""
    return torch.onnx.is_in_onnx_export()


@torch.compiler.assume_constant_result
def in_dynamo_onnx_export() -> bool:
    """True while ``torch.onnx.export(dynamo=True)`` captures the model (the TorchScript
    exporter traces with ``torch.jit``, and its symbolics, :mod:`._onnx_torchscript`, handle
    the op there)."""
    return _has_symbolic_ops() and torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()


@functools.cache
def _has_symbolic_ops() -> bool:
    """``torch.onnx.ops.symbolic`` exists (torch >= 2.8); older torch exports the registered op,
    which then needs :func:`onnx_translation_table`."""
    return hasattr(getattr(torch.onnx, "ops", None), "symbolic")


def deform_conv_node(
    input: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """The ONNX ``DeformConv`` node itself (``torch.onnx.ops.symbolic``), for the dynamo exporter:
    :func:`torchdcn.ops.deform_conv2d` returns it during ``torch.onnx.export(dynamo=True)``, so
    no translation table is needed. Arguments as the op's (checked by the caller); returns
    ``Tensor[N, C_out, H_out, W_out]`` (a placeholder outside export)."""
    check_export_opset("torchdcn.ops.deform_conv2d", "DeformConv", DEFORM_CONV_OPSET)
    c_out, c_per_group, kh, kw = weight.shape
    if bias is None and mask is not None:  # DeformConv's inputs are positional: B before mask
        bias = weight.new_zeros(c_out)
    inputs = [input, weight, offset, bias, mask]
    while inputs[-1] is None:  # absent trailing optional inputs are left out
        inputs.pop()
    return torch.onnx.ops.symbolic(
        "DeformConv",
        inputs,
        {
            "kernel_shape": [kh, kw],
            "strides": list(stride),
            "pads": [padding[0], padding[1], padding[0], padding[1]],
            "dilations": list(dilation),
            "group": input.shape[1] // c_per_group,
            "offset_group": offset.shape[1] // (2 * kh * kw),
        },
        dtype=input.dtype,
        shape=[input.shape[0], c_out, offset.shape[2], offset.shape[3]],
        version=DEFORM_CONV_OPSET,
    )


def roi_align_node(
    input: Tensor,
    rois: Tensor,
    pooled_h: int,
    pooled_w: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """The ONNX ``RoiAlign`` node of :func:`torchdcn.ops.roi_align` for the dynamo exporter
    (``torch.onnx.ops.symbolic``; semantics in the module docstring): ``input [N, C, H, W]``,
    ``rois [K, 5]`` -> ``[K, C, pooled_h, pooled_w]``."""
    check_export_opset("torchdcn.ops.roi_align", "RoiAlign", ROI_ALIGN_OPSET)
    boxes = rois[:, 1:5]
    batch = rois[:, 0].to(torch.int64)
    return torch.onnx.ops.symbolic(
        "RoiAlign",
        [input, boxes, batch],
        {
            "coordinate_transformation_mode": "half_pixel" if aligned else "output_half_pixel",
            "mode": "avg",
            "output_height": int(pooled_h),
            "output_width": int(pooled_w),
            "sampling_ratio": max(int(sampling_ratio), 0),
            "spatial_scale": float(spatial_scale),
        },
        dtype=input.dtype,
        shape=[rois.shape[0], input.shape[1], pooled_h, pooled_w],
        version=ROI_ALIGN_OPSET,
    )


def max_roi_pool_node(
    input: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float
) -> Tensor:
    """The ONNX ``MaxRoiPool`` node of ``torchdcn.ops.roi_pool(mode="max")`` for the dynamo
    exporter: ``input [N, C, H, W]``, ``rois [K, 5]`` -> ``[K, C, pooled_h, pooled_w]``."""
    return torch.onnx.ops.symbolic(
        "MaxRoiPool",
        [input, rois],
        {"pooled_shape": [int(pooled_h), int(pooled_w)], "spatial_scale": float(spatial_scale)},
        dtype=input.dtype,
        shape=[rois.shape[0], input.shape[1], pooled_h, pooled_w],
        version=1,
    )
