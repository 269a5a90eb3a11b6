"""Box geometry ops against plain Python loops: area, pairwise IoU, clipping, small-box removal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchdcn.ops import box_area, box_iou, clip_boxes_to_image, remove_small_boxes


def _random_boxes(n: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 40
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[: n // 5, 2] = boxes[: n // 5, 0]  # zero width
    boxes[n // 5 : n // 4, 2] = boxes[n // 5 : n // 4, 0] - 3  # x2 < x1
    boxes[-3:] = boxes[:3]  # duplicates
    return boxes.to(dtype)


def _loop_iou(b1: torch.Tensor, b2: torch.Tensor) -> np.ndarray:
    """IoU of every pair, one pair at a time in numpy scalars of the boxes' dtype."""
    a1, a2 = b1.numpy(), b2.numpy()
    out = np.zeros((len(a1), len(a2)), a1.dtype)
    zero = a1.dtype.type(0)
    with np.errstate(all="ignore"):
        for i, p in enumerate(a1):
            for j, q in enumerate(a2):
                w = max(np.minimum(p[2], q[2]) - np.maximum(p[0], q[0]), zero)
                h = max(np.minimum(p[3], q[3]) - np.maximum(p[1], q[1]), zero)
                inter = w * h
                union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
                out[i, j] = inter / union
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_matches_loop(dtype):
    b1, b2 = _random_boxes(23, dtype, seed=1), _random_boxes(17, dtype, seed=2)
    got = box_iou(b1, b2)
    assert got.shape == (23, 17) and got.dtype == dtype
    np.testing.assert_array_equal(got.numpy(), _loop_iou(b1, b2))  # same operations, same bits


def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 2.0, 2.0]])
    got = box_iou(a, b)
    torch.testing.assert_close(got[0], torch.tensor([1 / 3, 0.0, 1.0]))
    assert got[1, :2].tolist() == [0.0, 0.0]  # zero area vs proper box: 0 / area
    assert box_iou(a, a)[1, 1].isnan()  # two zero-area boxes: 0 / 0


def test_box_iou_empty_and_integer():
    assert box_iou(torch.zeros(0, 4), torch.zeros(5, 4)).shape == (0, 5)
    ints = torch.tensor([[0, 0, 4, 4], [2, 0, 6, 4]], dtype=torch.int16)
    got = box_iou(ints, ints)
    torch.testing.assert_close(got, torch.tensor([[1.0, 1 / 3], [1 / 3, 1.0]]))


def test_box_iou_half_computes_in_float32():
    b = _random_boxes(9, torch.float16)
    got = box_iou(b, b)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, box_iou(b.float(), b.float()), equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_box_area(dtype):
    b = _random_boxes(20).to(dtype)
    expected = [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in b.tolist()]
    got = box_area(b)
    assert got.dtype == dtype
    torch.testing.assert_close(got, torch.tensor(expected, dtype=dtype))
    assert box_area(torch.tensor([[0, 0, 3, 2]], dtype=torch.uint8)).dtype == torch.int32


def test_clip_boxes_to_image():
    boxes = torch.tensor([[-5.0, 2.0, 30.0, 12.0], [3.0, -1.0, 4.0, 5.0]])
    got = clip_boxes_to_image(boxes, (10, 20))  # height 10, width 20
    assert got.tolist() == [[0.0, 2.0, 20.0, 10.0], [3.0, 0.0, 4.0, 5.0]]
    batched = torch.randn(2, 3, 4, dtype=torch.float64) * 30
    got = clip_boxes_to_image(batched, (7, 11))
    expected = batched.clone()
    expected[..., 0::2] = expected[..., 0::2].clamp(0, 11)
    expected[..., 1::2] = expected[..., 1::2].clamp(0, 7)
    assert got.shape == batched.shape and torch.equal(got, expected)
    assert batched.abs().max() > 11  # the clamp did something


