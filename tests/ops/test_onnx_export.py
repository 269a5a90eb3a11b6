"""ONNX export (``torchdcn.ops._onnx``): models with deformable convolutions become standard
``DeformConv`` nodes with both exporters, and onnxruntime (an independent implementation of
DeformConv and RoiAlign) reproduces the PyTorch outputs; the RoI ops without an ONNX equivalent
fail with an error naming them."""

from __future__ import annotations

import sys

import pytest
import torch
from onnx_helpers import (
    EXPORTERS,
    IGNORE_EXPORTER_WARNINGS,
    exception_chain,
    export,
    op_types,
    randomise_predictors,
    run_ort,
)
from torch import nn

import torchdcn
from torchdcn.nn import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack
from torchdcn.ops import (
    OnnxExportUnsupported,
    deform_conv2d,
    deform_ps_roi_pool,
    deform_roi_pool,
    onnx_translation_table,
    ps_roi_align,
    ps_roi_pool,
    roi_align,
    roi_pool,
)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = IGNORE_EXPORTER_WARNINGS


# ---------------------------------------------------------------------------------------------
# One layer, every argument


CONFIGS = {
    # name: (channels, kernel, stride, padding, dilation, groups, offset_groups, bias)
    "plain": (4, 3, 1, 1, 1, 1, 1, True),
    "groups_offset_groups": (4, 3, 1, 1, 1, 2, 4, False),
    "stride_pad_dil": (4, (3, 2), (2, 1), (2, 0), (1, 2), 1, 2, True),
    "dilation_no_bias": (6, 3, 2, 2, 2, 3, 1, False),
}


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_layers_export_to_deformconv(tmp_path, dynamo, config):
    """A v1 layer then a v2 layer (mask input), both with the config's arguments."""
    c, k, st, pd, dl, groups, og, bias = CONFIGS[config]
    torch.manual_seed(0)
    layers = [cls(c, c, k, st, pd, dl, groups=groups, bias=bias, offset_groups=og)
              for cls in (DeformConv2dPack, ModulatedDeformConv2dPack)]  # fmt: skip
    model = randomise_predictors(nn.Sequential(*layers))
    x = torch.randn(2, c, 9, 10)
    proto = export(model, [x], tmp_path / "m.onnx", dynamo)
    types = op_types(proto)
    assert types.count("DeformConv") == 2 and types.count("Conv") == 2  # predictors: plain Conv
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)  # standard ops only
    nodes = [n for n in proto.graph.node if n.op_type == "DeformConv"]
    for node, modulated in zip(nodes, (False, True), strict=True):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["group"] == groups and attrs["offset_group"] == og
        assert (len(node.input) == 5 and node.input[4] != "") == modulated  # v2: the mask
    (out,) = run_ort(tmp_path / "m.onnx", [x])
    torch.testing.assert_close(out, model(x).detach(), rtol=1e-4, atol=1e-4)


class _Functional(nn.Module):
    """The op with offsets and mask as graph inputs and no bias, through the public function or
    the registered op itself (``torch.ops.torchdcn.deform_conv2d``, as scripted code calls it)."""

    def __init__(self, raw: bool):
        super().__init__()
        self.raw = raw
        self.weight = nn.Parameter(torch.randn(5, 3, 3, 3) / 5)

    def forward(self, x, offset, mask):
        if self.raw:
            return torch.ops.torchdcn.deform_conv2d(x, offset, mask, self.weight, None,
                                                    1, 1, 1, 1, 1, 1)  # fmt: skip
        return deform_conv2d(x, offset, self.weight, None, 1, 1, 1, mask)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("raw", [False, True], ids=["function", "registered_op"])
