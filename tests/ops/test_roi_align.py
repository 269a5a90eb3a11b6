"""The RoIAlign family (roi_align, ps_roi_align, deform_roi_pool, deform_ps_roi_pool) against a
loop reference, gradients, identities and border semantics, on every kernel."""

from __future__ import annotations

import math

import pytest
import torch

from torchdcn.ops import (
    deform_ps_roi_pool,
    deform_roi_pool,
    ps_roi_align,
    roi_align,
    use_backend,
)

BACKENDS = ["reference", "numba"]
SCALE = 0.5  # the sample RoIs are in pixels of a 12 x 14 image over a 6 x 7 map
# (output_size, sampling_ratio, aligned): adaptive (-1 and 0) and fixed grids, both alignments
CONFIGS = [((2, 3), -1, True), (3, 0, False), (2, 2, True), ((3, 2), 1, False)]


def _pair(v):
    return (v, v) if isinstance(v, int) else v


@pytest.fixture(params=BACKENDS)
def backend(request):
    with use_backend(request.param):
        yield request.param


# An independent, plainly written reference: loops over RoIs, channels, bins and samples.


def bilinear_clamp(img: list, y: float, x: float) -> float:
    """RoIAlign border: 0 outside ``[-1, H] x [-1, W]``, clamped to the map inside it."""
    h, w = len(img), len(img[0])
    if not (-1 <= y <= h and -1 <= x <= w):
        return 0.0
    y = min(max(y, 0.0), h - 1.0)
    x = min(max(x, 0.0), w - 1.0)
    y0, x0 = math.floor(y), math.floor(x)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * img[y0][x0]
        + (1 - ly) * lx * img[y0][x1]
        + ly * (1 - lx) * img[y1][x0]
        + ly * lx * img[y1][x1]
    )


def _channel(c: int, i: int, j: int, ph: int, pw: int, ps: bool) -> int:
    return (c * ph + i) * pw + j if ps else c


def roi_align_loop(
    x, rois, pooled, scale, sampling_ratio, aligned=True, offset=None, mask=None, gamma=0.1,
    ps=False,
) -> torch.Tensor:  # fmt: skip
    """RoIAlign with optional normalised bin offsets ``[R, 2 * C', ph, pw]`` and masks."""
    xs, rs = x.tolist(), rois.tolist()
    offs = None if offset is None else offset.tolist()
    masks = None if mask is None else mask.tolist()
    ph, pw = pooled
    c_in = x.shape[1]
    c_out = c_in // (ph * pw) if ps else c_in
    classes = 1 if offset is None else offset.shape[1] // 2
    out = torch.zeros(len(rs), c_out, ph, pw, dtype=torch.float64)
    shift = 0.5 if aligned else 0.0
    least = -math.inf if aligned else 1.0  # torchvision: an aligned RoI's size is not clamped
    for r, (b, x1, y1, x2, y2) in enumerate(rs):
        x1, y1, x2, y2 = (v * scale - shift for v in (x1, y1, x2, y2))
        rw, rh = max(x2 - x1, least), max(y2 - y1, least)
        bw, bh = rw / pw, rh / ph
        gh = sampling_ratio if sampling_ratio > 0 else min(max(0, math.ceil(rh / ph)), 64)
        gw = sampling_ratio if sampling_ratio > 0 else min(max(0, math.ceil(rw / pw)), 64)
        for c in range(c_out):
            k = c // (c_out // classes)
            for i in range(ph):
                for j in range(pw):
                    dx = dy = 0.0
                    if offs is not None:
                        dx = gamma * rw * offs[r][2 * k][i][j]
                        dy = gamma * rh * offs[r][2 * k + 1][i][j]
                    img = xs[int(b)][_channel(c, i, j, ph, pw, ps)]
                    total = 0.0
                    for iy in range(gh):
                        yy = y1 + i * bh + (iy + 0.5) * bh / gh + dy
                        for ix in range(gw):
                            xx = x1 + j * bw + (ix + 0.5) * bw / gw + dx
                            total += bilinear_clamp(img, yy, xx)
                    m = 1.0 if masks is None else masks[r][0][i][j]
                    out[r, c, i, j] = total / max(gh * gw, 1) * m
    return out


