"""torchdcn's box ops and NMS against torchvision itself (``make parity``): the same kept indices
in the same order for ``nms`` / ``batched_nms`` on every route, and the same values for
``box_area``, ``box_iou``, ``clip_boxes_to_image`` and ``remove_small_boxes``, degenerate boxes
included."""

from __future__ import annotations

import pytest
import torch
import torchvision.ops as tv

import torchdcn.ops as ours
from torchdcn.ops import use_backend

#: NMS routes: the Numba kernel, the readable reference, and (``triton`` on CPU tensors) the
#: blocked torch route
ROUTES = ["numba", "reference", "triton"]
DTYPES = [torch.float32, torch.float64]


def _boxes(n: int, seed: int, dtype: torch.dtype, degenerate: bool = True) -> torch.Tensor:
    """Clustered boxes (many overlaps), some of them degenerate: zero width, inverted, a point,
    a duplicate."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(1, n // 6), 2, generator=gen, dtype=torch.float64) * 200
    pick = torch.randint(len(centres), (n,), generator=gen)
    xy = centres[pick] + torch.randn(n, 2, generator=gen, dtype=torch.float64) * 5
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 60 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    if degenerate and n >= 8:
        boxes[0, 2] = boxes[0, 0]
        boxes[1, 3] = boxes[1, 1] - 2
        boxes[2] = boxes[3]
        boxes[4, 2:] = boxes[4, :2]
    return boxes.to(dtype)


def _scores(n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Distinct scores (ties are compared in their own test)."""
    gen = torch.Generator().manual_seed(seed + 1000)
    return torch.randperm(n, generator=gen).to(dtype) / n


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 37, 500])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 1.0])
def test_nms(route, dtype, n, threshold):
    boxes, scores = _boxes(n, n, dtype), _scores(n, n, dtype)
    with use_backend(route):
        got = ours.nms(boxes, scores, threshold)
    assert torch.equal(got, tv.nms(boxes, scores, threshold))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 37, 500])
def test_batched_nms(route, dtype, n):
    boxes, scores = _boxes(n, n + 1, dtype), _scores(n, n + 1, dtype)
    idxs = torch.randint(5, (n,), generator=torch.Generator().manual_seed(n))
    with use_backend(route):
        got = ours.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(got, tv.batched_nms(boxes, scores, idxs, 0.5))


@pytest.mark.parametrize("route", ROUTES)
def test_nms_tied_scores(route):
    """Equal scores: torchdcn keeps the earlier index first (a stable sort); whatever torchvision
    does with ties on CPU, the kept sets and order must agree for this to pass."""
    boxes = _boxes(60, 7, torch.float32, degenerate=False)
    scores = (torch.arange(60) % 4).float() / 4
    with use_backend(route):
        got = ours.nms(boxes, scores, 0.5)
    assert torch.equal(got, tv.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_area_and_iou(dtype):
    a, b = _boxes(40, 3, dtype), _boxes(25, 4, dtype)
    torch.testing.assert_close(ours.box_area(a), tv.box_area(a), rtol=0, atol=0)
    torch.testing.assert_close(ours.box_iou(a, b), tv.box_iou(a, b), equal_nan=True)
    empty = a[:0]
    assert ours.box_iou(empty, b).shape == tv.box_iou(empty, b).shape == (0, 25)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_area_and_iou_batched_and_formats(dtype, fmt):
    # torchvision 0.29's [..., N, 4] boxes and fmt argument; the leading dimensions broadcast
    a = torch.stack([_boxes(30, s, dtype) for s in range(3)])
    b = torch.stack([_boxes(20, 10 + s, dtype) for s in range(3)])
    torch.testing.assert_close(ours.box_area(a, fmt), tv.box_area(a, fmt), rtol=0, atol=0)
    for other in (b, b[:1]):
        torch.testing.assert_close(
            ours.box_iou(a, other, fmt), tv.box_iou(a, other, fmt), rtol=0, atol=0, equal_nan=True
        )


def test_tensor_and_numpy_scalar_arguments():
    np = pytest.importorskip("numpy")
    boxes = _boxes(50, 5, torch.float32) - 40
    size = torch.tensor([100, 150])
    torch.testing.assert_close(
        ours.clip_boxes_to_image(boxes, size), tv.clip_boxes_to_image(boxes, size), rtol=0, atol=0
    )
    for min_size in (torch.tensor(5.0), np.float32(5.0)):
        assert torch.equal(
            ours.remove_small_boxes(boxes, min_size), tv.remove_small_boxes(boxes, min_size)
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [(100, 150), (1, 1), (240, 60)])
def test_clip_boxes_to_image(dtype, size):
    boxes = _boxes(50, 5, dtype) - 40
    torch.testing.assert_close(
        ours.clip_boxes_to_image(boxes, size), tv.clip_boxes_to_image(boxes, size), rtol=0, atol=0
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("min_size", [0.0, 1e-3, 5.0, 30.0])
def test_remove_small_boxes(dtype, min_size):
    boxes = _boxes(80, 6, dtype)
    assert torch.equal(
        ours.remove_small_boxes(boxes, min_size), tv.remove_small_boxes(boxes, min_size)
    )
