"""ONNX export of ``nms`` and ``batched_nms`` (op ``torchdcn::nms``) as ONNX
``NonMaxSuppression``: with the TorchScript exporter as is, with the dynamo exporter given
``onnx_translation_table()``; onnxruntime keeps the same boxes in the same order as eager
(sorted by score, ties by index), for any number of boxes, zero included."""

from __future__ import annotations

import pytest
import torch
from onnx_helpers import EXPORTERS, IGNORE_EXPORTER_WARNINGS, exception_chain, export, run_ort
from torch import nn

from torchdcn.ops import OnnxExportUnsupported, batched_nms, nms

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = IGNORE_EXPORTER_WARNINGS


class _NMS(nn.Module):
    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold

    def forward(self, boxes, scores):
        return nms(boxes, scores, self.threshold)


class _BatchedNMS(nn.Module):
    def forward(self, boxes, scores, idxs):
        return batched_nms(boxes, scores, idxs, 0.5)


def _boxes(gen, n):
    """Overlapping boxes (IoUs on both sides of 0.5), scores with ties (one decimal)."""
    xy = torch.rand(n, 2, generator=gen) * 40
    wh = torch.rand(n, 2, generator=gen) * 25 + 1
    scores = torch.rand(n, generator=gen).round(decimals=1)
    return torch.cat([xy, xy + wh], 1), scores


def _cases(gen, batched):
    """(boxes, scores[, idxs]) of several lengths, zero and one box included; the first also
    has two boxes with IoU exactly 0.5 (kept: suppression needs IoU > threshold) and ties."""
    cases = []
    for n in (30, 0, 1, 200):
        boxes, scores = _boxes(gen, n)
        if n == 30:
            boxes[:2] = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
            scores[:3] = torch.tensor([0.9, 0.8, 0.8])
        # categories: negative and far apart ids too (numbered by Unique in the graph)
        idxs = torch.tensor([-3, 0, 1, 1000])[torch.randint(0, 4, (n,), generator=gen)]
        cases.append((boxes, scores, idxs) if batched else (boxes, scores))
    return cases


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("batched", [False, True], ids=["nms", "batched_nms"])
def test_nms_exports_to_nonmaxsuppression(tmp_path, dynamo, batched):
    gen = torch.Generator().manual_seed(0)
    model = (_BatchedNMS() if batched else _NMS()).eval()
    cases = _cases(gen, batched)
    dynamic = {f"in{i}": [0] for i in range(len(cases[0]))}  # the number of boxes
    proto = export(model, cases[0], tmp_path / "n.onnx", dynamo, dynamic, table=True)
    assert [n.op_type for n in proto.graph.node].count("NonMaxSuppression") == 1
    for args in cases:
        (out,) = run_ort(tmp_path / "n.onnx", args)
        want = model(*args)
        assert out.dtype == torch.int64 and out.tolist() == want.tolist()
    assert len(model(*cases[0])) < 30  # some boxes suppressed


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("threshold", [0.0, 1.5, float("inf")])
def test_thresholds_at_the_ends(tmp_path, dynamo, threshold):
    """ONNX NonMaxSuppression takes thresholds in [0, 1] (onnxruntime fails on others at run
    time): 0 suppresses any overlap, above 1 nothing, and export maps those to 1."""
    gen = torch.Generator().manual_seed(2)
    model = _NMS(threshold).eval()
    args = list(_boxes(gen, 20))
    export(model, args, tmp_path / "n.onnx", dynamo, table=True)
    (out,) = run_ort(tmp_path / "n.onnx", args)
    assert out.tolist() == model(*args).tolist()


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_negative_threshold_is_refused(tmp_path, dynamo):
    """torchdcn suppresses non-overlapping boxes below threshold 0 (IoU 0 > threshold); ONNX
    NonMaxSuppression takes no such threshold: no export rather than a model that fails."""
    boxes, scores = _boxes(torch.Generator().manual_seed(1), 5)
    with pytest.raises(Exception) as info:
        export(_NMS(-0.1).eval(), [boxes, scores], tmp_path / "n.onnx", dynamo, table=True)
    ours = [e for e in exception_chain(info.value) if isinstance(e, OnnxExportUnsupported)]
    assert ours and "iou_threshold >= 0, got -0.1" in str(ours[0])