def sample_rois(seed: int = 0, n_random: int = 4, n_img: int = 2) -> torch.Tensor:
    """``[R, 5]`` float64 RoIs in image pixels for a 6 x 7 map at ``spatial_scale = 0.5``: ordinary
    ones, ones partly and wholly off the map, a zero-width and an inverted one, then random ones
    with non-integer corners (keep the random ones for gradient checks of offsets)."""
    special = [
        [0, 1.3, 2.2, 9.7, 8.1],  # inside
        [1, -3.0, -2.5, 5.2, 4.4],  # partly off, top-left
        [1, 8.0, 6.0, 30.0, 25.0],  # partly off, bottom-right, large (adaptive grid > 1)
        [0, 40.0, 40.0, 52.0, 50.0],  # wholly off the map
        [0, 4.0, 3.0, 4.0, 9.0],  # zero width
        [1, 9.0, 8.0, 3.0, 2.0],  # inverted
        [0, -1.1, -0.9, 14.3, 12.8],  # the whole map and a little more
    ]
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n_random, 2, generator=gen, dtype=torch.float64) * torch.tensor([14.0, 12.0])
    wh = torch.rand(n_random, 2, generator=gen, dtype=torch.float64) * 10 + 0.5
    b = torch.randint(0, n_img, (n_random, 1), generator=gen).double()
    rand = torch.cat([b, xy - 2, xy - 2 + wh], 1)
    return torch.cat([torch.tensor(special, dtype=torch.float64), rand])


def _inputs(c_out, pooled, ps=False, classes=1, seed=0, dtype=torch.float64, few=False):
    """Input map, RoIs, offsets (within about a bin) and masks for ``c_out`` output channels;
    ``few``: five RoIs (partly off the map, large, inverted, two random) for gradient checks."""
    ph, pw = _pair(pooled)
    gen = torch.Generator().manual_seed(seed)
    rois = sample_rois(seed=seed)
    if few:
        rois = rois[[1, 2, 5, 7, 9]]
    c_in = c_out * ph * pw if ps else c_out
    x = torch.randn(2, c_in, 6, 7, generator=gen, dtype=torch.float64)
    offset = 2 * torch.randn(len(rois), 2 * classes, ph, pw, generator=gen, dtype=torch.float64)
    mask = torch.rand(len(rois), 1, ph, pw, generator=gen, dtype=torch.float64)
    return (t.to(dtype) for t in (x, rois, offset, mask))


# ---------------------------------------------------------------------------------------------
# Against the loop reference, float64, 1e-10.


@pytest.mark.parametrize("pooled, ratio, aligned", CONFIGS)
def test_roi_align_matches_loop(backend, pooled, ratio, aligned):
    x, rois, _, _ = _inputs(3, pooled)
    out = roi_align(x, rois, pooled, SCALE, ratio, aligned)
    expected = roi_align_loop(x, rois, _pair(pooled), SCALE, ratio, aligned)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("pooled, ratio, aligned", CONFIGS[:2])
