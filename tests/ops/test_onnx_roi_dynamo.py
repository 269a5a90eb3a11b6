"""The RoI family through ``torch.onnx.export(dynamo=True)`` with nothing passed: ``roi_align``
becomes ONNX ``RoiAlign``, max ``roi_pool`` ``MaxRoiPool`` (onnxruntime reproduces both), and
the deformable RoI modules fail with :class:`OnnxExportUnsupported` naming the op, with both
exporters. (With ``custom_translation_table``: tests/ops/test_onnx_export.py.)"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from torchdcn.nn import DeformPSRoIPool, DeformRoIPool, ModulatedDeformRoIPool, RoIAlign, RoIPool
from torchdcn.ops import OnnxExportUnsupported, ps_roi_align, ps_roi_pool, roi_pool

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
HAS_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None
needs_onnxscript = pytest.mark.skipif(not HAS_ONNXSCRIPT, reason="dynamo=True needs onnxscript")
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning", "ignore::FutureWarning"
)


def _export_dynamo(model, args, path):
    """Dynamo export, opset 19, number of RoIs dynamic, no translation table."""
    auto = torch.export.Dim.AUTO
    torch.onnx.export(
        model, tuple(args), str(path), opset_version=19, dynamo=True, verbose=False,
        input_names=["x", "rois"], dynamic_shapes=[None, {0: auto}],
    )  # fmt: skip
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _run(path, x, rois):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x.numpy(), "rois": rois.numpy()})
    return torch.from_numpy(out)


def _rois(gen, k, n, size):
    xy = torch.rand(k, 2, generator=gen) * size * 0.7
    wh = torch.rand(k, 2, generator=gen) * size * 0.5 + 0.2
    batch = torch.randint(0, n, (k, 1), generator=gen).float()
    return torch.cat([batch, xy, xy + wh], 1)


@needs_onnxscript
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_align_module_exports_to_roialign_without_a_table(tmp_path, aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(1)
    model = RoIAlign((3, 4), 0.5, sampling_ratio, aligned).eval()
    x = torch.randn(2, 5, 11, 13, generator=gen)
    rois = _rois(gen, 5, 2, 24.0)
    rois[0, 1:] = torch.tensor([-3.0, -2.5, 5.0, 30.0])  # past the border
    proto = _export_dynamo(model, [x, rois], tmp_path / "a.onnx")
    assert [n.op_type for n in proto.graph.node].count("RoiAlign") == 1
    assert not [n for n in proto.graph.node if n.domain.startswith("torchdcn")]
    for k in (5, 9):
        r = _rois(gen, k, 2, 24.0)
        torch.testing.assert_close(_run(tmp_path / "a.onnx", x, r), model(x, r), rtol=1e-4,
                                   atol=1e-4)  # fmt: skip


@needs_onnxscript
def test_max_roi_pool_module_exports_to_maxroipool_without_a_table(tmp_path):
    gen = torch.Generator().manual_seed(2)
    model = RoIPool((2, 3), 0.5).eval()
    x = torch.randn(2, 4, 10, 12, generator=gen)
    rois = _rois(gen, 4, 2, 22.0)
    proto = _export_dynamo(model, [x, rois], tmp_path / "p.onnx")
    assert [n.op_type for n in proto.graph.node].count("MaxRoiPool") == 1
    r = _rois(gen, 17, 2, 22.0)
    torch.testing.assert_close(_run(tmp_path / "p.onnx", x, r), model(x, r), rtol=0, atol=0)


class _Call(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, rois):
        return self.fn(x, rois)


def _modules():
    return {
        "DeformRoIPool": (DeformRoIPool(4, 2, 0.5, 2), "torchdcn.ops.deform_roi_pool", 4),
        "ModulatedDeformRoIPool": (
            ModulatedDeformRoIPool(4, 2, 0.5, 2, hidden_channels=8),
            "torchdcn.ops.deform_roi_pool",
            4,
        ),
        # its offset branch (PS RoIAlign of the offset fields) is the first op without one
        "DeformPSRoIPool": (DeformPSRoIPool(2, 2, 0.5, 2), "torchdcn.ops.ps_roi_align", 8),
        "roi_pool_avg": (
            _Call(lambda x, r: roi_pool(x, r, 2, 0.5, mode="avg")),
            "torchdcn.ops.roi_pool (mode='avg')",
            4,
        ),
        "ps_roi_pool": (_Call(lambda x, r: ps_roi_pool(x, r, 2, 0.5)), "ps_roi_pool", 8),
        "ps_roi_align": (_Call(lambda x, r: ps_roi_align(x, r, 2, 0.5)), "ps_roi_align", 8),
    }


def _chain(err):
    seen = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


@pytest.mark.parametrize(
    "dynamo",
    [pytest.param(True, id="dynamo", marks=needs_onnxscript), pytest.param(False, id="ts")],
)
@pytest.mark.parametrize(
    "name",
    ["DeformRoIPool", "ModulatedDeformRoIPool", "DeformPSRoIPool"]
    + [pytest.param(n, marks=pytest.mark.slow) for n in ("roi_pool_avg", "ps_roi_pool",
                                                          "ps_roi_align")],
)  # fmt: skip
def test_ops_without_onnx_equivalent_name_themselves(tmp_path, dynamo, name):
    module, public_name, channels = _modules()[name]
    x = torch.randn(1, channels, 8, 8)
    rois = torch.tensor([[0.0, 1.0, 1.0, 12.0, 10.0]])
    module.eval()(x, rois)  # runs eagerly
    with pytest.raises(Exception) as info:
        kwargs = {"dynamo": True, "verbose": False} if dynamo else {"dynamo": False}
        torch.onnx.export(module, (x, rois), str(tmp_path / "u.onnx"), opset_version=19, **kwargs)
    ours = [e for e in _chain(info.value) if isinstance(e, OnnxExportUnsupported)]
    assert ours, f"no OnnxExportUnsupported in {_chain(info.value)!r}"
    assert public_name in str(ours[0]) and "no standard ONNX operator" in str(ours[0])


@pytest.mark.parametrize(
    "dynamo",
    [pytest.param(True, id="dynamo", marks=needs_onnxscript), pytest.param(False, id="ts")],
)
def test_what_each_exporter_raises(tmp_path, dynamo):
    """As the README says: the TorchScript exporter raises OnnxExportUnsupported itself; the
    dynamo exporter raises torch's OnnxExporterError, ours in its ``__cause__`` chain."""
    module = _Call(lambda x, r: ps_roi_align(x, r, 2, 0.5)).eval()
    args = (torch.randn(1, 8, 8, 8), torch.tensor([[0.0, 1.0, 1.0, 12.0, 10.0]]))
    path = str(tmp_path / "u.onnx")
    if not dynamo:
        with pytest.raises(OnnxExportUnsupported, match="ps_roi_align"):
            torch.onnx.export(module, args, path, opset_version=19, dynamo=False)
        return
    with pytest.raises(torch.onnx.OnnxExporterError) as info:
        torch.onnx.export(module, args, path, opset_version=19, dynamo=True, verbose=False)
    assert not isinstance(info.value, OnnxExportUnsupported)
    causes, err = [], info.value.__cause__
    while err is not None:
        causes.append(err)
        err = err.__cause__
    assert any(isinstance(e, OnnxExportUnsupported) and "ps_roi_align" in str(e) for e in causes)
