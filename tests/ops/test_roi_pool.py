"""roi_pool and ps_roi_pool (integer bins, v1 Eq. 5) against the loop reference, on every kernel."""

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


def roi_pool_loop(x, rois, pooled, scale, ps=False) -> torch.Tensor:
    """v1 Eq. 5: average over the integer cells of each bin that lie on the map."""
    xs, rs = x.tolist(), rois.tolist()
    ph, pw = pooled
    _, c_in, h, w = x.shape
    c_out = c_in // (ph * pw) if ps else c_in
    out = torch.zeros(len(rs), c_out, ph, pw, dtype=torch.float64)
    for r, (b, x1, y1, x2, y2) in enumerate(rs):
        x1, y1, x2, y2 = (c_round(v * scale) for v in (x1, y1, x2, y2))
        rw, rh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        for i in range(ph):
            ys = range(
                max(y1 + math.floor(i * rh / ph), 0), min(y1 + math.ceil((i + 1) * rh / ph), h)
            )
            for j in range(pw):
                xr = range(
                    max(x1 + math.floor(j * rw / pw), 0), min(x1 + math.ceil((j + 1) * rw / pw), w)
                )
                cells = [(yy, xx) for yy in ys for xx in xr]
                for c in range(c_out):
                    img = xs[int(b)][_channel(c, i, j, ph, pw, ps)]
                    total = sum(img[yy][xx] for yy, xx in cells)
                    out[r, c, i, j] = total / len(cells) if cells else 0.0
    return out


@pytest.fixture(params=BACKENDS)
def backend(request):
    with use_backend(request.param):
        yield request.param


@pytest.mark.parametrize("pooled", [2, (3, 2), (1, 4)])
def test_roi_pool_matches_loop(backend, pooled):
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rois = ROIS
    out = roi_pool(x, rois, pooled, SCALE)
    ph, pw = (pooled, pooled) if isinstance(pooled, int) else pooled
    torch.testing.assert_close(out, roi_pool_loop(x, rois, (ph, pw), SCALE), rtol=0, atol=1e-10)


@pytest.mark.parametrize("pooled", [2, (3, 2)])
def test_ps_roi_pool_matches_loop(backend, pooled):
    ph, pw = (pooled, pooled) if isinstance(pooled, int) else pooled
    x = torch.randn(2, 2 * ph * pw, 6, 7, dtype=torch.float64)
    rois = ROIS
    out = ps_roi_pool(x, rois, pooled, SCALE)
    expected = roi_pool_loop(x, rois, (ph, pw), SCALE, ps=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_bins_by_hand():
    """A 4 x 4 RoI in 2 x 2 bins averages 2 x 2 blocks; a 3-cell RoI's bins overlap by a cell."""
    x = torch.arange(36.0, dtype=torch.float64).view(1, 1, 6, 6)
    out = roi_pool(x, torch.tensor([[0, 1.0, 1.0, 4.0, 4.0]], dtype=torch.float64), 2)
    block = x[0, 0, 1:5, 1:5].reshape(2, 2, 2, 2).mean((1, 3))
    torch.testing.assert_close(out[0, 0], block)
    # columns 0..2 in 2 bins: [0, 2) and [1, 3); one row
    out = roi_pool(x, torch.tensor([[0, 0.0, 0.0, 2.0, 0.0]], dtype=torch.float64), (1, 2))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.5, 1.5], dtype=torch.float64))


def test_average_not_max():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 4.0
    out = roi_pool(x, torch.tensor([[0, 0.0, 0.0, 1.0, 1.0]]), 1)
    assert out.item() == 1.0  # torchvision's max pooling would give 4


def test_off_map_bins_are_zero_and_partial_bins_average_inside(backend):
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    rois = torch.tensor(
        [[0, 10.0, 10.0, 12.0, 12.0], [0, -2.0, -2.0, 1.0, 1.0]], dtype=torch.float64
    )
    out = roi_pool(x, rois, 1)
    assert torch.equal(out[0], torch.zeros(2, 1, 1, dtype=torch.float64))
    torch.testing.assert_close(out[1, :, 0, 0], x[0, :, :2, :2].mean((1, 2)))


@pytest.mark.parametrize("op", ["roi_pool", "ps_roi_pool"])
def test_gradcheck(backend, op):
    gen = torch.Generator().manual_seed(4)
    c = 2 * 2 * 3 if op == "ps_roi_pool" else 3
    x = torch.randn(2, c, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    rois = ROIS[[0, 1, 2, 5, 7]]
    fn = roi_pool if op == "roi_pool" else ps_roi_pool
    assert torch.autograd.gradcheck(lambda t: fn(t, rois, (2, 3), SCALE), (x,))


def test_ps_on_repeated_channels_is_plain(backend):
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    rois = ROIS
    rep = x.repeat_interleave(2 * 3, dim=1)  # channel (c, i, j) = c for every bin
    assert torch.equal(ps_roi_pool(rep, rois, (2, 3), SCALE), roi_pool(x, rois, (2, 3), SCALE))


def test_fast_kernel_float32_matches_reference():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 40, 6, 7, generator=gen, requires_grad=True)
    rois = ROIS.repeat(3, 1).float()
    grad = torch.randn(len(rois), 10, 2, 2, generator=gen)
    results = []
    for name in BACKENDS:
        with use_backend(name):
            out = ps_roi_pool(x, rois, 2, SCALE)
            (g,) = torch.autograd.grad(out, x, grad)
            results.append((out, g))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
