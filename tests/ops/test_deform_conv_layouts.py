"""deform_conv2d gradients for every memory layout an upstream gradient can have, on every CPU
route, against the reference backend in float64 on a dense copy of the same values.

A matrix-product route that read raw pointers (onnxruntime's GEMM, since removed) once took a
gradient that is not a dense row-major buffer (expanded by ``sum()``, a transposed view at
batch 1, channel-major, channels-last) as if it were, giving silently wrong or NaN gradients. Each
case here would have caught that; the CPU routes are those of tests/cpu_routes.py. The Triton
route runs the same cases under the interpreter (tests/ops/test_triton_interpreter.py).
"""

from __future__ import annotations

import functools

import pytest
import torch
from cpu_routes import CPU_ROUTES, cpu_route

from torchdcn.ops import deform_conv2d, set_workspace_limit, use_backend

# C_in, C_out, H, W, kernel, stride, padding, dilation, offset groups: one conv group, two offset
# groups, mask and bias
SHAPE = dict(c_in=4, c_out=5, h=5, w=6, k=3, og=2)
CONV = dict(stride=1, padding=1, dilation=1)
ROUTES = ["reference", *CPU_ROUTES]
KINDS = ["dense", "sum", "sum1", "strided", "channel-major", "channels-last"]


def _inputs(n: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    c_in, c_out, h, w, k, og = (SHAPE[key] for key in ("c_in", "c_out", "h", "w", "k", "og"))
    x = torch.randn(n, c_in, h, w, generator=gen, dtype=torch.float64)
    offset = 2 * torch.randn(n, 2 * og * k * k, h, w, generator=gen, dtype=torch.float64)
    mask = torch.rand(n, og * k * k, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, k, k, generator=gen, dtype=torch.float64) / 6
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64)
    return [t.to(dtype) for t in (x, offset, mask, weight, bias)]


def _upstream(kind: str, n: int, dtype: torch.dtype, seed: int = 1):
    """``(backprop, dense)``: ``backprop(y, leaves)`` returns the gradients of ``leaves`` for an
    output gradient of layout ``kind`` whose values are ``dense`` (contiguous float64)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n, SHAPE["c_out"], SHAPE["h"], SHAPE["w"])
    g = torch.randn(*shape, generator=gen, dtype=torch.float64)
    if kind == "sum":  # y.sum(): ones expanded, every stride 0
        return (lambda y, ts: torch.autograd.grad(y.sum(), ts)), torch.ones(shape).double()
    if kind == "sum1":  # (y.sum(1) * g1).sum(): g1 expanded over channels, stride 0
        g1 = g[:, 0]

        def backprop(y, ts):
            return torch.autograd.grad((y.sum(1) * g1.to(y.dtype)).sum(), ts)

        return backprop, g1[:, None].expand(shape).contiguous()
    gd = g.to(dtype)
    if kind == "dense":
        view = gd
    elif kind == "strided":  # every other column of a wider buffer
        wide = torch.zeros(*shape[:3], 2 * shape[3], dtype=dtype)
        wide[..., ::2] = gd
        view = wide[..., ::2]
    elif kind == "channel-major":  # as after y.transpose(0, 1).contiguous() upstream
        view = gd.transpose(0, 1).contiguous().transpose(0, 1)
    elif kind == "channels-last":
        view = gd.contiguous(memory_format=torch.channels_last)
    else:
        raise AssertionError(kind)
    # (one image moved to channel-major is still contiguous: its batch stride is never used)
    assert kind == "dense" or not view.is_contiguous() or (n <= 1 and kind == "channel-major")
    return (lambda y, ts: torch.autograd.grad(y, ts, view)), gd.double()


@functools.lru_cache(maxsize=16)
def _expected(n: int, kind: str, dtype: torch.dtype):
    """Output and gradients ``(y, d input, d offset, d mask, d weight, d bias)`` of the
    reference backend in float64, on the ``dtype`` values of the inputs and of the upstream
    gradient, the latter as a dense tensor."""
    leaves = [t.double().requires_grad_() for t in _inputs(n, dtype)]
    x, offset, mask, weight, bias = leaves
    _, dense = _upstream(kind, n, dtype)
    with use_backend("reference"):
        y = deform_conv2d(x, offset, weight, bias, mask=mask, **CONV)
        grads = torch.autograd.grad(y, leaves, dense)
    return (y.detach(), *grads)


def _run(route: str, n: int, kind: str, dtype: torch.dtype):
    leaves = [t.requires_grad_() for t in _inputs(n, dtype)]
    x, offset, mask, weight, bias = leaves
    backprop, _ = _upstream(kind, n, dtype)
    with cpu_route(route):
        y = deform_conv2d(x, offset, weight, bias, mask=mask, **CONV)
        grads = backprop(y, leaves)
    return (y.detach(), *grads)


def _assert_matches(got, want, dtype):
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    names = ("output", "input", "offset", "mask", "weight", "bias")
    for name, a, b in zip(names, got, want, strict=True):
        assert a.dtype == dtype, name
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(
            a.double(), b, rtol=tol, atol=tol, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize("one_image", [False, True], ids=["whole-batch", "one-image-chunks"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("route", ROUTES)
def test_upstream_gradient_layouts(route, dtype, n, kind, one_image):
    if one_image:
        set_workspace_limit(1)  # a chunk of one image: N % chunk == 1 for every chunk
    _assert_matches(_run(route, n, kind, dtype), _expected(n, kind, dtype), dtype)


@pytest.mark.parametrize("route", ROUTES)
def test_zero_size_batch(route):
    leaves = [t.requires_grad_() for t in _inputs(0, torch.float32)]
    x, offset, mask, weight, bias = leaves
    with cpu_route(route):
        y = deform_conv2d(x, offset, weight, bias, mask=mask, **CONV)
        gx, goff, gm, gw, gb = torch.autograd.grad(y.sum(), leaves)
    assert y.shape == (0, 5, 5, 6)
    assert gx.shape == x.shape and goff.shape == offset.shape and gm.shape == mask.shape
    assert torch.equal(gw, torch.zeros_like(weight)) and torch.equal(gb, torch.zeros_like(bias))


@pytest.mark.parametrize("route", ROUTES)
def test_input_layouts(route):
    """Inputs that are not dense row-major (channels-last input and weight, a strided offset, an
    expanded mask, a strided bias) give the dense inputs' results."""
    x, offset, mask, weight, bias = _inputs(3, torch.float32)
    mask = mask[:, :, :1, :1].expand_as(mask)  # stride 0 over H and W
    dense = [t.clone().requires_grad_() for t in (x, offset, mask.contiguous(), weight, bias)]
    wide_off = torch.zeros(*offset.shape[:3], 2 * offset.shape[3])
    wide_off[..., 1::2] = offset
    odd = [
        x.contiguous(memory_format=torch.channels_last),
        wide_off[..., 1::2],
        mask,
        weight.contiguous(memory_format=torch.channels_last),
        torch.stack([bias, bias], 1)[:, 1],
    ]
    odd = [t.requires_grad_() if t.is_leaf else t.detach().requires_grad_() for t in odd]
    g = torch.randn(3, 5, 5, 6, generator=torch.Generator().manual_seed(2))
    results = []
    for ts in (dense, odd):
        with cpu_route(route):
            y = deform_conv2d(ts[0], ts[1], ts[3], ts[4], mask=ts[2], **CONV)
            results.append((y, *torch.autograd.grad(y, ts, g)))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 3])
