"""The CPU deform_conv2d's block products: the 1x1-convolution route (more than one thread), the
grid route (one thread, float32), and the ``torch.mm`` route give the same forward rows,
columns' gradient and weight gradient, for each conv-group count, kernel shape, dtype and way
the backward reads the output gradient."""

import pytest
import torch

from torchdcn.ops import _deform_conv_cpu as cpu
from torchdcn.ops import deform_conv2d, use_backend
from torchdcn.ops._deform_conv_cpu import _Product


def _mm_reference(w2, groups, bias, cols, g_rows):
    """Plain per-group products in float64: (rows, g_cols, g_w)."""
    co, kc = w2.shape[0] // groups, w2.shape[1]
    w2, cols, g_rows = w2.double(), cols.double(), g_rows.double()
    rows, g_cols, g_w = [], [], []
    for q in range(groups):
        w, c, g = (
            w2[q * co : (q + 1) * co],
            cols[:, q * kc : (q + 1) * kc],
            g_rows[:, q * co : (q + 1) * co],
        )
        rows.append(c @ w.t())
        g_cols.append(g @ w)
        g_w.append(g.t() @ c)
    rows = torch.cat(rows, 1)
    if bias is not None:
        rows = rows + bias.double()
    return rows, torch.cat(g_cols, 1), torch.cat(g_w, 0)


def _grid(cols, rows, wo, groups, kernel):
    """Columns ``[rows * wo, (q, i, j, c')]`` in the grid layout ``[rows, kh, wo, kw, (q, c')]``,
    seen as ``[rows, wo, width]`` as the forward passes them."""
    kh, kw = kernel
    cq = cols.shape[1] // (groups * kh * kw)
    grid = cols.view(rows, wo, groups, kh, kw, cq).permute(0, 3, 1, 4, 2, 5).contiguous()
    return grid.view(rows, wo, -1)