def test_functional_op_with_external_offsets_and_mask(tmp_path, dynamo, raw):
    """Also checks the exported values follow the offsets (a zero-offset export would not). The
    dynamo exporter needs the translation table only for the registered op called directly."""
    torch.manual_seed(1)
    net = _Functional(raw).eval()
    args = [torch.randn(1, 3, 7, 8), 2 * torch.randn(1, 18, 7, 8), torch.rand(1, 9, 7, 8)]
    proto = export(net, args, tmp_path / "f.onnx", dynamo, table=raw)
    assert op_types(proto).count("DeformConv") == 1
    for offset in (args[1], -args[1]):
        run_args = [args[0], offset, args[2]]
        (out,) = run_ort(tmp_path / "f.onnx", run_args)
        torch.testing.assert_close(out, net(*run_args).detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_dynamic_batch_and_image_size(tmp_path, dynamo):
    torch.manual_seed(2)
    model = randomise_predictors(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            ModulatedDeformConv2dPack(8, 8, 3, padding=1, offset_groups=2),
            nn.ReLU(),
            DeformConv2dPack(8, 4, 3, stride=2, padding=1),
        )
    )
    export(model, [torch.randn(2, 3, 12, 12)], tmp_path / "d.onnx", dynamo, {"in0": [0, 2, 3]})
    for shape in ((1, 3, 12, 12), (3, 3, 17, 9), (2, 3, 30, 24)):
        x = torch.randn(shape)
        (out,) = run_ort(tmp_path / "d.onnx", [x])
        torch.testing.assert_close(out, model(x).detach(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Whole networks


def _check_network(tmp_path, model, x, dynamo, n_deform, dynamic_x=None):
    randomise_predictors(model, std=0.01)
    proto = export(
        model, [x], tmp_path / "net.onnx", dynamo, {"in0": [0]} if dynamic_x is not None else None
    )
    assert op_types(proto).count("DeformConv") == n_deform
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    for inp in [x] + ([dynamic_x] if dynamic_x is not None else []):
        (out,) = run_ort(tmp_path / "net.onnx", [inp])
        ref = model(inp).detach()
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("deform", [pytest.param("v1", marks=pytest.mark.slow), "v2"])
def test_mnist_cnn(tmp_path, dynamo, deform):
    from torchdcn.models.classification.mnist_cnn import mnist_cnn

    torch.manual_seed(3)
    model = mnist_cnn(deform)
    x = torch.randn(2, 1, 28, 28)
    _check_network(tmp_path, model, x, dynamo, 3, dynamic_x=torch.randn(5, 1, 28, 28))


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_resnet18_v2_backbone(tmp_path, dynamo):
    from torchdcn.models import resnet18

    torch.manual_seed(4)
    model = resnet18(deform="v2")
    n = sum(isinstance(m, DeformConv2d) for m in model.modules())
    _check_network(tmp_path, model, torch.randn(1, 3, 64, 64), dynamo, n)


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_resnet50_v2_backbone(tmp_path, dynamo):
    from torchdcn.models import resnet50

    torch.manual_seed(5)
    model = resnet50(deform="v2")
    n = sum(isinstance(m, DeformConv2d) for m in model.modules())
    assert n > 0
    _check_network(tmp_path, model, torch.randn(1, 3, 128, 96), dynamo, n,
                   dynamic_x=torch.randn(2, 3, 128, 96))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# RoI family


class _RoIAlign(nn.Module):
    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned):
        super().__init__()
        self.args = (output_size, spatial_scale, sampling_ratio, aligned)

    def forward(self, x, boxes):
        return roi_align(x, boxes, *self.args)


def _boxes(gen, k, n, size):
    xy = torch.rand(k, 2, generator=gen) * size * 0.7
    wh = torch.rand(k, 2, generator=gen) * size * 0.5 + 0.2
    batch = torch.randint(0, n, (k, 1), generator=gen).float()
    return torch.cat([batch, xy, xy + wh], 1)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_roi_align_exports_to_roialign(tmp_path, dynamo, aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(6)
    model = _RoIAlign((3, 4), 0.5, sampling_ratio, aligned).eval()
    x = torch.randn(2, 3, 10, 12, generator=gen)
    boxes = _boxes(gen, 6, 2, 22.0)
    # RoIs reaching past the border and one smaller than a cell, at the export size already
    boxes[0, 1:] = torch.tensor([-3.0, -2.5, 5.0, 30.0])
    boxes[1, 1:] = torch.tensor([4.0, 4.0, 4.6, 4.3])
    proto = export(model, [x, boxes], tmp_path / "r.onnx", dynamo, {"in1": [0]}, table=True)
    assert op_types(proto).count("RoiAlign") == 1
    node = next(n for n in proto.graph.node if n.op_type == "RoiAlign")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    want_mode = b"half_pixel" if aligned else b"output_half_pixel"
    assert attrs["coordinate_transformation_mode"] == want_mode
    for k in (6, 11):  # the number of RoIs is dynamic
        b = _boxes(gen, k, 2, 22.0)
        b[:6] = boxes
        (out,) = run_ort(tmp_path / "r.onnx", [x, b])
        torch.testing.assert_close(out, model(x, b), rtol=1e-4, atol=1e-5)


class _RoIPool(nn.Module):
    def forward(self, x, boxes):
        return roi_pool(x, boxes, (3, 4), 0.5)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_roi_pool_max_exports_to_maxroipool(tmp_path, dynamo):
    """Same rounding of the corners (halves included), same bins, empty bins 0: exact."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 10, 12, generator=gen)
    boxes = _boxes(gen, 60, 2, 26.0)
    boxes[:10, 1:] = torch.round(boxes[:10, 1:]) + 1.0  # odd: corners at .5 cells after scaling
    boxes[10:15, 1:] -= 14.0  # partly or wholly off the map, negative halves
    boxes[15:20, 1:] = boxes[15:20, [3, 4, 1, 2]]  # inverted
    model = _RoIPool().eval()
    proto = export(model, [x, boxes[:4]], tmp_path / "p.onnx", dynamo, {"in1": [0]}, table=True)
    assert op_types(proto).count("MaxRoiPool") == 1
    (out,) = run_ort(tmp_path / "p.onnx", [x, boxes])
    torch.testing.assert_close(out, model(x, boxes), rtol=0, atol=0)


class _Call(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, rois):
        return self.fn(x, rois)


UNSUPPORTED = {
    "roi_pool_avg": (
        lambda x, r: roi_pool(x, r, 2, mode="avg"),
        "torchdcn.ops.roi_pool (mode='avg')",
    ),
    "ps_roi_pool": (lambda x, r: ps_roi_pool(x, r, 2), "torchdcn.ops.ps_roi_pool"),
    "ps_roi_align": (lambda x, r: ps_roi_align(x, r, 2), "torchdcn.ops.ps_roi_align"),
    "deform_roi_pool": (
        lambda x, r: deform_roi_pool(x, r, torch.zeros(r.shape[0], 2, 2, 2), 2),
        "torchdcn.ops.deform_roi_pool",
    ),
    "deform_ps_roi_pool": (
        lambda x, r: deform_ps_roi_pool(x, r, torch.zeros(r.shape[0], 2, 2, 2), 2),
        "torchdcn.ops.deform_ps_roi_pool",
    ),
}


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize(
    "name",  # one op of each kind in the default suite (dynamo exports take about 1 s each)
    [n if n in ("roi_pool_avg", "deform_roi_pool") else pytest.param(n, marks=pytest.mark.slow)
     for n in UNSUPPORTED],
)  # fmt: skip
def test_other_roi_ops_fail_naming_the_op(tmp_path, dynamo, name):
    fn, public_name = UNSUPPORTED[name]
    x = torch.randn(1, 8, 8, 8)
    rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0]])
    fn(x, rois)  # runs eagerly
    with pytest.raises(Exception) as info:
        export(_Call(fn).eval(), [x, rois], tmp_path / "u.onnx", dynamo, table=True)
    chain = exception_chain(info.value)  # the exporters wrap the error; ours is in the chain
    ours = [e for e in chain if isinstance(e, OnnxExportUnsupported)]
    assert ours, f"no OnnxExportUnsupported in {chain!r}"
    assert public_name in str(ours[0]) and "no standard ONNX operator" in str(ours[0])


# ---------------------------------------------------------------------------------------------
# Registration


def test_translation_table_names_missing_onnxscript(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now fails
    monkeypatch.delitem(sys.modules, "torchdcn.ops._onnx_dynamo", raising=False)
    monkeypatch.delattr(torchdcn.ops, "_onnx_dynamo", raising=False)
    with pytest.raises(ImportError, match=r"needs onnxscript.*torchdcn\[onnx\]"):
        onnx_translation_table()
