"""roi_pool (torchvision's max and v1 Eq. 5's average) and ps_roi_pool (integer bins) against a
loop reference and hand-computed cases, on every kernel."""

from __future__ import annotations

import math

import pytest
import torch

from torchdcn.ops import ps_roi_pool, roi_pool, use_backend

BACKENDS = ["reference", "numba"]
SCALE = 0.5  # the sample RoIs are in pixels of a 12 x 14 image over a 6 x 7 map
# ordinary RoIs, RoIs partly and wholly off the map, a zero-width one, an inverted one, a large one
ROIS = torch.tensor(
    [
        [0, 1.3, 2.2, 9.7, 8.1],
        [1, -3.0, -2.5, 5.2, 4.4],
        [1, 8.0, 6.0, 30.0, 25.0],
        [0, 40.0, 40.0, 52.0, 50.0],
        [0, 4.0, 3.0, 4.0, 9.0],
        [1, 9.0, 8.0, 3.0, 2.0],
        [0, -1.1, -0.9, 14.3, 12.8],
        [1, 2.9, 0.8, 7.0, 11.2],
        [0, 0.6, 5.0, 13.0, 6.9],
    ],
    dtype=torch.float64,
)


# An independent, plainly written reference: loops over RoIs, channels, bins and cells.


def c_round(v: float) -> int:
    """Round halves away from zero (C's ``round``)."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def _channel(c: int, i: int, j: int, ph: int, pw: int, ps: bool) -> int:
    return (c * ph + i) * pw + j if ps else c


def _bin_ranges(start: int, size: int, bins: int, limit: int):
    """torchvision's integer bins: ``floor(k * b)`` to ``ceil((k + 1) * b)`` with ``b = size /
    bins`` in double precision, offset by ``start``, clipped to ``[0, limit]``."""
    b = size / bins
    out = []
    for k in range(bins):
        lo = min(max(start + math.floor(k * b), 0), limit)
        hi = min(max(start + math.ceil((k + 1) * b), 0), limit)
        out.append(range(lo, max(hi, lo)))
    return out


def roi_pool_loop(x, rois, pooled, scale, ps=False, mode="avg") -> torch.Tensor:
    """roi_pool (``mode`` "max", torchvision; "avg", v1 Eq. 5: both ends of the RoI included, bins
    clipped to the map) or ps_roi_pool (average, end excluded, clipped to ``[0, W - 1]``)."""
    xs, rs = x.tolist(), rois.tolist()
    ph, pw = pooled
    _, c_in, h, w = x.shape
    c_out = c_in // (ph * pw) if ps else c_in
    extra, top = (0, -1) if ps else (1, 0)
    out = torch.zeros(len(rs), c_out, ph, pw, dtype=torch.float64)
    for r, (b, x1, y1, x2, y2) in enumerate(rs):
        x1, y1, x2, y2 = (c_round(v * scale) for v in (x1, y1, x2, y2))
        rw, rh = max(x2 - x1 + extra, 1), max(y2 - y1 + extra, 1)
        rows = _bin_ranges(y1, rh, ph, h + top)
        cols = _bin_ranges(x1, rw, pw, w + top)
        for i in range(ph):
            for j in range(pw):
                cells = [(yy, xx) for yy in rows[i] for xx in cols[j]]
                for c in range(c_out):
                    img = xs[int(b)][_channel(c, i, j, ph, pw, ps)]
                    values = [img[yy][xx] for yy, xx in cells]
                    if not values:
                        continue
                    if mode == "max":
                        best = -3.4028234663852886e38
                        for v in values:
                            best = v if v > best else best
                        out[r, c, i, j] = best
                    else:
                        out[r, c, i, j] = sum(values) / len(values)
    return out


@pytest.fixture(params=BACKENDS)
def backend(request):
    with use_backend(request.param):
        yield request.param


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("pooled", [2, (3, 2), (1, 4)])
def test_roi_pool_matches_loop(backend, pooled, mode):
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = roi_pool(x, ROIS, pooled, SCALE, mode)
    ph, pw = (pooled, pooled) if isinstance(pooled, int) else pooled
    expected = roi_pool_loop(x, ROIS, (ph, pw), SCALE, mode=mode)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("pooled", [2, (3, 2)])
def test_ps_roi_pool_matches_loop(backend, pooled):
    ph, pw = (pooled, pooled) if isinstance(pooled, int) else pooled
    x = torch.randn(2, 2 * ph * pw, 6, 7, dtype=torch.float64)
    out = ps_roi_pool(x, ROIS, pooled, SCALE)
    expected = roi_pool_loop(x, ROIS, (ph, pw), SCALE, ps=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_max_by_hand(backend):
    """torchvision's max: a 4 x 4 RoI (both ends counted) in 2 x 2 bins takes each block's max;
    the gradient goes to that one cell, the first of equal maxima in row-major order."""
    x = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    x[0, 0, 1, 1], x[0, 0, 2, 2] = 5.0, 3.0  # top-left bin: 5 at (1, 1)
    x[0, 0, 1, 3] = x[0, 0, 2, 4] = 7.0  # top-right bin: a tie, (1, 3) comes first
    x[0, 0, 3:5, 1:3] = -2.0  # bottom-left bin: all -2
    x[0, 0, 4, 4] = float("nan")  # bottom-right bin: NaN skipped, max of the zeros
    x.requires_grad_(True)
    rois = torch.tensor([[0, 1.0, 1.0, 4.0, 4.0]], dtype=torch.float64)
    out = roi_pool(x, rois, 2)
    assert out[0, 0].tolist() == [[5.0, 7.0], [-2.0, 0.0]]
    out.backward(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64))
    expected = torch.zeros(6, 6, dtype=torch.float64)
    expected[1, 1], expected[1, 3], expected[3, 1], expected[3, 3] = 1.0, 2.0, 3.0, 4.0
    assert torch.equal(x.grad[0, 0], expected)


def test_avg_mode_by_hand(backend):
    """v1 Eq. 5 (``mode="avg"``): a 4 x 4 RoI in 2 x 2 bins averages 2 x 2 blocks; a 3-cell RoI's
    bins overlap by a cell; the gradient spreads ``1 / n`` over the bin."""
    x = torch.arange(36.0, dtype=torch.float64).view(1, 1, 6, 6)
    out = roi_pool(x, torch.tensor([[0, 1.0, 1.0, 4.0, 4.0]], dtype=torch.float64), 2, mode="avg")
    block = x[0, 0, 1:5, 1:5].reshape(2, 2, 2, 2).mean((1, 3))
    torch.testing.assert_close(out[0, 0], block)
    # columns 0..2 in 2 bins: [0, 2) and [1, 3); one row
    rois = torch.tensor([[0, 0.0, 0.0, 2.0, 0.0]], dtype=torch.float64)
    out = roi_pool(x, rois, (1, 2), mode="avg")
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.5, 1.5], dtype=torch.float64))
    assert roi_pool(x, rois, (1, 2)).flatten().tolist() == [1.0, 2.0]  # max


def test_ps_bins_by_hand(backend):
    """torchvision's ps_roi_pool: x2 - x1 cells (the end excluded), bins clipped to [0, W - 1]."""
    x = torch.arange(1.0, 26.0, dtype=torch.float64).view(1, 1, 5, 5)
    # cells 1..3 of rows 1..3 (the inclusive rule would have read 1..4)
    out = ps_roi_pool(x, torch.tensor([[0, 1.0, 1.0, 4.0, 4.0]], dtype=torch.float64), 1)
    assert out.item() == x[0, 0, 1:4, 1:4].mean().item()
    # the whole map: the last row and column are never read
    out = ps_roi_pool(x, torch.tensor([[0, 0.0, 0.0, 9.0, 9.0]], dtype=torch.float64), 1)
    assert out.item() == x[0, 0, :4, :4].mean().item()


