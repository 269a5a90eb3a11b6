"""Deformable models through torch's own serialisation: ``torch.export`` (with dynamic shapes,
saved and loaded as ``.pt2``) and ``torch.jit.trace`` (saved and loaded); the loaded programs
reproduce eager on inputs other than the ones they were captured with. (``torch.jit.script``
is covered in tests/nn/test_deform_conv_modules.py, ``torch.compile`` in test_deform_conv.py.)"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from torchdcn.nn import DeformConv2dPack, ModulatedDeformConv2dPack


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        ModulatedDeformConv2dPack(8, 8, 3, padding=1, groups=2, offset_groups=2),
        nn.ReLU(),
        DeformConv2dPack(8, 4, 3, stride=2, padding=1, dilation=1),
    )
    with torch.no_grad():  # non-zero offsets, so the sampling depends on the input
        for m in model.modules():
            if isinstance(m, DeformConv2dPack):
                m.conv_offset.weight.normal_(0, 0.1)
                m.conv_offset.bias.uniform_(-1, 1)
    return model.eval()


def _targets(graph: torch.fx.Graph) -> list[str]:
    return [str(n.target) for n in graph.nodes if n.op == "call_function"]


def test_torch_export_dynamic_save_load(tmp_path):
    model = _model()
    x = torch.randn(2, 3, 10, 12)
    auto = torch.export.Dim.AUTO
    program = torch.export.export(model, (x,), dynamic_shapes=({0: auto, 2: auto, 3: auto},))
    # the op stays one node (not traced through its Python kernels), also after decomposition
    for graph in (program.graph, program.run_decompositions().graph):
        assert _targets(graph).count("torchdcn.deform_conv2d.default") == 2
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = torch.export.load(tmp_path / "model.pt2").module()
    for shape in ((2, 3, 10, 12), (1, 3, 15, 9), (3, 3, 20, 16)):
        x = torch.randn(shape)
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_jit_trace_save_load():
    model = _model()
    traced = torch.jit.trace(model, torch.randn(2, 3, 10, 12))
    assert "torchdcn::deform_conv2d" in str(traced.inlined_graph)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    for shape in ((2, 3, 10, 12), (1, 3, 15, 9)):  # the op is not specialised to the trace size
        x = torch.randn(shape)
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)
