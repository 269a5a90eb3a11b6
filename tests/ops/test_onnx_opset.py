"""The dynamo exporter writes a ``torch.onnx.ops.symbolic`` node whatever the opset the model is
exported at, so an ``opset_version`` below the one ONNX ``DeformConv`` (19) or ``RoiAlign``'s
``coordinate_transformation_mode`` (16) needs is refused with
:class:`~torchdcn.ops.OnnxExportUnsupported` naming the opset (the model would not load)."""

from __future__ import annotations

import pytest
import torch
from onnx_helpers import (
    IGNORE_EXPORTER_WARNINGS,
    exception_chain,
    export,
    needs_onnxscript,
    run_ort,
)
from torch import nn

from torchdcn.nn import ModulatedDeformConv2dPack, RoIAlign
from torchdcn.ops import OnnxExportUnsupported

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = [IGNORE_EXPORTER_WARNINGS, needs_onnxscript]


class _RawOp(nn.Module):
    """The registered op called directly: exported through the translation table."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 4, 3, 3))

    def forward(self, x, offset):
        return torch.ops.torchdcn.deform_conv2d(x, offset, None, self.weight, None,
                                                1, 1, 1, 1, 1, 1)  # fmt: skip


X = torch.randn(1, 4, 8, 8)
ROIS = torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0]])
CASES = {
    # name: (model, args, opset, public name, ONNX op, opset needed, translation table)
    "deform_conv_18": (lambda: ModulatedDeformConv2dPack(4, 6, 3, padding=1), [X], 18,
                       "torchdcn.ops.deform_conv2d", "DeformConv", 19, False),
    "deform_conv_17": (lambda: ModulatedDeformConv2dPack(4, 6, 3, padding=1), [X], 17,
                       "torchdcn.ops.deform_conv2d", "DeformConv", 19, False),
    "roi_align_15": (lambda: RoIAlign(2, 1.0, 2, True), [X, ROIS], 15, "torchdcn.ops.roi_align",
                     "RoiAlign", 16, False),
    "raw_op_with_table_18": (_RawOp, [X, torch.randn(1, 18, 8, 8)], 18,
                             "torchdcn.ops.deform_conv2d", "DeformConv", 19, True),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_opset_below_the_nodes_is_refused(tmp_path, name):
    make, args, opset, public, op_type, needed, table = CASES[name]
    with pytest.raises(Exception) as info:
        export(make().eval(), args, tmp_path / "m.onnx", True, table=table, opset=opset)
    ours = [e for e in exception_chain(info.value) if isinstance(e, OnnxExportUnsupported)]
    assert ours, f"no OnnxExportUnsupported in {exception_chain(info.value)!r}"
    message = str(ours[0])
    assert public in message and op_type in message
    assert f"opset_version >= {needed}" in message and f"got opset_version={opset}" in message


def test_lowest_opsets_and_torchs_default_export(tmp_path):
    """RoiAlign at 16; DeformConv with torch's default opset (20 in torch 2.13), nothing
    passed: the check lets them through, and the models load and run."""
    roi = RoIAlign(2, 1.0, 2, True).eval()
    export(roi, [X, ROIS], tmp_path / "r.onnx", True, opset=16)
    (out,) = run_ort(tmp_path / "r.onnx", [X, ROIS])
    torch.testing.assert_close(out, roi(X, ROIS), rtol=1e-4, atol=1e-5)
    layer = ModulatedDeformConv2dPack(4, 6, 3, padding=1).eval()
    program = torch.onnx.export(layer, (X,), dynamo=True, verbose=False)
    onnx.checker.check_model(program.model_proto, full_check=True)
    torch.testing.assert_close(program(X)[0], layer(X), rtol=1e-4, atol=1e-4)


def test_export_opset_outside_export_is_unknown():
    from torchdcn.ops._onnx_opset import export_opset

    assert export_opset() == 0


class _RawRoIOp(nn.Module):
    """The registered RoI op called directly: exported through the translation table."""

    def forward(self, x, rois):
        return torch.ops.torchdcn.roi_aligned_pool(x, rois, None, None, 2, 2, 1.0, 2, True, 0.0,
                                                   False)  # fmt: skip


class _NMS(nn.Module):
    def forward(self, boxes, scores):
        from torchdcn.ops import nms

        return nms(boxes, scores, 0.5)


@pytest.mark.parametrize("opset", [16, 17, 18])
def test_translation_table_graphs_load_below_opset_19(tmp_path, opset):
    """The translation table's graphs (nms, the raw RoI op) are written with opset 18's
    operators: with opset 19's Cast (its saturate attribute) a model at 16-18 failed
    onnx.checker and onnxruntime's load."""
    raw = _RawRoIOp().eval()
    export(raw, [X, ROIS], tmp_path / "r.onnx", True, table=True, opset=opset)
    onnx.checker.check_model(onnx.load(tmp_path / "r.onnx"), full_check=True)
    (out,) = run_ort(tmp_path / "r.onnx", [X, ROIS])
    torch.testing.assert_close(out, raw(X, ROIS), rtol=1e-4, atol=1e-5)
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    export(_NMS().eval(), [boxes, scores], tmp_path / "n.onnx", True, table=True, opset=opset)
    onnx.checker.check_model(onnx.load(tmp_path / "n.onnx"), full_check=True)
    (keep,) = run_ort(tmp_path / "n.onnx", [boxes, scores])
    assert keep.tolist() == [0, 2]