def test_ps_roi_align_matches_loop(backend, pooled, ratio, aligned):
    x, rois, _, _ = _inputs(2, pooled, ps=True)
    out = ps_roi_align(x, rois, pooled, SCALE, ratio, aligned)
    expected = roi_align_loop(x, rois, _pair(pooled), SCALE, ratio, aligned, ps=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("pooled, ratio, aligned", CONFIGS[:3])
def test_deform_roi_pool_matches_loop(backend, modulated, pooled, ratio, aligned):
    x, rois, offset, mask = _inputs(3, pooled, seed=1)
    mask = mask if modulated else None
    out = deform_roi_pool(x, rois, offset, pooled, SCALE, ratio, 0.1, mask, aligned)
    expected = roi_align_loop(x, rois, _pair(pooled), SCALE, ratio, aligned, offset, mask, 0.1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("classes", [1, 2])
@pytest.mark.parametrize("pooled, ratio, aligned", CONFIGS[:2])
def test_deform_ps_roi_pool_matches_loop(backend, classes, pooled, ratio, aligned):
    x, rois, offset, _ = _inputs(2, pooled, ps=True, classes=classes, seed=2)
    out = deform_ps_roi_pool(x, rois, offset, pooled, SCALE, ratio, 0.2, aligned)
    ph_pw = _pair(pooled)
    expected = roi_align_loop(x, rois, ph_pw, SCALE, ratio, aligned, offset, None, 0.2, ps=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Gradients: float64 gradcheck of every differentiable argument.


def test_gradcheck_roi_align(backend):
    x, rois, _, _ = _inputs(2, 2, seed=3, few=True)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (2, 3), SCALE, -1), (x,))


def test_gradcheck_ps_roi_align(backend):
    x, rois, _, _ = _inputs(2, 2, ps=True, seed=4, few=True)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ps_roi_align(t, rois, 2, SCALE, 2, False), (x,))


@pytest.mark.parametrize("args", ["offset", "offset, mask", "mask"])
def test_gradcheck_deform_roi_pool(backend, args):
    x, rois, offset, mask = _inputs(2, (2, 3), seed=5, few=True)
    offset = offset.requires_grad_(True) if "offset" in args else None
    mask = mask.requires_grad_(True) if "mask" in args else None
    x.requires_grad_(True)

    def fn(x, *rest):
        it = iter(rest)
        o = next(it) if offset is not None else None
        m = next(it) if mask is not None else None
        return deform_roi_pool(x, rois, o, (2, 3), SCALE, -1, 0.1, m)

    present = tuple(t for t in (x, offset, mask) if t is not None)
    assert torch.autograd.gradcheck(fn, present)


@pytest.mark.parametrize("args", ["offset, mask", "mask"])
def test_one_roi_backward_returns_separate_gradients(backend, args):
    # one RoI, one group: the offset and mask gradients are slices of one buffer that happen to
    # be contiguous; returned as views they tripped the custom op's aliasing check
    x, rois, offset, mask = _inputs(2, (2, 3), seed=7, few=True)
    rois, offset, mask = rois[:1], offset[:1].clone(), mask[:1].clone()
    offset = offset.requires_grad_(True) if "offset" in args else None
    mask.requires_grad_(True)
    x.requires_grad_(True)

    def fn(x, *rest):
        o = rest[0] if offset is not None else None
        return deform_roi_pool(x, rois, o, (2, 3), SCALE, -1, 0.1, rest[-1])

    present = tuple(t for t in (x, offset, mask) if t is not None)
    assert torch.autograd.gradcheck(fn, present)


@pytest.mark.parametrize("classes", [1, 2])
def test_gradcheck_deform_ps_roi_pool(backend, classes):
    x, rois, offset, _ = _inputs(2, 2, ps=True, classes=classes, seed=6, few=True)
    x.requires_grad_(True)
    offset.requires_grad_(True)

    def fn(x, offset):
        return deform_ps_roi_pool(x, rois, offset, 2, SCALE, 2, 0.1)

    assert torch.autograd.gradcheck(fn, (x, offset))


# ---------------------------------------------------------------------------------------------
# Identities.


@pytest.mark.parametrize("pooled, ratio, aligned", CONFIGS)
def test_zero_offsets_give_the_plain_pooling_exactly(backend, pooled, ratio, aligned):
    x, rois, offset, _ = _inputs(3, pooled, seed=7, dtype=torch.float32)
    plain = roi_align(x, rois, pooled, SCALE, ratio, aligned)
    zeros = torch.zeros_like(offset)
    assert torch.equal(
        deform_roi_pool(x, rois, zeros, pooled, SCALE, ratio, 0.1, None, aligned), plain
    )
    assert torch.equal(
        deform_roi_pool(x, rois, None, pooled, SCALE, ratio, 0.1, None, aligned), plain
    )
    xp, _, _, _ = _inputs(2, pooled, ps=True, seed=7, dtype=torch.float32)
    plain = ps_roi_align(xp, rois, pooled, SCALE, ratio, aligned)
    zeros = torch.zeros(len(rois), 2, *_pair(pooled))
    assert torch.equal(
        deform_ps_roi_pool(xp, rois, zeros, pooled, SCALE, ratio, 0.1, aligned), plain
    )
    # per-class offsets split the channels into groups, which may change the order of the sums
    zeros = torch.zeros(len(rois), 4, *_pair(pooled))
    out = deform_ps_roi_pool(xp, rois, zeros, pooled, SCALE, ratio, 0.1, aligned)
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-6)