@pytest.mark.parametrize("route", ["conv", "mm", "grid"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("kernel", [(3, 3), (2, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows_layout", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_products_match_plain_matrix_products(route, groups, kernel, dtype, rows_layout, with_bias):
    gen = torch.Generator().manual_seed(groups)
    rows_n, wo = 5, 7
    c_out, kc, p = 6 * groups, kernel[0] * kernel[1] * 3, rows_n * wo
    w2 = torch.randn(c_out, kc, generator=gen, dtype=dtype)
    bias = torch.randn(c_out, generator=gen, dtype=dtype) if with_bias else None
    cols = torch.randn(p, groups * kc, generator=gen, dtype=dtype)
    g_rows = torch.randn(p, c_out, generator=gen, dtype=dtype)
    product = _Product(w2, groups, bias, kernel, route=route)
    assert product.route == route and product.grid == (route == "grid")
    given = _grid(cols, rows_n, wo, groups, kernel) if product.grid else cols.view(rows_n, wo, -1)
    rows = product.forward(given)
    assert rows.shape == (p, c_out) and rows.dtype == dtype and rows.stride(1) == 1
    g_cols = torch.full_like(cols, float("nan"))  # every element must be written
    if rows_layout:
        g_out = g_rows
    else:  # a segment of an NCHW gradient [C_out, H*W]: a strided view, read in place
        nchw = torch.randn(c_out, p + 11, generator=gen, dtype=dtype)
        nchw[:, 5 : 5 + p] = g_rows.t()
        g_out = nchw[:, 5 : 5 + p]
    product.grad_columns(g_out, g_cols, rows=rows_layout)
    product.grad_weight(g_out, cols, rows=rows_layout)
    want_rows, want_g_cols, want_g_w = _mm_reference(w2, groups, bias, cols, g_rows)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rows.double(), want_rows, **tol)
    torch.testing.assert_close(g_cols.double(), want_g_cols, **tol)
    torch.testing.assert_close(product.g_w.double(), want_g_w, **tol)
    # a second block accumulates into the weight gradient
    product.grad_weight(g_rows, cols, rows=True)
    torch.testing.assert_close(product.g_w.double(), 2 * want_g_w, **tol)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch.backends.mkldnn.flags on CPU
def test_default_route_follows_torch_threads_dtype_and_mkldnn():
    """More than one thread: the 1x1 convolution; one thread: the grid for float32 column blocks
    of ``GRID_BYTES`` or more with mkldnn on, ``torch.mm`` for smaller blocks, float64 or with
    mkldnn off (where the grid would be im2col + GEMM)."""
    w2, w2_64 = torch.randn(4, 9), torch.randn(4, 9, dtype=torch.float64)
    big, small = cpu.GRID_BYTES, cpu.GRID_BYTES - 1
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert _Product(w2_64, 1, None, (3, 3), block=big).route == "mm"
        with torch.backends.mkldnn.flags(enabled=False):
            assert _Product(w2, 1, None, (3, 3), block=big).route == "mm"
        with torch.backends.mkldnn.flags(enabled=True):
            want = "grid" if torch.backends.mkldnn.is_available() else "mm"
            assert _Product(w2, 1, None, (3, 3), block=big).route == want
            assert _Product(w2, 1, None, (3, 3), block=small).route == "mm"
        torch.set_num_threads(2)
        assert _Product(w2, 1, None, (3, 3)).route == "conv"
        assert _Product(w2_64, 1, None, (3, 3)).route == "conv"
    finally:
        torch.set_num_threads(before)


def test_unknown_route_is_refused():
    with pytest.raises(ValueError, match="route must be"):
        _Product(torch.randn(4, 9), 1, None, (3, 3), route="gemm")


def _layer(n, seed):
    """``(x, offset, weight, bias, mask, grad)`` of a layer with 2 conv groups and 2 offset
    groups, 8 -> 6 channels on ``n`` images of 7 x 9, float32."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, 7, 9, generator=gen)
    offset = 2 * torch.randn(n, 2 * 2 * 9, 7, 9, generator=gen)
    mask = torch.rand(n, 2 * 9, 7, 9, generator=gen)
    weight = torch.randn(6, 4, 3, 3, generator=gen) / 6
    bias = torch.randn(6, generator=gen)
    return x, offset, weight, bias, mask, torch.randn(n, 6, 7, 9, generator=gen)


def _output_and_grads(x, offset, weight, bias, mask, grad):
    """The op's output and its five gradients (padding 1) on the current backend."""
    leaves = [t.clone().requires_grad_() for t in (x, offset, weight, bias, mask)]
    out = deform_conv2d(*leaves[:4], padding=1, mask=leaves[4])
    return (out, *torch.autograd.grad(out, leaves, grad))


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch.backends.mkldnn.flags on CPU
@pytest.mark.parametrize("blocks", ["one", "2+1 images"])
@pytest.mark.parametrize("mkldnn", [True, False], ids=["onednn", "no-mkldnn"])
@pytest.mark.parametrize("route", ["mm", "conv", "grid"])
def test_op_on_each_product_route_matches_reference(route, mkldnn, blocks, monkeypatch):
    """deform_conv2d (2 conv groups, 2 offset groups, mask, bias, float32) on each product route,
    also with PyTorch's mkldnn backend switched off (the convolutions then run on
    ``_slow_conv2d``), in one block or in blocks of two whole images and one (a last block of
    fewer images, seen as a smaller batch of grid images): output and every gradient as the
    reference backend's."""
    if blocks != "one":  # an image: 7 rows of 9 positions x 72 columns x 4 bytes (backward 2x)
        for name in ("BLOCK_BYTES", "ONE_THREAD_BLOCK_BYTES"):
            monkeypatch.setattr(cpu, name, 2 * 7 * 9 * 72 * 4)
        assert cpu._blocks(3, 7, 9 * 72 * 4) == ([(0, 14), (14, 21)], 2)
    tensors = _layer(3, seed=7)
    results = []
    before = cpu.PRODUCTS
    try:
        for backend in ("reference", "numba"):
            cpu.PRODUCTS = route
            with use_backend(backend), torch.backends.mkldnn.flags(enabled=mkldnn):
                results.append(_output_and_grads(*tensors))
    finally:
        cpu.PRODUCTS = before
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_one_thread_blocks_of_whole_images_are_smaller():
    """On one Numba thread, whole-image blocks take about ``ONE_THREAD_BLOCK_BYTES``, more
    threads keep ``BLOCK_BYTES`` (16 MiB); an image too big for the small block is cut into row
    blocks of ``BLOCK_BYTES`` either way, and a smaller ``BLOCK_BYTES`` still wins."""
    import numba

    row = 12 * 9 * 32 * 4  # one output row of (N, 32, 12x12) columns, 13.5 KiB
    big_row = 50 * 9 * 256 * 4  # (1, 256, 38x50): 16.7 MiB an image, 36 rows in 16 MiB
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        blocks, per_block = cpu._blocks(64, 12, row)
        assert 1 <= per_block == cpu.ONE_THREAD_BLOCK_BYTES // (12 * row) < 64
        assert blocks == [(t, min(768, t + 12 * per_block)) for t in range(0, 768, 12 * per_block)]
        assert cpu._blocks(1, 38, big_row) == ([(0, 36), (36, 38)], 0)
        old = cpu.BLOCK_BYTES
        try:
            cpu.BLOCK_BYTES = 4096
            assert cpu._blocks(2, 12, row)[1] == 0  # the tests' row-block route
        finally:
            cpu.BLOCK_BYTES = old
        if before >= 2:
            numba.set_num_threads(2)
            assert cpu._blocks(64, 12, row) == ([(0, 768)], 64)
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("chunks", ["one chunk", "chunks of 2 images"])
def test_auto_route_takes_the_grid_inside_the_op(chunks, monkeypatch):
    """On one thread the op's default ("auto") route takes the grid for blocks of
    ``GRID_BYTES`` or more (lowered here so small tensors reach it) and ``torch.mm`` below:
    output and gradients as the reference backend's, also with the batch cut into chunks by the
    workspace limit (the route is chosen once per call, from the first chunk's first block)."""
    import numba

    from torchdcn.ops import set_workspace_limit
    from torchdcn.ops._backend import _workspace_bytes

    routes = []
    init = cpu._Product.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        routes.append(self.route)

    monkeypatch.setattr(cpu._Product, "__init__", spy)
    tensors = _layer(5, seed=3)
    threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        torch.set_num_threads(1)
        if chunks != "one chunk":  # 2 padded channels-last images (+ backward accumulators)
            set_workspace_limit(2 * 8 * 9 * 11 * 4)
        for grid_bytes, want in ((1, "grid"), (1 << 40, "mm")):
            monkeypatch.setattr(cpu, "GRID_BYTES", grid_bytes)
            results = []
            for backend in ("reference", "numba"):
                with use_backend(backend):
                    results.append(_output_and_grads(*tensors))
            assert routes[-2:] == [want, "mm"], routes  # forward, then backward
            for a, b in zip(*results, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    finally:
        set_workspace_limit(_workspace_bytes)
        torch.set_num_threads(threads[0])
        numba.set_num_threads(threads[1])
