"""ONNX export of deformable layers whose input size ONNX shape inference cannot give: after a
reflect ``F.pad``, and ``padding="same"`` with an even kernel (the extra bottom/right row and
column). The TorchScript exporter's symbolic reads the channel count from the traced graph
when shape inference has none; both exporters agree with eager in onnxruntime."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from onnx_helpers import EXPORTERS, IGNORE_EXPORTER_WARNINGS, export, randomise_predictors, run_ort
from torch import nn

from torchdcn.nn import DeformConv2dPack, ModulatedDeformConv2dPack

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = IGNORE_EXPORTER_WARNINGS


class _ReflectPadded(nn.Module):
    """A v2 layer with groups and offset groups (the exported ``group`` must still be right)
    after reflect padding, as in image-restoration networks."""

    def __init__(self):
        super().__init__()
        self.conv = ModulatedDeformConv2dPack(4, 6, 3, groups=2, offset_groups=2)

    def forward(self, x):
        return self.conv(F.pad(x, (1, 1, 1, 1), mode="reflect"))


def _same_even():
    return DeformConv2dPack(4, 6, 4, padding="same", groups=2)


MODELS = {"reflect_pad": _ReflectPadded, "same_even_kernel": _same_even}


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("name", list(MODELS))
def test_layer_after_unknown_shape_exports(tmp_path, name, dynamo, dynamic):
    torch.manual_seed(0)
    model = randomise_predictors(MODELS[name](), std=0.3)
    x = torch.randn(1, 4, 9, 8)
    proto = export(model, [x], tmp_path / "m.onnx", dynamo, {"in0": [0, 2, 3]} if dynamic else None)
    (node,) = [n for n in proto.graph.node if n.op_type == "DeformConv"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["group"] == 2
    for inp in [x] + ([torch.randn(2, 4, 13, 6)] if dynamic else []):
        (out,) = run_ort(tmp_path / "m.onnx", [inp])
        torch.testing.assert_close(out, model(inp).detach(), rtol=1e-4, atol=1e-4)