def test_half_mask_gives_half_exactly(backend):
    x, rois, _, _ = _inputs(3, 3, seed=8, dtype=torch.float32)
    half = torch.full((len(rois), 1, 3, 3), 0.5)
    out = deform_roi_pool(x, rois, None, 3, SCALE, 2, 0.1, half)
    assert torch.equal(out, 0.5 * roi_align(x, rois, 3, SCALE, 2, aligned=True))


@pytest.mark.parametrize("ratio", [2, -1])
@pytest.mark.parametrize("shift", [(1, -1), (-2, 1)])
def test_whole_pixel_offsets_equal_pooling_the_moved_roi(backend, ratio, shift):
    """Every bin moved by (dx, dy) cells is RoIAlign of the RoI moved by (dx, dy) cells."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 6, 7, generator=gen, dtype=torch.float64)
    rois = torch.tensor([[0, 3.3, 2.6, 9.1, 10.2], [1, 4.4, 3.7, 7.9, 6.1]], dtype=torch.float64)
    dx, dy = shift
    roi_w = (rois[:, 3] - rois[:, 1]) * SCALE
    roi_h = (rois[:, 4] - rois[:, 2]) * SCALE
    offset = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    offset[:, 0] = (dx / (0.1 * roi_w))[:, None, None]
    offset[:, 1] = (dy / (0.1 * roi_h))[:, None, None]
    moved = rois + torch.tensor([0, dx, dy, dx, dy], dtype=torch.float64) / SCALE
    expected = roi_align(x, moved, 3, SCALE, ratio, aligned=True)
    out = deform_roi_pool(x, rois, offset, 3, SCALE, ratio)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    xp = x.repeat(1, 3, 1, 1)  # 27 channels: 3 output channels of 3 x 3 bins
    out = deform_ps_roi_pool(xp, rois, offset, 3, SCALE, ratio)
    torch.testing.assert_close(out, ps_roi_align(xp, moved, 3, SCALE, ratio), rtol=0, atol=1e-12)


def test_ps_on_repeated_channels_is_plain(backend):
    x, rois, offset, _ = _inputs(3, (2, 3), seed=10)
    rep = x.repeat_interleave(6, dim=1)  # channel (c, i, j) = c for every bin
    assert torch.equal(
        ps_roi_align(rep, rois, (2, 3), SCALE, -1),
        roi_align(x, rois, (2, 3), SCALE, -1, aligned=True),
    )
    torch.testing.assert_close(
        deform_ps_roi_pool(rep, rois, offset, (2, 3), SCALE, 2),
        deform_roi_pool(x, rois, offset, (2, 3), SCALE, 2),
        rtol=0,
        atol=1e-14,
    )


# ---------------------------------------------------------------------------------------------
# Border semantics (SPEC section 1) and odd RoIs.


def test_clamped_coordinates_read_the_edge_and_get_no_gradient(backend):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    # aligned: x1 = 1.5, y1 = 1.5, 4 x 0.8 cells; one bin, 2 x 2 samples at x 2.5, 4.5, y 1.7, 2.1
    rois = torch.tensor([[0, 2.0, 2.0, 6.0, 2.8]], dtype=torch.float64)
    offset = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
    offset[0, 0] = 0.013 / (0.1 * 4.0)  # x moves by 0.013
    offset[0, 1] = -2.3 / (0.1 * 0.8)  # y moves to -0.6, -0.2: clamped to row 0
    offset.requires_grad_(True)
    out = deform_roi_pool(x, rois, offset, 1, 1.0, 2)
    row = x[0, :, 0]
    expected = sum((1 - f) * row[:, c] + f * row[:, c + 1] for c, f in ((2, 0.513), (4, 0.513))) / 2
    torch.testing.assert_close(out[0, :, 0, 0], expected, rtol=0, atol=1e-12)
    (g,) = torch.autograd.grad(out.sum(), offset)
    assert g[0, 1].item() == 0.0 and g[0, 0].item() != 0.0


def test_samples_past_the_border_read_zero(backend):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    rois = torch.tensor([[0, 2.0, 2.0, 6.0, 4.0]], dtype=torch.float64)
    offset = torch.zeros(1, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        offset[0, 1] = 40.0  # y = 2 + 4 + 0.5 * ... far below the map
    out = deform_roi_pool(x, rois, offset, 1, 1.0, 2)
    assert torch.equal(out, torch.zeros_like(out))
    (g,) = torch.autograd.grad(out.sum(), offset)
    assert torch.equal(g, torch.zeros_like(g))


def test_non_finite_offsets_read_zero(backend):
    x, rois, offset, _ = _inputs(2, 2, seed=11)
    offset[0, 0, 0, 0] = float("nan")
    offset[1, 1, 1, 1] = float("inf")
    out = deform_roi_pool(x, rois, offset, 2, SCALE, 2)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0, :, 0, 0], torch.zeros(2, dtype=torch.float64))


def test_zero_size_and_inverted_rois_as_torchvision(backend):
    """aligned: no clamp, so a zero-size RoI's adaptive grid is empty (0) while a fixed grid
    samples its line, and an inverted RoI steps backwards; not aligned: at least one cell."""
    x = torch.randn(1, 1, 6, 7, dtype=torch.float64)
    line = torch.tensor([[0, 3.5, 1.5, 3.5, 5.5]], dtype=torch.float64)  # zero width at x = 3
    assert torch.equal(roi_align(x, line, (2, 1), 1.0, -1, True), torch.zeros(1, 1, 2, 1).double())
    out = roi_align(x, line, (2, 1), 1.0, 1, True)
    # x = 3, y from 1 to 5 in 2 bins, one sample each at y = 2 and 4
    torch.testing.assert_close(out[0, 0, :, 0], x[0, 0, [2, 4], 3], rtol=0, atol=1e-12)
    inverted = torch.tensor([[0, 3.5, 5.5, 3.5, 1.5]], dtype=torch.float64)  # y from 5 to 1
    back = roi_align(x, inverted, (2, 1), 1.0, 1, True)
    torch.testing.assert_close(back[0, 0, :, 0], x[0, 0, [4, 2], 3], rtol=0, atol=1e-12)
    assert torch.equal(roi_align(x, inverted, (2, 1), 1.0, -1, True), torch.zeros_like(back))
    # not aligned: the inverted RoI is the 1 x 1 cell at (3.5, 5.5): samples at x 4, y 5.75 (past
    # the last row: reads row 5) and y 6.25 (past H = 6: reads 0)
    cell = roi_align(x, inverted, (2, 1), 1.0, 1)
    expected = torch.stack([x[0, 0, 5, 4], torch.zeros((), dtype=torch.float64)])
    torch.testing.assert_close(cell[0, 0, :, 0], expected, rtol=0, atol=1e-12)


def test_default_is_not_aligned_by_hand():
    """torchvision's default ``aligned=False``: the box (1, 1)-(3, 3) with one sample per bin
    reads its centre (2, 2); ``aligned=True`` shifts by half a cell to (1.5, 1.5)."""
    x = torch.arange(25.0, dtype=torch.float64).view(1, 1, 5, 5)  # x[y, x] = 5y + x
    box = torch.tensor([[0, 1.0, 1.0, 3.0, 3.0]], dtype=torch.float64)
    assert roi_align(x, box, 1, sampling_ratio=1).item() == 12.0
    assert roi_align(x, box, 1, sampling_ratio=1, aligned=True).item() == 9.0
    # list-of-boxes form, keyword name "boxes" as torchvision
    assert roi_align(x, boxes=[box[:, 1:]], output_size=1, sampling_ratio=1).item() == 12.0


@pytest.mark.parametrize("op", ["roi_align", "deform_roi_pool", "ps_roi_align"])
def test_huge_roi_adaptive_grid_is_capped(backend, op):
    """A +-1e6 px RoI with an adaptive grid returns at once: the grid is capped at
    MAX_ADAPTIVE_GRID samples per axis, so it equals the fixed grid of that size."""
    import time

    from torchdcn.ops._roi_common import MAX_ADAPTIVE_GRID

    gen = torch.Generator().manual_seed(13)
    c = 2
    x = torch.randn(1, c, 6, 7, generator=gen)
    # the second RoI is 64000 cells wide and tall, placed so its capped grid (one sample every
    # 1000 cells per axis, one bin) has a sample on the map, at (2.3, 2.6)
    boxes = torch.tensor(
        [[0, -1e6, -1e6, 1e6, 1e6], [0, -497.7, -497.4, 63502.3, 63502.6]], dtype=torch.float64
    )
    x = x.double()
    fns = {
        "roi_align": lambda r: roi_align(x, boxes, 1, 1.0, r),
        "deform_roi_pool": lambda r: deform_roi_pool(x, boxes, None, 1, 1.0, r, aligned=False),
        "ps_roi_align": lambda r: ps_roi_align(x, boxes, 1, 1.0, r, aligned=False),
    }
    start = time.perf_counter()
    adaptive = fns[op](-1)
    assert time.perf_counter() - start < 20.0
    torch.testing.assert_close(adaptive, fns[op](MAX_ADAPTIVE_GRID), rtol=0, atol=0)
    # one sample of 64 x 64 on the map: bilinear at (2.3, 2.6) / 4096
    row2 = 0.7 * x[0, :c, 2, 2] + 0.3 * x[0, :c, 2, 3]  # x = 2.3
    row3 = 0.7 * x[0, :c, 3, 2] + 0.3 * x[0, :c, 3, 3]
    sample = 0.4 * row2 + 0.6 * row3  # y = 2.6
    if op != "ps_roi_align":
        torch.testing.assert_close(adaptive[1, :, 0, 0], sample / 4096, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The fast kernel against the reference: float32, every gradient, channel runs split per thread.


@pytest.mark.parametrize(
    "op", ["roi_align", "ps_roi_align", "deform_roi_pool", "deform_ps_roi_pool"]
)
def test_fast_kernel_float32_matches_reference(op):
    ps = op.startswith("ps") or op == "deform_ps_roi_pool"
    c_out = 10 if ps else 70  # 70 channels: the backward splits them into runs
    classes = 5 if op == "deform_ps_roi_pool" else 1
    x, rois, offset, mask = _inputs(
        c_out, (2, 3), ps=ps, classes=classes, seed=12, dtype=torch.float32
    )
    rois = rois.repeat(4, 1)
    offset, mask = offset.repeat(4, 1, 1, 1), mask.repeat(4, 1, 1, 1)
    tensors = {"roi_align": [x], "ps_roi_align": [x], "deform_roi_pool": [x, offset, mask]}
    tensors["deform_ps_roi_pool"] = [x, offset]
    args = tensors[op]
    fns = {
        "roi_align": lambda x: roi_align(x, rois, (2, 3), SCALE, -1),
        "ps_roi_align": lambda x: ps_roi_align(x, rois, (2, 3), SCALE, -1),
        "deform_roi_pool": lambda x, o, m: deform_roi_pool(x, rois, o, (2, 3), SCALE, -1, 0.1, m),
        "deform_ps_roi_pool": lambda x, o: deform_ps_roi_pool(x, rois, o, (2, 3), SCALE, 2, 0.1),
    }
    results = []
    for name in BACKENDS:
        leaves = [t.detach().requires_grad_(True) for t in args]
        with use_backend(name):
            out = fns[op](*leaves)
            grad = torch.rand(out.shape, generator=torch.Generator().manual_seed(0))
            grads = torch.autograd.grad(out, leaves, grad)
        results.append((out, *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_fast_kernel_float64_sweep(seed):
    """Random shapes, grids, alignments, offset groups and masks: the Numba kernel equals the
    reference to 1e-10, outputs and every gradient."""
    gen = torch.Generator().manual_seed(100 + seed)
    ph, pw = (int(v) for v in torch.randint(1, 5, (2,), generator=gen))
    ps = seed % 2 == 1
    c_out = int(torch.randint(1, 40, (1,), generator=gen))
    classes = [d for d in range(1, c_out + 1) if c_out % d == 0][-1 if seed % 3 == 0 else 0]
    ratio = int(torch.randint(-1, 4, (1,), generator=gen))
    aligned = bool(seed % 4 < 2)
    n, h, w = (
        3,
        int(torch.randint(1, 12, (1,), generator=gen)),
        int(torch.randint(1, 12, (1,), generator=gen)),
    )
    c_in = c_out * ph * pw if ps else c_out
    x = torch.randn(n, c_in, h, w, generator=gen, dtype=torch.float64)
    r = 40
    xy = torch.rand(r, 2, generator=gen, dtype=torch.float64) * 30 - 5
    wh = torch.rand(r, 2, generator=gen, dtype=torch.float64) * 20 - 2  # some inverted
    b = torch.randint(0, n, (r, 1), generator=gen).double()
    rois = torch.cat([b, xy, xy + wh], 1)
    offset = torch.randn(r, 2 * (classes if ps else 1), ph, pw, generator=gen, dtype=torch.float64)
    mask = None if ps else torch.rand(r, 1, ph, pw, generator=gen, dtype=torch.float64)
    grad = torch.randn(r, c_out, ph, pw, generator=gen, dtype=torch.float64)
    results = []
    for name in BACKENDS:
        leaves = [
            t.clone().requires_grad_(True)
            for t in (x, offset) + ((mask,) if mask is not None else ())
        ]
        with use_backend(name):
            if ps:
                out = deform_ps_roi_pool(
                    leaves[0], rois, leaves[1], (ph, pw), 0.5, ratio, 0.1, aligned
                )
            else:
                out = deform_roi_pool(
                    leaves[0], rois, leaves[1], (ph, pw), 0.5, ratio, 0.1, leaves[2], aligned
                )
            results.append((out, *torch.autograd.grad(out, leaves, grad)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("per_group", [1, 7, 8, 12])  # both sides of the kernels' _SLICE_MIN
@pytest.mark.parametrize("op", ["deform_roi_pool", "deform_ps_roi_pool"])
def test_fast_kernel_channel_paths_match_reference(op, per_group, dtype):
    """The Numba kernels index few channels per channel run element by element and take channel
    slices from 8 on: both paths equal the reference, output and every gradient (input,
    offsets, mask): to 1e-10 in float64, to 1e-4 of the scale in float32."""
    ps = op == "deform_ps_roi_pool"
    classes = 3 if ps else 1
    c_out = per_group * classes
    x, rois, offset, mask = _inputs(c_out, (2, 3), ps=ps, classes=classes, seed=21, dtype=dtype)
    grad = torch.randn(len(rois), c_out, 2, 3, generator=torch.Generator().manual_seed(5))
    grad = grad.to(dtype)
    results = []
    for name in BACKENDS:
        leaves = [
            t.clone().requires_grad_(True) for t in ((x, offset) if ps else (x, offset, mask))
        ]
        with use_backend(name):
            if ps:
                out = deform_ps_roi_pool(leaves[0], rois, leaves[1], (2, 3), SCALE, 2, 0.1)
            else:
                out = deform_roi_pool(leaves[0], rois, leaves[1], (2, 3), SCALE, -1, 0.1, leaves[2])
            results.append((out, *torch.autograd.grad(out, leaves, grad)))
    for a, b in zip(*results, strict=True):
        if dtype == torch.float64:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        else:
            assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item())