def test_remove_small_boxes():
    b = _random_boxes(40)
    b[5, 3] = float("nan")
    for min_size in (0.0, 5.0, 20.0):
        expected = [
            i
            for i, (x1, y1, x2, y2) in enumerate(b.tolist())
            if x2 - x1 >= min_size and y2 - y1 >= min_size
        ]
        got = remove_small_boxes(b, min_size)
        assert got.dtype == torch.int64 and got.tolist() == expected
    assert 5 not in remove_small_boxes(b, 0.0).tolist()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_matches_eager():
    boxes = _random_boxes(30)
    others = _random_boxes(7, seed=1)
    cases = [
        (box_area, (boxes,)),
        (box_area, (boxes.half(),)),
        (box_iou, (boxes, others)),
        (clip_boxes_to_image, (boxes, (50, 70))),
        (remove_small_boxes, (boxes, 4.0)),
    ]
    for fn, args in cases:
        got = torch.jit.script(fn)(*args)
        expected = fn(*args)
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    # and the eager results are the loops' (so the scripted ones are too)
    np.testing.assert_array_equal(box_iou(boxes, others).numpy(), _loop_iou(boxes, others))
    assert remove_small_boxes(boxes, 4.0).tolist() == [
        i for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()) if x2 - x1 >= 4 and y2 - y1 >= 4
    ]


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: box_area(torch.zeros(3, 5)), ValueError, ["boxes", "[..., 4]", "(3, 5)"]),
        (lambda: box_area(torch.zeros(())), ValueError, ["boxes", "()"]),
        (lambda: box_area(torch.zeros(2, 4), "xyxyr"), ValueError, ["fmt", "xyxyr", "rotated"]),
        (lambda: box_iou(torch.zeros(4), torch.zeros(2, 4)), ValueError, ["boxes1", "[..., N, 4]"]),
        (
            lambda: box_iou(torch.zeros(2, 3, 4), torch.zeros(3, 1, 4)),
            ValueError,
            ["leading dimensions", "(2, 3, 4)", "(3, 1, 4)"],
        ),
        (lambda: box_iou(torch.zeros(2, 4), torch.zeros(2, 4), "xy"), ValueError, ["fmt"]),
        (lambda: box_area([[0, 0, 1, 1]]), TypeError, ["boxes", "list"]),
        (lambda: box_area(torch.zeros(2, 4, dtype=torch.bool)), TypeError, ["boxes", "bool"]),
        (lambda: box_iou(torch.zeros(2, 4), torch.zeros(2, 3)), ValueError, ["boxes2", "(2, 3)"]),
        (lambda: clip_boxes_to_image(torch.zeros(2, 3), (4, 4)), ValueError, ["[..., 4]"]),
        (lambda: clip_boxes_to_image(torch.zeros(2, 4), 4), TypeError, ["size", "(height"]),
        (lambda: clip_boxes_to_image(torch.zeros(2, 4), (4, -1)), ValueError, ["size", "-1"]),
        (lambda: remove_small_boxes(torch.zeros(2, 4), "1"), TypeError, ["min_size", "str"]),
        (lambda: remove_small_boxes(torch.zeros(2, 4), True), TypeError, ["min_size", "bool"]),
        (
            lambda: remove_small_boxes(torch.zeros(2, 4), torch.ones(2)),
            TypeError,
            ["min_size", "0-d"],
        ),
        (
            lambda: clip_boxes_to_image(torch.zeros(2, 4), torch.tensor([True, True])),
            TypeError,
            ["size", "(height"],
        ),
        (lambda: clip_boxes_to_image(torch.zeros(2, 4), torch.ones(2, 2)), TypeError, ["size"]),
        (lambda: clip_boxes_to_image(torch.zeros(2, 4), [10, 20, 3]), TypeError, ["size"]),
        (lambda: clip_boxes_to_image(torch.zeros(2, 4), [10]), TypeError, ["size"]),
        (
            lambda: clip_boxes_to_image(torch.zeros(2, 4), torch.tensor([3, 10, 20])),
            TypeError,
            ["size", "(height"],
        ),
    ],
)
def test_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


def _to_format(boxes, fmt):
    """xyxy -> ``fmt`` (exact for these small binary fractions)."""
    lo, hi = boxes[..., :2], boxes[..., 2:]
    if fmt == "xywh":
        return torch.cat([lo, hi - lo], -1)
    if fmt == "cxcywh":
        return torch.cat([(lo + hi) / 2, hi - lo], -1)
    return boxes


@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_batched_boxes_and_formats_match_the_2d_xyxy_result(fmt):
    # a batch of box sets [B, N, 4] against [B, M, 4] and a broadcast [1, M, 4]: each slice is
    # the 2-d call; other formats give the xyxy IoUs and areas (torchvision's fmt argument)
    a = torch.stack([_random_boxes(6, seed=s) for s in range(3)]).round()
    b = torch.stack([_random_boxes(7, seed=10 + s) for s in range(3)]).round()
    fa, fb = _to_format(a, fmt), _to_format(b, fmt)
    iou = box_iou(fa, fb, fmt)
    assert iou.shape == (3, 6, 7)
    for i in range(3):
        torch.testing.assert_close(iou[i], box_iou(a[i], b[i]), rtol=0, atol=0, equal_nan=True)
    shared = box_iou(fa, fb[:1], fmt)
    for i in range(3):
        torch.testing.assert_close(shared[i], box_iou(a[i], b[0]), rtol=0, atol=0, equal_nan=True)
    area = box_area(fa, fmt)
    assert area.shape == (3, 6)
    torch.testing.assert_close(area, box_area(a.reshape(-1, 4)).reshape(3, 6), rtol=0, atol=0)
    assert box_area(fa[0, 0], fmt).shape == ()  # a single box [4]
    scripted = torch.jit.script(box_iou)(fa, fb, fmt)
    torch.testing.assert_close(scripted, iou, rtol=0, atol=0, equal_nan=True)


def test_scalar_arguments_of_numpy_and_0d_tensors():
    boxes = _random_boxes(20)
    expected = clip_boxes_to_image(boxes, (50, 70))
    for size in [torch.tensor([50, 70]), (torch.tensor(50), np.int64(70)), [50.0, 70.0]]:
        torch.testing.assert_close(clip_boxes_to_image(boxes, size), expected, rtol=0, atol=0)
    expected = remove_small_boxes(boxes, 4.0)
    for min_size in [torch.tensor(4.0), np.float32(4.0), 4]:
        assert torch.equal(remove_small_boxes(boxes, min_size), expected)


@pytest.mark.parametrize(
    "bad",
    [True, 1 + 2j, "4", torch.tensor([4.0]), torch.tensor(4.0, requires_grad=True), math.nan,
     -math.inf],
    ids=["bool", "complex", "str", "1-d", "grad", "nan", "-inf"],
)  # fmt: skip
def test_size_and_min_size_refused_as_every_scalar_argument(bad):
    """_checks.real_scalar's rule: TypeError for the kind, ValueError for NaN and infinities."""
    boxes = _random_boxes(10)
    error = ValueError if isinstance(bad, float) else TypeError
    with pytest.raises(error, match=r"^min_size must (be|not require grad)"):
        remove_small_boxes(boxes, bad)
    if error is ValueError:
        match = r"^size\[1\] must be finite"
    else:
        match = r"^size must be a pair \(height, width\), got .*; size\[1\] must (be|not)"
    with pytest.raises(error, match=match):
        clip_boxes_to_image(boxes, (50, bad))
