"""deform_conv2d: an independent loop reference, gradients, SPEC identities, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from cpu_routes import CPU_ROUTES, cpu_route

from torchdcn.ops import _deform_conv_cpu, deform_conv2d, set_workspace_limit, use_backend

KERNELS = ("numba", "reference")


# ---------------------------------------------------------------------------------------------
# A plainly written reference: one output value at a time, straight from SPEC sections 1-3.


def _sample(plane: torch.Tensor, y: float, x: float) -> float:
    """v1 Eq. 3-4 with zero padding: sum over the integer grid of max(0, 1-|dy|) max(0, 1-|dx|)."""
    h, w = plane.shape
    if not (-1 < y < h and -1 < x < w):
        return 0.0
    total = 0.0
    for qy in (math.floor(y), math.floor(y) + 1):
        for qx in (math.floor(x), math.floor(x) + 1):
            if 0 <= qy < h and 0 <= qx < w:
                total += (
                    max(0.0, 1 - abs(qy - y)) * max(0.0, 1 - abs(qx - x)) * float(plane[qy, qx])
                )
    return total


def loop_deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask):
    n, c_in, _, _ = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    groups = c_in // c_per_group
    k = kh * kw
    off_groups = offset.shape[1] // (2 * k)
    ho, wo = offset.shape[2:]
    out = torch.zeros(n, c_out, ho, wo, dtype=torch.float64)
    for b, co, oy, ox in itertools.product(range(n), range(c_out), range(ho), range(wo)):
        g = co // (c_out // groups)
        acc = 0.0 if bias is None else float(bias[co])
        for ci in range(c_per_group):
            c = g * c_per_group + ci
            og = c // (c_in // off_groups)
            for i, j in itertools.product(range(kh), range(kw)):
                kk = i * kw + j
                y = (
                    oy * stride[0]
                    - padding[0]
                    + i * dilation[0]
                    + float(offset[b, og * 2 * k + 2 * kk, oy, ox])
                )
                xx = (
                    ox * stride[1]
                    - padding[1]
                    + j * dilation[1]
                    + float(offset[b, og * 2 * k + 2 * kk + 1, oy, ox])
                )
                m = 1.0 if mask is None else float(mask[b, og * k + kk, oy, ox])
                acc += float(weight[co, ci, i, j]) * _sample(x[b, c], y, xx) * m
        out[b, co, oy, ox] = acc
    return out


# (N, C_in, C_out, H, W, kernel, stride, padding, dilation, groups, offset_groups, mask)
CONFIGS = [
    (2, 4, 6, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, False),
    (1, 4, 4, 7, 6, (3, 3), (2, 2), (1, 1), (1, 1), 2, 1, True),
    (2, 6, 4, 7, 7, (3, 3), (1, 1), (2, 2), (2, 2), 1, 3, True),
    (1, 4, 2, 6, 8, (2, 3), (1, 2), (0, 1), (1, 1), 2, 2, False),
    (1, 6, 6, 6, 6, (3, 1), (1, 1), (2, 0), (1, 1), 3, 2, True),
    (1, 4, 3, 5, 5, (1, 1), (1, 1), (0, 0), (1, 1), 1, 4, True),
]


def _make(cfg, dtype=torch.float64, scale=2.0, seed=0):
    n, c_in, c_out, h, w, ks, st, pd, dl, groups, og, use_mask = cfg
    gen = torch.Generator().manual_seed(seed)
    ho = (h + 2 * pd[0] - dl[0] * (ks[0] - 1) - 1) // st[0] + 1
    wo = (w + 2 * pd[1] - dl[1] * (ks[1] - 1) - 1) // st[1] + 1
    k = ks[0] * ks[1]
    x = torch.randn(n, c_in, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(c_out, c_in // groups, *ks, generator=gen, dtype=dtype)
    bias = torch.randn(c_out, generator=gen, dtype=dtype)
    offset = scale * torch.randn(n, 2 * og * k, ho, wo, generator=gen, dtype=dtype)
    mask = torch.rand(n, og * k, ho, wo, generator=gen, dtype=dtype) if use_mask else None
    return x, offset, weight, bias, mask, st, pd, dl


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_matches_loop_reference(kernel, cfg):
    x, offset, weight, bias, mask, st, pd, dl = _make(cfg)
    expected = loop_deform_conv2d(x, offset, weight, bias, st, pd, dl, mask)
    with use_backend(kernel):
        got = deform_conv2d(x, offset, weight, bias, st, pd, dl, mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("route", ["reference", *CPU_ROUTES])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_gradcheck(route, cfg):
    """float64 gradcheck of every argument, on the reference and every CPU route
    (tests/cpu_routes.py)."""
    x, offset, weight, bias, mask, st, pd, dl = _make(cfg, scale=1.5)
    # keep sampling points off the integer grid, where bilinear sampling has kinks
    offset = offset + 0.25
    inputs = [t.clone().requires_grad_() for t in (x, offset, weight, bias)]
    if mask is not None:
        inputs.append(mask.clone().requires_grad_())

    def f(x, offset, weight, bias, mask=None):
        return deform_conv2d(x, offset, weight, bias, st, pd, dl, mask)

    # fast mode checks random projections of the Jacobian: any wrong entry shows, at a fraction
    # of the cost; the small cases below run the full check
    with cpu_route(route):
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck_full_jacobian(kernel):
    cfg = (1, 4, 2, 4, 5, (3, 2), (2, 1), (1, 0), (1, 2), 2, 2, True)
    x, offset, weight, bias, mask, st, pd, dl = _make(cfg, scale=1.5)
    inputs = [t.clone().requires_grad_() for t in (x, offset + 0.25, weight, bias, mask)]

    def f(x, offset, weight, bias, mask):
        return deform_conv2d(x, offset, weight, bias, st, pd, dl, mask)

    with use_backend(kernel):
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck_integer_and_outside_positions(kernel):
    """Offsets on the integer grid and far outside the map: gradients of input, weight, mask
    and bias are smooth there and must pass gradcheck; outside points give zero offset grad."""
    cfg = (1, 2, 3, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True)
    x, offset, weight, bias, mask, st, pd, dl = _make(cfg)
    offset = torch.randint(-2, 3, offset.shape).double()
    offset[0, 0, 0, 0] = -7.0  # beyond the top border
    offset[0, 3, 2, 2] = 9.0  # beyond the right border
    offset[0, 4, 1, 1] = -2.0  # y = -2 at output (1, 1), kernel point 2: all corners off the map
    x, weight, bias, mask = (t.requires_grad_() for t in (x, weight, bias, mask))

    def f(x, weight, bias, mask):
        return deform_conv2d(x, offset, weight, bias, st, pd, dl, mask)

    with use_backend(kernel):
        assert torch.autograd.gradcheck(f, (x, weight, bias, mask))
        off = offset.clone().requires_grad_()
        out = deform_conv2d(x, off, weight, bias, st, pd, dl, mask)
        (g_off,) = torch.autograd.grad(out.sum(), off)
    assert g_off[0, 0, 0, 0] == 0 and g_off[0, 1, 0, 0] == 0
    assert g_off[0, 2, 2, 2] == 0 and g_off[0, 3, 2, 2] == 0
    assert g_off[0, 4, 1, 1] == 0 and g_off[0, 5, 1, 1] == 0


@pytest.mark.parametrize("kernel", KERNELS)
def test_offset_gradient_at_integer_positions_is_right_derivative(kernel):
    """On the grid the derivative is one-sided (the corners are floor(y), floor(y)+1)."""
    cfg = (1, 2, 2, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True)
    x, offset, weight, bias, mask, st, pd, dl = _make(cfg)
    offset = torch.randint(-1, 2, offset.shape).double().requires_grad_()
    with use_backend(kernel):
        out = deform_conv2d(x, offset, weight, bias, st, pd, dl, mask)
        (grad,) = torch.autograd.grad(out.sum(), offset)
        eps = 1e-7
        for idx in [(0, 0, 2, 2), (0, 5, 1, 3), (0, 8, 3, 0), (0, 17, 4, 4)]:
            bumped = offset.detach().clone()
            bumped[idx] += eps
            up = deform_conv2d(x, bumped, weight, bias, st, pd, dl, mask).sum()
            right = (up - out.detach().sum()) / eps
            assert abs(float(right) - float(grad[idx])) < 1e-5, idx


# ---------------------------------------------------------------------------------------------
# SPEC identities


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("groups", [1, 2])
def test_zero_offsets_equal_conv2d(kernel, groups):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 7, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, 3, 3, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    off = torch.zeros(2, 18, 5, 3, dtype=torch.float64)
    ones = torch.ones(2, 9, 5, 3, dtype=torch.float64)
    expected = F.conv2d(x, w, b, stride=2, padding=1, dilation=(1, 2), groups=groups)
    with use_backend(kernel):
        v1 = deform_conv2d(x, off, w, b, stride=2, padding=1, dilation=(1, 2))
        v2 = deform_conv2d(x, off, w, b, stride=2, padding=1, dilation=(1, 2), mask=ones)
    torch.testing.assert_close(v1, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(v2, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("d", [2, 3])
def test_dilation_pattern_equals_atrous_conv(kernel, d):
    """v1 Fig. 1c: offsets (i-1)(d-1), (j-1)(d-1) turn a 3x3 conv into a dilation-d conv."""
    torch.manual_seed(1)
    x = torch.randn(1, 3, 11, 10, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    i, j = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
    pattern = torch.stack([(i - 1) * (d - 1), (j - 1) * (d - 1)], -1).reshape(18).double()
    off = pattern.view(1, 18, 1, 1).expand(1, 18, 11, 10).contiguous()
    with use_backend(kernel):
        got = deform_conv2d(x, off, w, padding=1)
    torch.testing.assert_close(got, F.conv2d(x, w, padding=d, dilation=d), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
def test_zero_mask_gives_bias(kernel):
    x, offset, weight, bias, mask, st, pd, dl = _make(CONFIGS[2])
    with use_backend(kernel):
        out = deform_conv2d(x, offset, weight, bias, st, pd, dl, torch.zeros_like(mask))
    torch.testing.assert_close(out, bias.view(1, -1, 1, 1).expand_as(out), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Kernels against each other, chunking, layouts, dtypes


@pytest.mark.parametrize("cfg", CONFIGS)
def test_numba_matches_reference_float32_with_gradients(cfg):
    x, offset, weight, bias, mask, st, pd, dl = _make(cfg, dtype=torch.float32, seed=3)
    results = []
    for kernel in KERNELS:
        ts = [
            t.clone().requires_grad_()
            for t in (x, offset, weight, bias) + ((mask,) if mask is not None else ())
        ]
        with use_backend(kernel):
            out = deform_conv2d(*ts[:4], st, pd, dl, ts[4] if mask is not None else None)
            # a random upstream gradient: an all-ones one hides transposed or misread rows
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
            grads = torch.autograd.grad(out, ts, g)
        results.append((out, *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
def test_batch_chunking_gives_same_result(kernel):
    x, offset, weight, bias, mask, st, pd, dl = _make(
        (5, 4, 4, 6, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, True)
    )
    x.requires_grad_()
    with use_backend(kernel):
        full = deform_conv2d(x, offset, weight, bias, st, pd, dl, mask)
        (g_full,) = torch.autograd.grad(full.sum(), x)
        set_workspace_limit(1)  # one image per chunk
        chunked = deform_conv2d(x, offset, weight, bias, st, pd, dl, mask)
        (g_chunked,) = torch.autograd.grad(chunked.sum(), x)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_chunked, g_full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_batch(kernel):
    x = torch.randn(0, 4, 5, 5, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, requires_grad=True)
    off = torch.zeros(0, 18, 5, 5, requires_grad=True)
    mask = torch.zeros(0, 9, 5, 5, requires_grad=True)
    with use_backend(kernel):
        out = deform_conv2d(x, off, w, padding=1, mask=mask)
        assert out.shape == (0, 3, 5, 5)
        gx, goff, gw, gm = torch.autograd.grad(out.sum(), (x, off, w, mask))
    assert gx.shape == x.shape and goff.shape == off.shape and gm.shape == mask.shape
    assert torch.equal(gw, torch.zeros_like(w))


@pytest.mark.parametrize("kernel", KERNELS)
def test_non_contiguous_and_channels_last(kernel):
    x, offset, weight, bias, mask, st, pd, dl = _make(CONFIGS[0], dtype=torch.float32)
    with use_backend(kernel):
        expected = deform_conv2d(x, offset, weight, bias, st, pd, dl, mask)
        cl = deform_conv2d(
            x.to(memory_format=torch.channels_last),
            offset.to(memory_format=torch.channels_last),
            weight.to(memory_format=torch.channels_last),
            bias,
            st,
            pd,
            dl,
            mask,
        )
        x_t = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, strided
        off_nc = torch.cat([offset, offset], 1)[:, : offset.shape[1]]
        strided = deform_conv2d(x_t, off_nc, weight, bias, st, pd, dl, mask)
    torch.testing.assert_close(cl, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(strided, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(dtype):
    """N = 1 (CONFIGS[1]), gradients from ``sum()``: values against the reference backend in
    float32 on the same rounded inputs (rounded once to ``dtype``)."""
    x, offset, weight, bias, mask, st, pd, dl = _make(CONFIGS[1], dtype=torch.float32)
    args = [t.to(dtype) for t in (x, offset, weight, bias, mask)]
    out = deform_conv2d(*args[:4], st, pd, dl, args[4])
    assert out.dtype == dtype
    expected = deform_conv2d(*(t.float() for t in args[:4]), st, pd, dl, args[4].float())
    torch.testing.assert_close(out.float(), expected.to(dtype).float(), rtol=0, atol=0)
    leaves = [t.clone().requires_grad_() for t in args]
    got = torch.autograd.grad(deform_conv2d(*leaves[:4], st, pd, dl, leaves[4]).sum(), leaves)
    ref_leaves = [t.float().requires_grad_() for t in args]
    with use_backend("reference"):
        ref_out = deform_conv2d(*ref_leaves[:4], st, pd, dl, ref_leaves[4])
        want = torch.autograd.grad(ref_out.sum(), ref_leaves)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        assert (g.float() - w).abs().max().item() <= tol * max(1.0, w.abs().max().item())


def test_autocast_cpu_bfloat16():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 6)
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    off = torch.randn(1, 18, 6, 6).bfloat16()  # e.g. from an earlier autocast conv
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_conv2d(x, off, w, padding=1)
    assert out.dtype == torch.bfloat16
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out.float() * g).sum().backward()
    assert w.grad.dtype == torch.float32
    ref_w = w.detach().bfloat16().float().requires_grad_()
    with use_backend("reference"):
        ref = deform_conv2d(x.bfloat16().float(), off.float(), ref_w, padding=1)
        (ref_gw,) = torch.autograd.grad(ref, ref_w, g)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    # the weight gradient is computed from bfloat16 values: relative to its scale
    assert (w.grad - ref_gw).abs().max() <= 2e-2 * ref_gw.abs().max()


# ---------------------------------------------------------------------------------------------
# NaN / inf offsets


@pytest.mark.parametrize("kernel", KERNELS)
def test_nan_and_inf_offsets_read_nothing(kernel):
    x, offset, weight, bias, mask, st, pd, dl = _make(CONFIGS[0])
    bad = offset.clone()
    bad[0, 0, 1, 1] = float("nan")
    bad[0, 3, 2, 2] = float("inf")
    bad[1, 4, 0, 3] = -float("inf")
    far = offset.clone()  # the same points sent far outside the map
    far[0, 0, 1, 1] = 1e6
    far[0, 3, 2, 2] = 1e6
    far[1, 4, 0, 3] = -1e6
    bad.requires_grad_()
    with use_backend(kernel):
        out = deform_conv2d(x, bad, weight, bias, st, pd, dl, mask)
        (g,) = torch.autograd.grad(out.sum(), bad)
        expected = deform_conv2d(x, far, weight, bias, st, pd, dl, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert torch.isfinite(g).all()
    assert g[0, 0, 1, 1] == 0 and g[0, 3, 2, 2] == 0 and g[1, 4, 0, 3] == 0


# ---------------------------------------------------------------------------------------------
# torch.library registration and torch.compile


def test_opcheck():
    x, offset, weight, bias, mask, st, pd, dl = _make(CONFIGS[1], dtype=torch.float32)
    for m, b in ((mask, bias), (None, None)):
        args = (
            x.requires_grad_(),
            offset.requires_grad_(),
            m,
            weight.requires_grad_(),
            b,
            *st,
            *pd,
            *dl,
        )
        torch.library.opcheck(torch.ops.torchdcn.deform_conv2d.default, args)


class _OffsetNet(torch.nn.Module):
    """A conv predicting offsets and mask, then the op (independent of torchdcn.nn)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.pre = torch.nn.Conv2d(3, 4, 1)
        self.pred = torch.nn.Conv2d(4, 27, 3, padding=1)
        self.weight = torch.nn.Parameter(torch.randn(4, 4, 3, 3, generator=gen) / 6)
        with torch.no_grad():
            self.pred.weight.normal_(0, 0.1, generator=gen)

    def forward(self, x):
        h = self.pre(x)
        p = self.pred(h)
        return deform_conv2d(h, p[:, :18], self.weight, padding=1, mask=p[:, 18:].sigmoid())


