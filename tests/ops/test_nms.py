"""NMS and batched NMS: every backend against a slow Python loop, the registered op under
torch.compile, and the argument checks."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import torch

from torchdcn.ops import (
    _nms_cpu,
    _nms_ref,
    _nms_torch,
    batched_nms,
    nms,
    set_workspace_limit,
    use_backend,
)
from torchdcn.ops._nms_ref import nms_reference

KERNELS = ["reference", "numba", "triton"]  # "triton" on CPU tensors forces the blocked torch route
THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 1.0]


def loop_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float, idxs=None) -> list[int]:
    """Greedy NMS written out: visit by decreasing score (stable; NaN first, as torch.sort), keep
    a box unless a kept box of its category has IoU > thr. IoUs in numpy scalars of the boxes'
    dtype, compared with thr as a Python (double) number."""
    b = boxes.numpy()
    s = scores.tolist()
    cat = [0] * len(b) if idxs is None else idxs.tolist()
    order = sorted(range(len(b)), key=lambda i: (0, 0.0) if math.isnan(s[i]) else (1, -s[i]))
    zero = b.dtype.type(0)
    kept: list[int] = []
    with np.errstate(all="ignore"):
        for j in order:
            q = b[j]
            suppressed = False
            for i in kept:
                p = b[i]
                if cat[i] != cat[j]:
                    continue
                w = max(np.minimum(p[2], q[2]) - np.maximum(p[0], q[0]), zero)
                h = max(np.minimum(p[3], q[3]) - np.maximum(p[1], q[1]), zero)
                inter = w * h
                union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
                if float(inter / union) > thr:
                    suppressed = True
                    break
            if not suppressed:
                kept.append(j)
    return kept


def make_boxes(n: int, dtype=torch.float32, seed: int = 0, *, degenerate: bool = True):
    """Clustered boxes (jittered copies of n // 8 + 1 centres), exact duplicates, zero-area and
    flipped boxes, and scores with many ties."""
    gen = torch.Generator().manual_seed(seed)
    centres = n // 8 + 1
    c = torch.rand(centres, 2, generator=gen, dtype=torch.float64) * 200
    size = torch.rand(centres, 2, generator=gen, dtype=torch.float64) * 60 + 5
    pick = torch.randint(centres, (n,), generator=gen)
    xy = c[pick] + torch.randn(n, 2, generator=gen, dtype=torch.float64) * 4
    wh = size[pick] * (1 + 0.2 * torch.randn(n, 2, generator=gen, dtype=torch.float64)).abs()
    boxes = torch.cat([xy, xy + wh], 1)
    if degenerate and n >= 10:
        boxes[0, 2] = boxes[0, 0]  # zero width
        boxes[1, 3] = boxes[1, 1] - 2  # y2 < y1
        boxes[2] = boxes[3]  # duplicate
        boxes[4, :] = boxes[4, 0]  # a point
    scores = torch.randint(0, max(2, n // 3), (n,), generator=gen).to(torch.float64) / n
    return boxes.to(dtype), scores.to(dtype)


def run(kernel: str, fn, *args):
    with use_backend(kernel):
        return fn(*args)


# ---------------------------------------------------------------------------------------------
# nms


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_matches_loop(kernel, dtype):
    for seed, n in ((0, 60), (1, 150), (2, 9)):
        boxes, scores = make_boxes(n, dtype, seed)
        for thr in THRESHOLDS:
            got = run(kernel, nms, boxes, scores, thr)
            assert got.dtype == torch.int64
            assert got.tolist() == loop_nms(boxes, scores, thr), (seed, thr)


@pytest.mark.parametrize("kernel", KERNELS)
def test_nms_all_ties_keeps_earlier_index(kernel):
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10]])
    scores = torch.full((4,), 0.5)
    assert run(kernel, nms, boxes, scores, 0.5).tolist() == [0, 2]
    scores = torch.tensor([0.5, 0.9, 0.5, 0.9])
    assert run(kernel, nms, boxes, scores, 0.5).tolist() == [1, 2]


@pytest.mark.parametrize("kernel", KERNELS)
def test_nms_iou_exactly_at_threshold(kernel):
    # IoU 2 / 4 = 0.5 exactly: kept at 0.5 (suppression needs IoU > threshold), dropped below
    boxes = torch.tensor([[0.0, 0, 3, 1], [1, 0, 4, 1]])
    scores = torch.tensor([0.9, 0.8])
    assert run(kernel, nms, boxes, scores, 0.5).tolist() == [0, 1]
    assert run(kernel, nms, boxes, scores, 0.4999).tolist() == [0]
    # IoU 1 / 3: float32 rounds it up to 0.33333334 > 1/3, float64 holds 1/3 exactly. Comparing
    # with the threshold rounded to float32 (0.33333334) would keep the float32 box.
    boxes = torch.tensor([[0.0, 0, 2, 1], [1, 0, 3, 1]], dtype=torch.float64)
    assert run(kernel, nms, boxes, scores.double(), 1 / 3).tolist() == [0, 1]
    assert run(kernel, nms, boxes.float(), scores, 1 / 3).tolist() == [0]


@pytest.mark.parametrize("kernel", KERNELS)
def test_nms_empty_and_single(kernel):
    got = run(kernel, nms, torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert got.shape == (0,) and got.dtype == torch.int64
    assert run(kernel, nms, torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.1]), 0.5).tolist() == [
        0
    ]


@pytest.mark.parametrize("kernel", KERNELS)
def test_nms_nan_inf_and_negative_threshold(kernel):
    boxes, scores = make_boxes(40, seed=3)
    boxes[5, 1] = float("nan")
    boxes[6] = boxes[7]
    boxes[6, 2] = float("inf")
    boxes[8, 0] = -float("inf")
    scores[9] = float("nan")
    scores[10] = float("nan")
    for thr in (-0.5, 0.0, 0.5):
        got = run(kernel, nms, boxes, scores, thr)
        assert got.tolist() == loop_nms(boxes, scores, thr), thr
    kept = run(kernel, nms, boxes, scores, 0.5).tolist()
    assert kept[:2] == [9, 10]  # NaN scores first, in index order
    assert 5 in kept  # a NaN coordinate is never suppressed


@pytest.mark.parametrize("kernel", KERNELS)
def test_nms_huge_coordinates(kernel):
    boxes, scores = make_boxes(30, torch.float64, seed=12)
    boxes[:10] *= 1e306  # some become infinite (area inf: never over the threshold)
    # two proper boxes at both ends of the float64 range: the grid's extent overflows
    boxes[10] = torch.tensor([-1e308, 0, -0.9e308, 1], dtype=torch.float64)
    boxes[11] = torch.tensor([0.9e308, 0, 1e308, 1], dtype=torch.float64)
    got = run(kernel, nms, boxes, scores, 0.5)
    assert got.tolist() == loop_nms(boxes, scores, 0.5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_nms_suppression_chain(kernel):
    # each box overlaps the next with IoU 0.6: greedy keeps every other one
    n = 41
    x = torch.arange(n, dtype=torch.float32) * 2.5
    boxes = torch.stack([x, torch.zeros(n), x + 10, torch.ones(n)], 1)
    scores = torch.linspace(1, 0, n)
    assert run(kernel, nms, boxes, scores, 0.5).tolist() == list(range(0, n, 2))


@pytest.mark.parametrize("kernel", ["numba", "triton"])
def test_nms_large_clustered_matches_reference(kernel, monkeypatch):
    # many cells, and a few huge boxes that cover too many cells for the grid ("loose" boxes)
    boxes, scores = make_boxes(1500, seed=4)
    boxes[:20, 2:] += 150
    if kernel == "triton":  # several blocks and kept-box chunks in the blocked torch route
        from torchdcn.ops import _nms_torch

        monkeypatch.setattr(_nms_torch, "BLOCK", 64)
        set_workspace_limit(64 * 64 * 24)
    for thr in (0.3, 0.7):
        expected = nms_reference(boxes, scores, None, thr)
        torch.testing.assert_close(run(kernel, nms, boxes, scores, thr), expected)


@pytest.mark.parametrize("kernel", KERNELS)
def test_nms_half_is_compared_in_float32(kernel):
    boxes, scores = make_boxes(50, torch.float16, seed=5)
    expected = loop_nms(boxes.float(), scores.float(), 0.5)
    assert run(kernel, nms, boxes, scores, 0.5).tolist() == expected


def test_nms_routes():
    from torchdcn.ops.nms import route

    cpu = torch.device("cpu")
    assert route(cpu, torch.float32) == "numba"
    with use_backend("reference"):
        assert route(cpu, torch.float64) == "reference"
    with use_backend("triton"):
        assert route(cpu, torch.float32) == "torch"
    assert route(torch.device("cuda"), torch.float64) == "torch"


# ---------------------------------------------------------------------------------------------
# batched_nms


def per_class_loop(boxes, scores, idxs, thr) -> list[int]:
    kept = []
    for c in idxs.unique().tolist():
        members = (idxs == c).nonzero()[:, 0]
        kept += [members[k].item() for k in loop_nms(boxes[members], scores[members], thr)]
    s = scores.tolist()
    return sorted(kept, key=lambda i: (-s[i], i))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_nms_matches_per_class_loop(kernel, dtype):
    for seed, n, classes in ((0, 80, 3), (1, 120, 7)):
        boxes, scores = make_boxes(n, dtype, seed)
        idxs = torch.randint(classes, (n,), generator=torch.Generator().manual_seed(seed))
        for thr in (0.3, 0.5):
            got = run(kernel, batched_nms, boxes, scores, idxs, thr)
            assert got.tolist() == per_class_loop(boxes, scores, idxs, thr), (seed, thr)
        assert run(kernel, nms, boxes, scores, 0.5).numel() < got.numel()  # categories matter


@pytest.mark.parametrize("kernel", ["numba", "triton"])
def test_batched_nms_large_coordinates_exact(kernel):
    # the coordinate-offset trick would shift class 90 by ~1e6 and round float32 coordinates to
    # 1/16 pixel; suppression per category must stay exactly the per-class result
    boxes, scores = make_boxes(200, seed=6)
    boxes = boxes + 5000.0
    idxs = torch.arange(200) % 91
    got = run(kernel, batched_nms, boxes, scores, idxs, 0.5)
    assert got.tolist() == per_class_loop(boxes, scores, idxs, 0.5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_batched_nms_many_categories(kernel):
    # categories are processed one by one after a stable sort by (category, score): negative,
    # huge and single-box categories, categories not in sorted order of first appearance
    boxes, scores = make_boxes(300, seed=12)
    gen = torch.Generator().manual_seed(12)
    idxs = torch.tensor([-5, 2**40, 7, 0, -1])[torch.randint(5, (300,), generator=gen)]
    idxs[::37] = torch.arange(1000, 1000 + len(idxs[::37]))  # one box alone in its category
    for thr in (0.0, 0.5):
        got = run(kernel, batched_nms, boxes, scores, idxs, thr)
        assert got.tolist() == per_class_loop(boxes, scores, idxs, thr), thr


def test_batched_nms_empty():
    got = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert got.shape == (0,) and got.dtype == torch.int64


# ---------------------------------------------------------------------------------------------
# The registered op and torch.compile


def test_compile_fullgraph():
    boxes, scores = make_boxes(60, seed=7)
    idxs = torch.arange(60) % 3

    def detect(boxes, scores, idxs):
        keep = batched_nms(boxes, scores, idxs, 0.5)
        return boxes[keep], nms(boxes, scores, 0.3)

    compiled = torch.compile(detect, fullgraph=True, backend="aot_eager")
    got_boxes, got_keep = compiled(boxes, scores, idxs)
    expected_boxes, expected_keep = detect(boxes, scores, idxs)
    assert torch.equal(got_boxes, expected_boxes) and torch.equal(got_keep, expected_keep)
    assert len(expected_keep) < 60


def test_inputs_that_require_grad():
    # boxes from a regression head: the indices do not depend on them differentiably
    boxes, scores = make_boxes(40, seed=11)
    leaf = boxes.clone().requires_grad_()
    keep = nms(leaf, scores.requires_grad_(), 0.5)
    assert keep.tolist() == loop_nms(boxes, scores.detach(), 0.5)
    leaf[keep].sum().backward()
    assert leaf.grad[keep].eq(1).all() and leaf.grad.sum() == 4 * len(keep)


def test_opcheck():
    boxes, scores = make_boxes(30, seed=8)
    for idxs in (None, torch.arange(30) % 2):
        torch.library.opcheck(torch.ops.torchdcn.nms.default, (boxes, scores, idxs, 0.5))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_matches_eager():
    boxes, scores = make_boxes(60, seed=9)
    idxs = torch.arange(60) % 4
    scripted_nms, scripted_batched = torch.jit.script(nms), torch.jit.script(batched_nms)
    for thr in (0.3, 0.5):
        expected = loop_nms(boxes, scores, thr)
        assert scripted_nms(boxes, scores, thr).tolist() == expected
        assert nms(boxes, scores, thr).tolist() == expected
        expected = per_class_loop(boxes, scores, idxs, thr)
        assert scripted_batched(boxes, scores, idxs, thr).tolist() == expected
    half = scripted_nms(boxes.half(), scores, 0.5)  # widened to float32 as in eager
    assert half.tolist() == loop_nms(boxes.half().float(), scores, 0.5)


@pytest.mark.parametrize("threshold", [torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64)])
def test_threshold_as_tensor_or_int(threshold):
    boxes, scores = make_boxes(50, seed=10)
    idxs = torch.arange(50) % 3
    assert nms(boxes, scores, threshold).tolist() == loop_nms(boxes, scores, 0.5)
    assert batched_nms(boxes, scores, idxs, threshold).tolist() == per_class_loop(
        boxes, scores, idxs, 0.5
    )
    assert nms(boxes, scores, 0).tolist() == loop_nms(boxes, scores, 0.0)
    assert nms(boxes, scores, torch.tensor(1)).tolist() == loop_nms(boxes, scores, 1.0)


# ---------------------------------------------------------------------------------------------
# Bad input

_B, _S = torch.zeros(3, 4), torch.zeros(3)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: nms(torch.zeros(3, 5), _S, 0.5), ValueError, ["boxes", "[N, 4]", "(3, 5)"]),
        (lambda: nms(torch.zeros(12), _S, 0.5), ValueError, ["boxes", "(12,)"]),
        (lambda: nms(_B.long(), _S, 0.5), TypeError, ["boxes", "floating", "torch.int64"]),
        (lambda: nms(_B.numpy(), _S, 0.5), TypeError, ["boxes", "ndarray"]),
        (lambda: nms(_B, torch.zeros(3, 1), 0.5), ValueError, ["scores", "[N] = [3]", "(3, 1)"]),
        (lambda: nms(_B, torch.zeros(4), 0.5), ValueError, ["scores", "[3]", "(4,)"]),
        (lambda: nms(_B, _S.long(), 0.5), TypeError, ["scores", "torch.int64"]),
        (lambda: nms(_B, _S.to("meta"), 0.5), ValueError, ["scores", "meta", "cpu"]),
        (lambda: nms(_B, _S, "0.5"), TypeError, ["iou_threshold", "str"]),
        (lambda: nms(_B, _S, True), TypeError, ["iou_threshold", "bool"]),
        (lambda: nms(_B, _S, float("nan")), ValueError, ["iou_threshold", "nan"]),
        (lambda: nms(_B, _S, torch.tensor([0.5])), TypeError, ["iou_threshold", "0-d", "(1,)"]),
        (lambda: nms(_B, _S, torch.tensor(True)), TypeError, ["iou_threshold", "torch.bool"]),
        (lambda: nms(_B, _S, torch.tensor(float("nan"))), ValueError, ["iou_threshold", "nan"]),
        (lambda: batched_nms(_B, _S, torch.zeros(2).long(), 0.5), ValueError, ["idxs", "(2,)"]),
        (lambda: batched_nms(_B, _S, _S, 0.5), TypeError, ["idxs", "integer", "float32"]),
        (lambda: batched_nms(_B, _S, [0, 1, 2], 0.5), TypeError, ["idxs", "list"]),
    ],
)
def test_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_radix_order_is_torch_stable_sort(dtype):
    from torchdcn.ops._nms_cpu import descending_order

    gen = torch.Generator().manual_seed(9)
    scores = torch.randint(-20, 20, (3000,), generator=gen).to(dtype) / 7
    scores[::50] = float("nan")
    scores[1::50] = -float("nan")  # a NaN with the sign bit set, as 0 / 0 gives on x86
    scores[2::70] = -0.0
    scores[3::70] = 0.0
    scores[4::90] = float("inf")
    scores[5::90] = -float("inf")
    scores[6::110] = torch.finfo(dtype).tiny / 4  # subnormal
    scores[7::110] = torch.rand(1, generator=gen).to(dtype) * 1e-30
    expected = torch.sort(scores, descending=True, stable=True).indices
    assert torch.equal(torch.from_numpy(descending_order(scores.numpy())), expected)


@pytest.mark.slow
def test_nms_20000_boxes_kernels_agree():
    # the benchmark's size: the Numba grid and the blocked torch route against each other
    boxes, scores = make_boxes(20000, seed=10, degenerate=False)
    fast = run("numba", nms, boxes, scores, 0.5)
    blocked = run("triton", nms, boxes, scores, 0.5)
    assert torch.equal(fast, blocked)
    assert 1000 < len(fast) < 10000


# ---------------------------------------------------------------------------------------------
# Routes without the eager checks: TorchScript, torch.ops.torchdcn.nms called directly and
# torch.compile reach the registered op, which checks the lengths itself. Every kernel is replaced
# by one that fails the test, so a regression cannot read past ``boxes`` in this process.


@pytest.fixture
def no_kernels(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("NMS kernel reached with invalid arguments")

    for module, name in ((_nms_cpu, "nms"), (_nms_torch, "nms"), (_nms_ref, "nms_reference")):
        monkeypatch.setattr(module, name, refuse)


def _batched(b: torch.Tensor, s: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    return batched_nms(b, s, i, 0.5)


def _plain(b: torch.Tensor, s: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    return nms(b, s, 0.5)


@functools.cache
def _route(route: str, fn):
    if route == "script":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
            return torch.jit.script(fn)
    if route == "compile":
        return torch.compile(fn, fullgraph=True, backend="aot_eager")
    op = torch.ops.torchdcn.nms
    if fn is _plain:
        return lambda b, s, i: op(b, s, None, 0.5)
    return lambda b, s, i: op(b, s, i, 0.5)


_ROUTES = ["script", "op", "compile"]


@pytest.mark.parametrize("route", _ROUTES)
@pytest.mark.parametrize("fn", [_plain, _batched], ids=["nms", "batched_nms"])
def test_unchecked_routes_match_eager(route, fn):
    boxes, scores = make_boxes(40, seed=12)
    idxs = torch.arange(40) % 3
    assert torch.equal(_route(route, fn)(boxes, scores, idxs), fn(boxes, scores, idxs))


@pytest.mark.parametrize("route", _ROUTES)
@pytest.mark.parametrize(
    "fn, n_scores, n_idxs, name",
    [
        (_plain, 200, 5, "scores"),
        (_batched, 200, 5, "scores"),
        (_batched, 5, 3, "idxs"),
        (_batched, 5, 200, "idxs"),
    ],
    ids=["nms_scores", "batched_scores", "batched_idxs_short", "batched_idxs_long"],
)
def test_unchecked_routes_refuse_bad_lengths(route, fn, n_scores, n_idxs, name, no_kernels):
    boxes, _ = make_boxes(5, seed=13)
    scores, idxs = torch.rand(n_scores), torch.zeros(n_idxs, dtype=torch.int64)
    match = rf"{name} must have shape \[N\] = \[5\]"
    if route == "script":  # TorchScript wraps the op's error: RuntimeError "ValueError: ..."
        expected = pytest.raises(RuntimeError, match="ValueError: " + match)
    elif route == "compile":  # found while tracing (the shape may be symbolic): Unsupported
        expected = pytest.raises((ValueError, torch._dynamo.exc.Unsupported), match=match)
    else:
        got = n_scores if name == "scores" else n_idxs
        expected = pytest.raises(ValueError, match=match + rf".*\({got},\)")
    with expected:
        _route(route, fn)(boxes, scores, idxs)


def test_registered_op_checks_its_arguments(no_kernels):
    op = torch.ops.torchdcn.nms
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\].*\(3, 5\)"):
        op(torch.zeros(3, 5), torch.zeros(3), None, 0.5)
    with pytest.raises(TypeError, match=r"idxs must have an integer dtype"):
        op(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="iou_threshold must be a number, got nan"):
        op(torch.zeros(3, 4), torch.zeros(3), None, float("nan"))


@pytest.mark.parametrize(
    "bad",
    [True, 1 + 2j, "0.5", torch.tensor([0.5]), torch.tensor(0.5, requires_grad=True), math.nan],
    ids=["bool", "complex", "str", "1-d", "grad", "nan"],
)
def test_iou_threshold_refused_as_every_scalar_argument(bad):
    """_checks.real_scalar's rule (TypeError for the kind, ValueError for NaN); infinities are
    thresholds, as torchvision takes them: +inf suppresses nothing."""
    boxes, scores = make_boxes(6, seed=3)
    error = ValueError if isinstance(bad, float) else TypeError
    for call in (
        lambda t: nms(boxes, scores, t),
        lambda t: batched_nms(boxes, scores, torch.zeros(6, dtype=torch.int64), t),
    ):
        with pytest.raises(
            error, match=r"^iou_threshold must (be a float|be a number|not require grad)"
        ):
            call(bad)
        assert len(call(math.inf)) == 6
        for same in (np.float32(0.5), torch.tensor(0.5, dtype=torch.float64), 0.5):
            assert torch.equal(call(same), call(0.5))