def test_bad_mode():
    with pytest.raises(ValueError, match=r'mode must be "max" .* got "sum"'):
        roi_pool(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), 1, mode="sum")


def test_off_map_bins_are_zero_and_partial_bins_average_inside(backend):
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    rois = torch.tensor(
        [[0, 10.0, 10.0, 12.0, 12.0], [0, -2.0, -2.0, 1.0, 1.0]], dtype=torch.float64
    )
    for mode, reduce in (("avg", torch.mean), ("max", torch.amax)):
        out = roi_pool(x, rois, 1, mode=mode)
        assert torch.equal(out[0], torch.zeros(2, 1, 1, dtype=torch.float64))
        torch.testing.assert_close(out[1, :, 0, 0], reduce(x[0, :, :2, :2], (1, 2)))


@pytest.mark.parametrize("op", ["roi_pool", "roi_pool_avg", "ps_roi_pool"])
def test_gradcheck(backend, op):
    """float64 gradcheck; random inputs have no ties, so max pooling is differentiable there."""
    gen = torch.Generator().manual_seed(4)
    c = 2 * 2 * 3 if op == "ps_roi_pool" else 3
    x = torch.randn(2, c, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    rois = ROIS[[0, 1, 2, 5, 7]]
    fns = {
        "roi_pool": lambda t: roi_pool(t, rois, (2, 3), SCALE),
        "roi_pool_avg": lambda t: roi_pool(t, rois, (2, 3), SCALE, mode="avg"),
        "ps_roi_pool": lambda t: ps_roi_pool(t, rois, (2, 3), SCALE),
    }
    assert torch.autograd.gradcheck(fns[op], (x,))


def test_ps_on_repeated_channels_is_plain_average(backend):
    """With the same bins (RoIs whose end cells lie inside the map and ``+1`` cell for
    roi_pool's inclusive rule), ps_roi_pool of repeated channels is roi_pool's average."""
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    rois = torch.tensor([[0, 1.0, 1.0, 4.0, 3.0], [1, 0.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    rep = x.repeat_interleave(2 * 3, dim=1)  # channel (c, i, j) = c for every bin
    inclusive = rois - torch.tensor([0, 0, 0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(
        ps_roi_pool(rep, rois, (2, 3)), roi_pool(x, inclusive, (2, 3), mode="avg")
    )


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_fast_kernel_float32_matches_reference(mode):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 40, 6, 7, generator=gen, requires_grad=True)
    rois = ROIS.repeat(3, 1).float()
    results = []
    for name in BACKENDS:
        with use_backend(name):
            out_ps = ps_roi_pool(x, rois, 2, SCALE)
            out = roi_pool(x, rois, 2, SCALE, mode)
            grads = torch.autograd.grad(
                (out_ps, out),
                x,
                (torch.randn(out_ps.shape, generator=torch.Generator().manual_seed(1)),
                 torch.randn(out.shape, generator=torch.Generator().manual_seed(2))),
            )  # fmt: skip
            results.append((out_ps, out, *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
