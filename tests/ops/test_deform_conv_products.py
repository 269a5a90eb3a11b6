"""The CPU deform_conv2d's block products: the 1x1-convolution route (more than one thread) and
the ``torch.mm`` route (one thread) give the same forward rows, columns' gradient and weight
gradient, for each conv-group count, dtype and way the backward reads the output gradient."""

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


@pytest.mark.parametrize("route", ["conv", "mm"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows_layout", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_products_match_plain_matrix_products(route, groups, dtype, rows_layout, with_bias):
    gen = torch.Generator().manual_seed(groups)
    c_out, kc, p = 6 * groups, 9 * 3, 37
    w2 = torch.randn(c_out, kc, generator=gen, dtype=dtype)
    bias = torch.randn(c_out, generator=gen, dtype=dtype) if with_bias else None
    cols = torch.randn(p, groups * kc, generator=gen, dtype=dtype)
    g_rows = torch.randn(p, c_out, generator=gen, dtype=dtype)
    product = _Product(w2, groups, bias, route=route)
    assert product.conv == (route == "conv")
    rows = product.forward(cols)
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


def test_default_route_follows_torch_threads():
    w2 = torch.randn(4, 9)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert _Product(w2, 1, None).conv is False
        torch.set_num_threads(2)
        assert _Product(w2, 1, None).conv is True
    finally:
        torch.set_num_threads(before)


def test_unknown_route_is_refused():
    with pytest.raises(ValueError, match="route must be"):
        _Product(torch.randn(4, 9), 1, None, route="gemm")


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch.backends.mkldnn.flags on CPU
@pytest.mark.parametrize("mkldnn", [True, False], ids=["onednn", "no-mkldnn"])
@pytest.mark.parametrize("route", ["mm", "conv"])
def test_op_on_each_product_route_matches_reference(route, mkldnn):
    """deform_conv2d (2 conv groups, 2 offset groups, mask, bias, float32) on each product route,
    also with PyTorch's mkldnn backend switched off (the 1x1 convolution then runs on
    ``_slow_conv2d``): output and every gradient as the reference backend's."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 8, 7, 9, generator=gen)
    offset = 2 * torch.randn(3, 2 * 2 * 9, 7, 9, generator=gen)
    mask = torch.rand(3, 2 * 9, 7, 9, generator=gen)
    weight = torch.randn(6, 4, 3, 3, generator=gen) / 6
    bias = torch.randn(6, generator=gen)
    grad = torch.randn(3, 6, 7, 9, generator=gen)
    results = []
    before = cpu.PRODUCTS
    try:
        for backend in ("reference", "numba"):
            cpu.PRODUCTS = route
            leaves = [t.clone().requires_grad_() for t in (x, offset, weight, bias, mask)]
            with use_backend(backend), torch.backends.mkldnn.flags(enabled=mkldnn):
                out = deform_conv2d(*leaves[:4], padding=1, mask=leaves[4])
                results.append((out, *torch.autograd.grad(out, leaves, grad)))
    finally:
        cpu.PRODUCTS = before
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