def test_cpu_routes_agree(n):
    """The same float32 computation on every CPU route, with an expanded and a channel-major
    upstream gradient."""
    for kind in ("sum1", "channel-major"):
        first, *rest = (_run(route, n, kind, torch.float32) for route in CPU_ROUTES)
        for other in rest:
            for a, b in zip(first, other, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["float16", "bfloat16", "autocast"])
def test_low_precision_batch_one_values(mode):
    """16-bit tensors compute in float32 (at N = 1 the output gradient's rows are a transposed
    view): output and gradients for a random upstream gradient match the
    float64 reference on the same rounded values."""
    dtype = torch.bfloat16 if mode != "float16" else torch.float16
    x, offset, mask, weight, bias = (t.to(dtype).double() for t in _inputs(1, torch.float32))
    g = torch.randn(1, 5, 5, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
    with use_backend("reference"):
        want_y = deform_conv2d(leaves[0], leaves[1], leaves[3], leaves[4], mask=leaves[2], **CONV)
        want = (want_y, *torch.autograd.grad(want_y, leaves, g))
    if mode == "autocast":  # float32 leaves cast to bfloat16 by autocast (exact: pre-rounded)
        leaves = [t.float().requires_grad_() for t in (x, offset, mask, weight, bias)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = deform_conv2d(leaves[0], leaves[1], leaves[3], leaves[4], mask=leaves[2], **CONV)
    else:
        leaves = [t.to(dtype).requires_grad_() for t in (x, offset, mask, weight, bias)]
        y = deform_conv2d(leaves[0], leaves[1], leaves[3], leaves[4], mask=leaves[2], **CONV)
    assert y.dtype == dtype
    got = (y, *torch.autograd.grad((y.double() * g).sum(), leaves))
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    for a, b in zip(got, want, strict=True):
        # result rounded to 16 bits once: relative to the tensor's scale
        scale = b.abs().max().item()
        assert (a.double() - b).abs().max().item() <= tol * max(scale, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("hw", [(32, 32), (16, 32), (5, 7), (12, 12)], ids=str)
def test_padded_copy_routes(dtype, hw, monkeypatch):
    """The padded channels-last copy pads first when a channel plane is a multiple of
    :data:`PAD_FIRST_BYTES` and copies straight otherwise; both give the same buffer, the route
    taken is the one the rule names, and the op on such planes matches the reference, output and
    every gradient."""
    from torchdcn.ops import _deform_conv_cpu as cpu

    pads = []
    real_pad = cpu.F.pad
    monkeypatch.setattr(cpu.F, "pad", lambda *a, **k: pads.append(1) or real_pad(*a, **k))
    _padded_channels_last = cpu._padded_channels_last
    h, w = hw
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, h, w, generator=gen, dtype=dtype)
    want = torch.zeros(2, h + 2, w + 2, 3, dtype=dtype)
    want[:, 1:-1, 1:-1] = x.permute(0, 2, 3, 1)
    got = _padded_channels_last(x)
    assert got.is_contiguous() and torch.equal(got, want)
    assert bool(pads) == (h * w * x.element_size() % cpu.PAD_FIRST_BYTES == 0)
    assert bool(pads) == (hw in ((32, 32), (16, 32)))
    offset = torch.randn(2, 18, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(4, 3, 3, 3, generator=gen, dtype=dtype) / 5
    grad = torch.randn(2, 4, h, w, generator=gen, dtype=dtype)
    results = []
    for backend in ("reference", "numba"):
        leaves = [t.clone().requires_grad_() for t in (x, offset, weight)]
        with use_backend(backend):
            out = deform_conv2d(leaves[0], leaves[1], leaves[2], padding=1)
            results.append((out, *torch.autograd.grad(out, leaves, grad)))
    tol = 1e-3 if dtype == torch.float32 else 1e-10  # float32: sums of 2 x 32 x 32 terms
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
