"""An ``ExportedProgram`` (``torch.export.export``'s, or a saved and loaded ``.pt2``) holds the
registered ops, captured before any ONNX export: ``torch.onnx.export(program, ...)`` needs
``custom_translation_table=onnx_translation_table()`` for them (as the README says), and with
it onnxruntime reproduces eager."""

from __future__ import annotations

import pytest
import torch
from onnx_helpers import IGNORE_EXPORTER_WARNINGS, needs_onnxscript, randomise_predictors
from torch import nn

from torchdcn.nn import ModulatedDeformConv2dPack
from torchdcn.ops import onnx_translation_table, roi_align

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = [IGNORE_EXPORTER_WARNINGS, needs_onnxscript]


class _DeformThenRoIAlign(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = ModulatedDeformConv2dPack(4, 6, 3, padding=1)

    def forward(self, x, rois):
        return roi_align(self.conv(x), rois, 2, 0.5, 2, True)


def _program(tmp_path, saved):
    torch.manual_seed(0)
    model = randomise_predictors(_DeformThenRoIAlign(), std=0.3)
    args = (torch.randn(1, 4, 10, 12), torch.tensor([[0.0, 1.0, 2.0, 15.0, 13.0]]))
    program = torch.export.export(model, args)
    if saved:
        torch.export.save(program, tmp_path / "m.pt2")
        program = torch.export.load(tmp_path / "m.pt2")
    return model, args, program


@pytest.mark.parametrize("saved", [False, True], ids=["program", "loaded_pt2"])
def test_exported_program_exports_with_the_translation_table(tmp_path, saved):
    model, args, program = _program(tmp_path, saved)
    onnx_program = torch.onnx.export(
        program, args, opset_version=19, custom_translation_table=onnx_translation_table(),
        verbose=False,
    )  # fmt: skip
    proto = onnx_program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    types = [n.op_type for n in proto.graph.node]
    assert "DeformConv" in types and "RoiAlign" in types
    torch.testing.assert_close(onnx_program(*args)[0], model(*args), rtol=1e-4, atol=1e-4)


def test_exported_program_without_the_table_fails_naming_the_op(tmp_path):
    _, args, program = _program(tmp_path, False)
    with pytest.raises(torch.onnx.OnnxExporterError, match=r"torchdcn\.deform_conv2d"):
        torch.onnx.export(program, args, opset_version=19, verbose=False)