def _compiled_matches_eager(backend):
    """Output and every parameter's gradient of the compiled graph against eager."""
    torch.manual_seed(0)
    net = _OffsetNet()
    x = torch.randn(2, 3, 8, 8)
    g = torch.randn(2, 4, 8, 8)
    compiled = torch.compile(net, fullgraph=True, backend=backend)
    results = []
    for f in (compiled, net):
        out = f(x)
        results.append((out, *torch.autograd.grad(out, list(net.parameters()), g)))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_no_graph_break():
    _compiled_matches_eager("aot_eager")


@pytest.mark.slow
def test_compile_inductor():
    _compiled_matches_eager("inductor")


# ---------------------------------------------------------------------------------------------
# Bad input


def _good():
    return {
        "input": torch.randn(2, 4, 6, 6),
        "offset": torch.randn(2, 18, 6, 6),
        "weight": torch.randn(3, 4, 3, 3),
        "bias": torch.randn(3),
        "padding": 1,
        "mask": torch.rand(2, 9, 6, 6),
    }


BAD = [
    (
        "offset channels",
        {"offset": torch.randn(2, 17, 6, 6)},
        ValueError,
        ["offset", "(2, 17, 6, 6)"],
    ),
    (
        "offset groups do not divide C",
        {"offset": torch.randn(2, 54, 6, 6)},
        ValueError,
        ["offset", "C_in=4"],
    ),
    (
        "offset spatial",
        {"offset": torch.randn(2, 18, 5, 6)},
        ValueError,
        ["offset", "(2, 18, 5, 6)", "(2, 18, 6, 6)"],
    ),
    ("offset batch", {"offset": torch.randn(1, 18, 6, 6)}, ValueError, ["offset", "(1, 18, 6, 6)"]),
    (
        "mask channels",
        {"mask": torch.rand(2, 18, 6, 6)},
        ValueError,
        ["mask", "(2, 18, 6, 6)", "(2, 9, 6, 6)"],
    ),
    ("mask spatial", {"mask": torch.rand(2, 9, 6, 5)}, ValueError, ["mask", "(2, 9, 6, 5)"]),
    (
        "weight channels",
        {"weight": torch.randn(3, 3, 3, 3)},
        ValueError,
        ["weight", "(3, 3, 3, 3)", "4"],
    ),
    (
        "groups vs C_out",
        {"weight": torch.randn(3, 2, 3, 3)},
        ValueError,
        ["groups=2", "3 output channels"],
    ),
    ("bias shape", {"bias": torch.randn(4)}, ValueError, ["bias", "(4,)", "(3,)"]),
    ("input 3-D", {"input": torch.randn(4, 6, 6)}, ValueError, ["input", "3-D", "(4, 6, 6)"]),
    ("weight 2-D", {"weight": torch.randn(3, 36)}, ValueError, ["weight", "2-D"]),
    (
        "dtype",
        {"weight": torch.randn(3, 4, 3, 3, dtype=torch.float64)},
        TypeError,
        ["weight", "float64", "float32"],
    ),
    (
        "int tensor",
        {"input": torch.ones(2, 4, 6, 6, dtype=torch.long)},
        TypeError,
        ["input", "int64"],
    ),
    ("not a tensor", {"offset": [[0.0]]}, TypeError, ["offset", "list"]),
    ("stride", {"stride": 0}, ValueError, ["stride"]),
    ("stride type", {"stride": 1.5}, TypeError, ["stride"]),
    ("too small", {"padding": 0, "input": torch.randn(2, 4, 2, 2)}, ValueError, ["too small"]),
]


