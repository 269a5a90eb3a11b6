"""deform_conv2d's arguments as torch's conv2d takes them: C_out = 0, integer-like and string
paddings, channels-last in and out, and TorchScript; and the one scalar rule behind every op's and
detector's number arguments (``_checks.real_scalar``, with ``pair`` built on it)."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cpu_routes import CPU_ROUTES, cpu_route

from torchdcn.ops import deform_conv2d, use_backend
from torchdcn.ops._checks import pair, real_scalar

ROUTES = ["reference", "numba"]
INF, NAN = math.inf, math.nan


def _inputs(n=2, c_in=4, c_out=3, h=6, w=7, k=(3, 3), ho=None, wo=None, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    ho, wo = ho or h, wo or w
    x = torch.randn(n, c_in, h, w, generator=gen, dtype=dtype)
    offset = 1.5 * torch.randn(n, 2 * k[0] * k[1], ho, wo, generator=gen, dtype=dtype)
    mask = torch.rand(n, k[0] * k[1], ho, wo, generator=gen, dtype=dtype)
    weight = torch.randn(c_out, c_in, *k, generator=gen, dtype=dtype)
    bias = torch.randn(c_out, generator=gen, dtype=dtype)
    return x, offset, mask, weight, bias


@pytest.mark.parametrize("route", ["reference", *CPU_ROUTES])
def test_zero_output_channels(route):
    """C_out = 0: an empty ``[N, 0, H_out, W_out]`` output and zero gradients (no GEMM runs)."""
    x, offset, mask, weight, bias = _inputs(c_out=0, dtype=torch.float32)
    leaves = [t.requires_grad_() for t in (x, offset, mask, weight, bias)]
    with cpu_route(route):
        y = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
        assert y.shape == (2, 0, 6, 7)
        grads = torch.autograd.grad((y * 2).sum(), leaves)
    for g, t in zip(grads, leaves, strict=True):
        assert g.shape == t.shape and not g.abs().sum()


@pytest.mark.parametrize(
    "value",
    [np.int64(1), torch.tensor(1), (1,), [1], (np.int32(1), torch.tensor(1)), torch.tensor([1])],
    ids=["numpy-int", "0-d-tensor", "tuple-1", "list-1", "mixed-pair", "1-d-tensor"],
)
def test_integer_like_arguments_as_conv2d(value):
    """What conv2d accepts for stride/padding/dilation, deform_conv2d accepts with its meaning."""
    x, offset, mask, weight, bias = _inputs()
    want = deform_conv2d(x, offset, weight, bias, 1, 1, 1, mask)
    got = deform_conv2d(x, offset, weight, bias, value, value, value, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # conv2d agrees that this value means 1
    assert F.conv2d(x, weight, padding=value).shape == F.conv2d(x, weight, padding=1).shape


@pytest.mark.parametrize(
    "value,match",
    [(True, "padding must be an int"), (1.0, "padding must be an int"),
     ((1, 1, 1), "padding must be an int"), (torch.tensor(1.0), "padding must be an int"),
     ("full", "padding must be an int, a pair of ints, 'valid' or 'same', got full")],
)  # fmt: skip
def test_bad_padding_is_named(value, match):
    x, offset, mask, weight, bias = _inputs()
    with pytest.raises((TypeError, ValueError), match=match):
        deform_conv2d(x, offset, weight, bias, padding=value, mask=mask)


@pytest.mark.parametrize("route", ROUTES)
def test_padding_valid_and_same(route):
    x, offset, mask, weight, bias = _inputs(ho=4, wo=5)
    with use_backend(route):
        valid = deform_conv2d(x, offset, weight, bias, padding="valid", mask=mask)
        zero = deform_conv2d(x, offset, weight, bias, padding=0, mask=mask)
        torch.testing.assert_close(valid, zero, rtol=0, atol=0)
        # 3x3 with dilation 2: symmetric padding 2, the output keeps the input's size
        x, offset, mask, weight, bias = _inputs()
        same = deform_conv2d(x, offset, weight, bias, dilation=2, padding="same", mask=mask)
        explicit = deform_conv2d(x, offset, weight, bias, dilation=2, padding=2, mask=mask)
    torch.testing.assert_close(same, explicit, rtol=0, atol=0)


@pytest.mark.parametrize("route", ROUTES)
def test_padding_same_even_kernel_is_torchs_asymmetric_padding(route):
    """A 2x4 kernel needs 1 and 3 cells: torch pads (0, 1) rows and (1, 2) columns. Zero offsets
    give conv2d(padding='same'); with offsets, every output the symmetric part alone can compute
    matches it; gradients pass gradcheck."""
    x, offset, mask, weight, bias = _inputs(k=(2, 4))
    with use_backend(route):
        zero = deform_conv2d(x, torch.zeros_like(offset), weight, bias, padding="same")
        with warnings.catch_warnings():  # torch warns (once) that it copies the input
            warnings.simplefilter("ignore")
            want = F.conv2d(x, weight, bias, padding="same")
        torch.testing.assert_close(zero, want, rtol=0, atol=1e-12)
        same = deform_conv2d(x, offset, weight, bias, padding="same", mask=mask)
        assert same.shape == (2, 3, 6, 7)
        part = deform_conv2d(
            x, offset[..., :5, :6], weight, bias, padding=(0, 1), mask=mask[..., :5, :6]
        )
        torch.testing.assert_close(same[..., :5, :6], part, rtol=0, atol=1e-12)
        leaves = [t[:1, :2].clone().requires_grad_() for t in (x,)] + [
            (offset[:1] + 0.25).clone().requires_grad_(),
            weight[:, :2].clone().requires_grad_(),
        ]

        def f(x, off, w):
            return deform_conv2d(x, off, w, padding="same")

        assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, fast_mode=True)


def test_padding_same_needs_stride_one():
    x, offset, mask, weight, bias = _inputs(ho=3, wo=4)
    with pytest.raises(ValueError, match=r"padding='same' needs stride 1.*\(2, 2\)"):
        deform_conv2d(x, offset, weight, bias, stride=2, padding="same", mask=mask)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("which", ["input", "weight", "neither"])
def test_channels_last_in_channels_last_out(route, which):
    """As conv2d on CPU: the output is channels-last when the input or the weight is; values
    and gradients do not depend on the layout."""
    x, offset, mask, weight, bias = _inputs(dtype=torch.float32)
    cl = torch.channels_last
    xs = x.contiguous(memory_format=cl) if which == "input" else x
    ws = weight.contiguous(memory_format=cl) if which == "weight" else weight
    results = []
    with use_backend(route):
        for a, w in ((x, weight), (xs, ws)):
            leaves = [a.clone().requires_grad_(), w.clone().requires_grad_()]
            y = deform_conv2d(leaves[0], offset, leaves[1], bias, padding=1, mask=mask)
            results.append((y, *torch.autograd.grad(y.sum(), leaves)))
    y = results[1][0]
    assert y.is_contiguous(memory_format=cl) == (which != "neither")
    assert y.is_contiguous() == (which == "neither")
    assert F.conv2d(xs, ws, padding=1).is_contiguous(memory_format=cl) == (which != "neither")
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_channels_last_fake_strides_match():
    """torch.compile plans with the fake implementation: it promises the real strides."""
    x, offset, mask, weight, bias = _inputs(dtype=torch.float32)
    args = (x.contiguous(memory_format=torch.channels_last), offset, mask, weight, bias,
            1, 1, 1, 1, 1, 1)  # fmt: skip
    torch.library.opcheck(
        torch.ops.torchdcn.deform_conv2d.default, args, test_utils=("test_faketensor",)
    )


# ---------------------------------------------------------------------------------------------
# TorchScript


def _user_fn(
    x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    a = deform_conv2d(x, offset, weight, None, 1, 1, 1, mask)
    b = deform_conv2d(x, offset, weight, stride=(1, 1), padding="same", dilation=(1, 1))
    return a + b


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_function_calling_the_op():
    x, offset, mask, weight, _ = _inputs(dtype=torch.float32)
    scripted = torch.jit.script(_user_fn)
    torch.testing.assert_close(scripted(x, offset, weight, mask), _user_fn(x, offset, weight, mask))
    # gradients flow through the registered op's autograd
    w = weight.clone().requires_grad_()
    (g_script,) = torch.autograd.grad(scripted(x, offset, w, mask).sum(), w)
    (g_eager,) = torch.autograd.grad(_user_fn(x, offset, w, mask).sum(), w)
    torch.testing.assert_close(g_script, g_eager)
    # and a saved program loads and runs (in a process that has imported torchdcn)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    torch.testing.assert_close(loaded(x, offset, weight, mask), _user_fn(x, offset, weight, mask))


def _one_op(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return deform_conv2d(x, offset, weight, padding=1)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_checks_and_half_precision():
    """The scripted path checks shapes inside the op and computes 16-bit tensors in float32,
    exactly as the eager path does."""
    x, offset, _, weight, _ = _inputs(dtype=torch.float32)
    scripted = torch.jit.script(_one_op)
    with pytest.raises(Exception, match="offset must have"):
        scripted(x, offset[:, :5], weight)
    half = [t.bfloat16() for t in (x, offset, weight)]
    got = scripted(*half)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, _one_op(*half), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# The one scalar rule: a Python or NumPy number or a 0-d tensor; bool, complex, other objects,
# other tensors and tensors requiring grad are TypeErrors, NaN (and inf if finite) ValueErrors.

INT = {"integral": True}
INT_FLOATS = {"integral": True, "integer_floats": True}


@pytest.mark.parametrize(
    "value, kwargs, expected",
    [
        (3, {}, 3), (0.5, {}, 0.5), (np.int64(3), {}, 3), (np.float32(0.5), {}, 0.5),
        (torch.tensor(3), {}, 3), (torch.tensor(0.5, dtype=torch.float64), {}, 0.5),
        (-INF, {"finite": False}, -INF), (3, INT, 3), (np.int32(3), INT, 3),
        (torch.tensor(3, dtype=torch.int16), INT, 3), (2.0, INT_FLOATS, 2),
        (np.float32(2.0), INT_FLOATS, 2), (torch.tensor(2.0), INT_FLOATS, 2), (7, INT_FLOATS, 7),
    ],
)  # fmt: skip
def test_real_scalar_accepts_numbers(value, kwargs, expected):
    got = real_scalar(value, "x", **kwargs)
    assert got == expected and type(got) is type(expected)  # ints stay ints, floats are floats


GRAD = torch.tensor(0.5, requires_grad=True)


@pytest.mark.parametrize(
    "value, kwargs, error, match",
    [
        (True, {}, TypeError, r"^x must be a real number, got bool True$"),
        (np.bool_(False), {}, TypeError, "x must be a real number, got bool"),
        (1 + 2j, {}, TypeError, r"x must be a real number, got complex \(1\+2j\)"),
        ("0.5", {}, TypeError, "x must be a real number, got str '0.5'"),
        (None, {}, TypeError, "x must be a real number, got NoneType None"),
        (torch.tensor([0.5]), {}, TypeError,
         r"x must be a real number or a 0-d real tensor, got a tensor of shape \(1,\)"),
        (torch.tensor(True), {}, TypeError, r"0-d real tensor, got .* dtype torch\.bool"),
        (torch.tensor(1 + 1j), {}, TypeError, r"0-d real tensor, got .* dtype torch\.complex64"),
        (GRAD, {}, TypeError, r"x must not require grad .*pass x\.detach\(\)"),
        (NAN, {}, ValueError, r"^x must be finite, got nan$"),
        (INF, {}, ValueError, r"^x must be finite, got inf$"),
        (torch.tensor(-INF), {}, ValueError, r"^x must be finite, got -inf$"),
        (NAN, {"finite": False}, ValueError, r"^x must be a number, got nan$"),
        (2.0, INT, TypeError, r"^x must be an int, got float 2\.0$"),
        (2.5, INT, TypeError, r"^x must be an int, got float 2\.5$"),
        (np.float32(2.0), INT, TypeError, "x must be an int, got float32"),
        (torch.tensor(2.0), INT, TypeError,
         r"x must be an int or a 0-d integer tensor, got .* dtype torch\.float32"),
        (True, INT, TypeError, "x must be an int, got bool True"),
        (GRAD, INT, TypeError, "x must be an int or a 0-d integer tensor"),
        (2.5, INT_FLOATS, ValueError, r"^x must be an int, got 2\.5, not an integer$"),
        (torch.tensor(2.5), INT_FLOATS, ValueError, "x must be an int, got 2.5, not an integer"),
        (NAN, INT_FLOATS, ValueError, "x must be finite, got nan"),
        (torch.tensor(2.0, requires_grad=True), INT_FLOATS, TypeError, "x must not require grad"),
        (torch.tensor(0.5), {"tensor": False}, TypeError,
         r"x must be a real number \(a Python or NumPy number\), got a tensor of shape \(\)"),
        (torch.tensor(1), {"tensor": False, **INT}, TypeError, r"x must be an int \(a Python"),
        ("1", {"wanted": "a number in [0, 1]"}, TypeError, r"x must be a number in \[0, 1\], got"),
    ],
)  # fmt: skip
def test_real_scalar_refuses_with_the_argument_named(value, kwargs, error, match):
    with pytest.raises(error, match=match):
        real_scalar(value, "x", **kwargs)


def test_real_scalar_passes_symbolic_values_and_skips_value_checks_while_compiling(monkeypatch):
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    env = ShapeEnv()
    f, i = env.create_unbacked_symfloat(), env.create_unbacked_symint()
    assert real_scalar(f, "x") is f and real_scalar(i, "x") is i
    assert real_scalar(i, "x", **INT) is i and real_scalar(f, "x", **INT_FLOATS) is f
    assert not env.guards  # nothing was read from them
    with pytest.raises(TypeError, match="x must be an int, got SymFloat"):
        real_scalar(f, "x", **INT)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert math.isnan(real_scalar(NAN, "x")) and real_scalar(INF, "x") == INF  # traced: unchecked
    with pytest.raises(TypeError, match="x must be a real number, got bool"):
        real_scalar(True, "x")  # the kind is still checked


@pytest.mark.parametrize(
    "value, match",
    [((1, "a"), r"padding must be an int or a pair .*; padding\[1\] must be an int, got str"),
     ((1, torch.tensor(1.0)), r"padding\[1\] must be an int or a 0-d integer tensor"),
     (torch.ones(2, 2, dtype=torch.int64), r"padding must be an int or a pair .*shape \(2, 2\)"),
     (2.5, r"padding must be an int or a pair .*got float 2\.5")],
)  # fmt: skip
def test_pair_uses_the_integer_rule(value, match):
    assert pair(np.int64(2), "padding") == (2, 2) and pair([torch.tensor(3)], "p") == (3, 3)
    with pytest.raises(TypeError, match=match):
        pair(value, "padding")
