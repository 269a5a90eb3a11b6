"""torch.compile(fullgraph=True) over float arguments that change between calls, and dynamic=True.

A float argument that differs from the first call's becomes symbolic on recompilation (and is
symbolic from the start with ``dynamic=True``); the argument checks must then trace without
reading its value. Each compiled result is compared with the eager one (aot_eager backend: it
traces like inductor, without compiling C++).
"""

from __future__ import annotations

import pytest
import torch

import torchdcn.ops as D


def _roi_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8, 10, 10, generator=g)
    boxes = torch.tensor([[0, 1.0, 1.0, 30.0, 28.0], [1, 4.0, 2.0, 20.0, 36.0]])
    offset = 0.1 * torch.randn(2, 2, 2, 2, generator=g)
    return x, boxes, offset


def _nms_inputs(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 20
    wh = 2 + torch.rand(n, 2, generator=g) * 10
    scores = torch.rand(n, generator=g)
    idxs = torch.randint(0, 3, (n,), generator=g)
    return torch.cat([xy, xy + wh], 1), scores, idxs


ROI_OPS = {
    "roi_align": lambda x, b, o, s: D.roi_align(x, b, 2, spatial_scale=s, sampling_ratio=2),
    "roi_pool": lambda x, b, o, s: D.roi_pool(x, b, 2, spatial_scale=s),
    "ps_roi_align": lambda x, b, o, s: D.ps_roi_align(x, b, 2, spatial_scale=s, sampling_ratio=2),
    "deform_roi_pool": lambda x, b, o, s: D.deform_roi_pool(
        x, b, o, 2, spatial_scale=s, sampling_ratio=2, gamma=0.1 + s
    ),
}


@pytest.mark.parametrize("dynamic", [None, True])
@pytest.mark.parametrize("name", sorted(ROI_OPS))
def test_roi_ops_compile_with_varying_scale(name, dynamic):
    torch._dynamo.reset()
    fn = ROI_OPS[name]
    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    x, boxes, offset = _roi_inputs()
    for scale in (0.25, 0.125, 0.5):
        torch.testing.assert_close(compiled(x, boxes, offset, scale), fn(x, boxes, offset, scale))


@pytest.mark.parametrize("dynamic", [None, True])
def test_nms_compile_with_varying_threshold(dynamic):
    torch._dynamo.reset()
    boxes, scores, idxs = _nms_inputs()
    c_nms = torch.compile(D.nms, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    c_batched = torch.compile(D.batched_nms, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    for t in (0.5, 0.3, 0.1):
        assert torch.equal(c_nms(boxes, scores, t), D.nms(boxes, scores, t))
        assert torch.equal(c_batched(boxes, scores, idxs, t), D.batched_nms(boxes, scores, idxs, t))
    # results differ with the threshold, so the symbolic threshold really reaches the kernel
    assert len(c_nms(boxes, scores, 0.1)) < len(c_nms(boxes, scores, 0.5))


def test_eager_still_checks_float_arguments():
    x, boxes, offset = _roi_inputs()
    b, s, _ = _nms_inputs()
    with pytest.raises(ValueError, match="spatial_scale must be finite, got nan"):
        D.roi_align(x, boxes, 2, spatial_scale=float("nan"))
    with pytest.raises(ValueError, match="gamma must be finite, got inf"):
        D.deform_roi_pool(x, boxes, offset, 2, gamma=float("inf"))
    with pytest.raises(ValueError, match="iou_threshold must be a number, got nan"):
        D.nms(b, s, float("nan"))
    with pytest.raises(TypeError, match="iou_threshold must be a float"):
        D.nms(b, s, "0.5")