@pytest.mark.parametrize("case,change,exc,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_argument_and_shapes(case, change, exc, words):
    kwargs = _good()
    kwargs.update(change)
    with pytest.raises(exc) as info:
        deform_conv2d(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_device_mismatch_is_reported():
    kwargs = _good()
    kwargs["offset"] = kwargs["offset"].to("meta")
    with pytest.raises(ValueError, match="offset is on meta"):
        deform_conv2d(**kwargs)


@pytest.mark.parametrize("groups", [1, 2], ids=["groups1", "groups2"])
@pytest.mark.parametrize("route", CPU_ROUTES)
def test_cpu_routes_agree_with_reference(route, groups):
    """Every CPU route (whole-image blocks, row blocks inside images, one thread; see
    tests/cpu_routes.py) against the reference, float32, with conv groups and bias
    (tests/ops/test_deform_conv_layouts.py runs every gradient layout on every route)."""
    cfg = (3, 6, 4, 7, 6, (3, 3), (1, 1), (1, 1), (1, 1), groups, 2, True)
    x, offset, weight, bias, mask, st, pd, dl = _make(cfg, dtype=torch.float32, seed=5)
    g = torch.randn(3, 4, 7, 6, generator=torch.Generator().manual_seed(6))
    results = []
    for kernel in (route, "reference"):
        ts = [t.clone().requires_grad_() for t in (x, offset, weight, bias, mask)]
        with cpu_route(kernel):
            out = deform_conv2d(*ts[:4], st, pd, dl, ts[4])
            results.append((out, *torch.autograd.grad(out, ts, g)))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# backward blocks of two whole images of the test below: 2 images x (columns and their gradient)
# x 8 rows x 8 positions x (2 groups x 9 points x 4 channels) x 4 bytes
_TWO_IMAGES = 2 * 2 * 8 * 8 * 72 * 4


@pytest.mark.parametrize(
    "route, block_bytes",
    [(route, None) for route in CPU_ROUTES]
    + [("numba", _TWO_IMAGES), ("numba-1thread", _TWO_IMAGES)],
    ids=[*CPU_ROUTES, "numba-2images", "numba-1thread-2images"],
)
def test_cpu_routes_points_outside_in_later_blocks(route, block_bytes, monkeypatch):
    """Rows whose every point lies outside the map (far offsets, NaN) in images after ones that
    read it: the backward samples the columns for the weight gradient in its gradient pass, and
    one buffer serves every block of a call (blocks of rows, of two whole images with a thread
    per image or per-thread accumulators), so a point outside must write zeros into every run of
    its offset group (2 conv groups, 1 offset group: 2 runs), not leave the previous block's
    columns for the weight gradient."""
    cfg = (4, 8, 6, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 2, 1, True)
    x, offset, weight, bias, mask, st, pd, dl = _make(cfg, dtype=torch.float32, seed=9)
    if block_bytes is not None:  # the blocks this test means: two whole images each
        monkeypatch.setattr(_deform_conv_cpu, "BLOCK_BYTES", block_bytes)
        assert _deform_conv_cpu._blocks(4, 8, _TWO_IMAGES // 16) == ([(0, 16), (16, 32)], 2)
        monkeypatch.undo()
    offset = offset.clone()
    offset[2, :, 4:] = 1e6  # image 2: the lower rows read nothing
    offset[3, :, :3] = float("nan")  # image 3: the upper rows read nothing
    offset[3, 6:10, 6] = -1e6  # and two points of each position of a row that reads
    g = torch.randn(4, 6, 8, 8, generator=torch.Generator().manual_seed(10))
    results = []
    for kernel in (route, "reference"):
        ts = [t.clone().requires_grad_() for t in (x, offset, weight, bias, mask)]
        with cpu_route(kernel):
            if block_bytes is not None and kernel != "reference":
                monkeypatch.setattr(_deform_conv_cpu, "BLOCK_BYTES", block_bytes)
            out = deform_conv2d(*ts[:4], st, pd, dl, ts[4])
            results.append((out, *torch.autograd.grad(out, ts, g)))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("route", CPU_ROUTES)
def test_cpu_deterministic_mode_repeats_bitwise(route):
    """The CPU kernels are deterministic whether or not ``torch.use_deterministic_algorithms``
    is on (they do not consult it): every output row is written by one thread, the input
    gradient is summed per image by one thread or in per-thread partial sums over fixed row runs
    added in a fixed order, and the products (oneDNN's 1x1 convolution and its weight backward,
    ``torch.mm``) partition their work statically for a given thread count."""
    torch.use_deterministic_algorithms(True)
    cfg = (3, 8, 6, 12, 11, (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, True)
    x, offset, weight, bias, mask, st, pd, dl = _make(cfg, dtype=torch.float32, seed=8)
    g = torch.randn(3, 6, 12, 11, generator=torch.Generator().manual_seed(8))
    runs = []
    for _ in range(3):
        ts = [t.clone().requires_grad_() for t in (x, offset, weight, bias, mask)]
        with cpu_route(route):
            out = deform_conv2d(*ts[:4], st, pd, dl, ts[4])
            runs.append((out, *torch.autograd.grad(out, ts, g)))
    for run in runs[1:]:
        for a, b in zip(run, runs[0], strict=True):
            assert torch.equal(a, b)
