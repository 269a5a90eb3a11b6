"""The RoI pooling family's argument handling: RoI formats, empty inputs, bad input errors, dtypes,
and the registered ops' fake and autograd implementations (``torch.library.opcheck``)."""

from __future__ import annotations

import functools
import math
import re
import warnings

import numpy as np
import pytest
import torch

from torchdcn.ops import (
    _roi_checks,
    _roi_ops,
    deform_ps_roi_pool,
    deform_roi_pool,
    ps_roi_align,
    ps_roi_pool,
    roi_align,
    roi_pool,
    use_backend,
)
from torchdcn.ops._checks import real_scalar

ROIS = torch.tensor([[0, 1.0, 2.0, 9.0, 7.0], [1, 3.5, 0.5, 6.0, 11.0], [1, -4.0, 2.0, 5.0, 30.0]])


def call(op, x, rois, k=2, offset=None, mask=None):
    """Run ``op`` with the arguments it takes; offsets default to zeros of the right shape."""
    r = len(rois) if isinstance(rois, torch.Tensor) else sum(len(b) for b in rois)
    if op in (deform_roi_pool, deform_ps_roi_pool) and offset is None:
        offset = torch.zeros(r, 2, k, k, dtype=x.dtype)
    if op is roi_pool or op is ps_roi_pool:
        return op(x, rois, k, 0.5)
    if op is deform_roi_pool:
        return op(x, rois, offset, k, 0.5, 2, 0.1, mask)
    if op is deform_ps_roi_pool:
        return op(x, rois, offset, k, 0.5, 2)
    return op(x, rois, k, 0.5, 2)


PLAIN = [roi_pool, roi_align, deform_roi_pool]
PS = [ps_roi_pool, ps_roi_align, deform_ps_roi_pool]
ALL = PLAIN + PS


def _x(op, n=2, c=2, k=2, dtype=torch.float32):
    return torch.randn(n, c * k * k if op in PS else c, 6, 7, dtype=dtype)


@pytest.mark.parametrize("op", ALL, ids=lambda f: f.__name__)
def test_list_of_boxes_equals_batch_index_column(op):
    x = _x(op)
    boxes = [ROIS[:1, 1:], ROIS[1:, 1:]]
    assert torch.equal(call(op, x, boxes), call(op, x, ROIS))


@pytest.mark.parametrize("op", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_zero_rois(op, backend):
    with use_backend(backend):
        x = _x(op).requires_grad_(True)
        out = call(op, x, torch.zeros(0, 5))
        c = 2
        assert out.shape == (0, c, 2, 2)
        (g,) = torch.autograd.grad(out.sum(), x)
        assert torch.equal(g, torch.zeros_like(x))
        empty = _x(op, n=0).requires_grad_(True)  # no images and no RoIs
        assert call(op, empty, torch.zeros(0, 5)).shape == (0, c, 2, 2)
        assert call(op, empty, []).shape == (0, c, 2, 2)


@pytest.mark.parametrize("op", ALL, ids=lambda f: f.__name__)
def test_output_size_int_or_pair(op):
    x = torch.randn(2, 2 * 6 if op in PS else 2, 6, 7)
    rect = (2, 3)
    if op in (deform_roi_pool, deform_ps_roi_pool):
        out = op(x, ROIS, torch.zeros(3, 2, *rect), rect, 0.5, 2)
    elif op in (roi_pool, ps_roi_pool):
        out = op(x, ROIS, rect, 0.5)
    else:
        out = op(x, ROIS, rect, 0.5, 2)
    assert out.shape == (3, 2, 2, 3)


@pytest.mark.parametrize("op", ALL, ids=lambda f: f.__name__)
def test_half_precision_computes_in_float32(op):
    x = _x(op)
    expected = call(op, x, ROIS)
    for dtype in (torch.float16, torch.bfloat16):
        k = 2
        offset = torch.zeros(3, 2, k, k, dtype=dtype)
        out = call(op, x.to(dtype), ROIS.to(dtype), offset=offset)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


def test_autocast_accepts_mixed_dtypes():
    x = torch.randn(2, 3, 6, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align(x.bfloat16(), ROIS, 2, 0.5, 2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), roi_align(x, ROIS, 2, 0.5, 2), rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------------------------
# Bad input: the error names the argument and the shapes.


@pytest.mark.parametrize("op", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "rois, match",
    [
        (torch.tensor([[2, 1.0, 1.0, 4.0, 4.0]]), r"(rois|boxes) row 0 .*batch index in \[0, 2\)"),
        (torch.tensor([[-1, 1.0, 1.0, 4.0, 4.0]]), r"batch index in \[0, 2\)"),
        (torch.tensor([[0.5, 1.0, 1.0, 4.0, 4.0]]), r"integer batch index"),
        (torch.tensor([[0, 1.0, float("nan"), 4.0, 4.0]]), r"finite coordinates"),
        (torch.zeros(3, 4), r"(rois|boxes) must have shape \[R, 5\].*\(3, 4\)"),
        (torch.zeros(5), r"(rois|boxes) must be 2-D .*\[R, 5\].*\(5,\)"),
        ([torch.zeros(1, 5)], r"(rois|boxes)\[0\] must have shape \[R_i, 4\].*\(1, 5\)"),
        ([torch.zeros(1, 4)] * 3, r"list of 3 .* batch size 2"),
    ],
)
def test_bad_rois(op, rois, match):
    x = _x(op)
    r = len(rois) if isinstance(rois, torch.Tensor) and rois.dim() == 2 else 1
    offset = torch.zeros(r, 2, 2, 2)
    with pytest.raises(ValueError, match=match):
        call(op, x, rois, offset=offset)


@pytest.mark.parametrize("op", [ps_roi_pool, ps_roi_align, deform_ps_roi_pool])
def test_ps_channels_not_divisible(op):
    with pytest.raises(ValueError, match=r"divisible by ph \* pw = 4 .*\(2, 6, 6, 7\)"):
        call(op, torch.randn(2, 6, 6, 7), ROIS)


def test_bad_offset_and_mask_shapes():
    x = torch.randn(2, 3, 6, 7)
    with pytest.raises(
        ValueError, match=r"offset must have shape \[R, 2, ph, pw\] = \(3, 2, 2, 2\)"
    ):
        deform_roi_pool(x, ROIS, torch.zeros(3, 2, 3, 3), 2)
    with pytest.raises(ValueError, match=r"offset must have shape .*\(2, 2, 2, 2\)"):
        deform_roi_pool(x, ROIS, torch.zeros(2, 2, 2, 2), 2)
    with pytest.raises(ValueError, match=r"offset must be 4-D"):
        deform_roi_pool(x, ROIS, torch.zeros(3, 2, 4), 2)
    with pytest.raises(ValueError, match=r"mask must have shape \[R, 1, ph, pw\] = \(3, 1, 2, 2\)"):
        deform_roi_pool(x, ROIS, torch.zeros(3, 2, 2, 2), 2, mask=torch.ones(3, 2, 2, 2))
    xp = torch.randn(2, 6 * 4, 6, 7)  # 6 output channels
    with pytest.raises(ValueError, match=r"C' dividing the 6 output channels.*\(3, 8, 2, 2\)"):
        deform_ps_roi_pool(xp, ROIS, torch.zeros(3, 8, 2, 2), 2)
    with pytest.raises(ValueError, match=r"C' dividing"):
        deform_ps_roi_pool(xp, ROIS, torch.zeros(3, 3, 2, 2), 2)
    assert deform_ps_roi_pool(xp, ROIS, torch.zeros(3, 6, 2, 2), 2).shape == (3, 6, 2, 2)


def test_bad_dtypes_devices_and_values():
    x = torch.randn(2, 3, 6, 7)
    with pytest.raises(TypeError, match=r"boxes has dtype torch\.float64 but input has dtype"):
        roi_align(x, ROIS.double(), 2)
    with pytest.raises(TypeError, match=r"offset has dtype torch\.float64"):
        deform_roi_pool(x, ROIS, torch.zeros(3, 2, 2, 2, dtype=torch.float64), 2)
    with pytest.raises(TypeError, match="boxes must be a floating-point tensor"):
        roi_align(x, ROIS.long(), 2)
    with pytest.raises(TypeError, match="input must be a Tensor"):
        roi_align(x.numpy(), ROIS, 2)
    with pytest.raises(ValueError, match="boxes is on meta but input is on cpu"):
        roi_align(x, ROIS.to("meta"), 2)
    with pytest.raises(ValueError, match="input must be 4-D"):
        roi_align(x[0], ROIS, 2)
    with pytest.raises(ValueError, match="output_size must be positive"):
        roi_align(x, ROIS, (0, 2))
    with pytest.raises(TypeError, match="output_size must be an int or a pair"):
        roi_align(x, ROIS, 2.5)
    with pytest.raises(ValueError, match="spatial_scale must be positive"):
        roi_pool(x, ROIS, 2, 0.0)
    with pytest.raises(TypeError, match="sampling_ratio must be an int"):
        roi_align(x, ROIS, 2, 1.0, 2.0)
    with pytest.raises(ValueError, match="gamma must be finite"):
        deform_roi_pool(x, ROIS, None, 2, gamma=float("inf"))


@pytest.mark.parametrize(
    "op", [roi_align, ps_roi_align, deform_roi_pool, deform_ps_roi_pool], ids=lambda f: f.__name__
)
def test_sampling_ratio_above_the_grid_cap_is_refused(op):
    """An explicit grid is capped like the adaptive one (MAX_ADAPTIVE_GRID = 64 per axis): 100000
    used to run for minutes and saturate a float32 sum; 64 itself still equals a loop over 64^2
    samples (a 4 x 4 box as one bin on a linear map: the mean of the samples is the centre)."""
    x = _x(op, k=1)
    box = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    off = torch.zeros(1, 2, 1, 1)

    def run(ratio):
        if op in (deform_roi_pool, deform_ps_roi_pool):
            return op(x, box, off, 1, 1.0, ratio)
        return op(x, box, 1, 1.0, ratio)

    for ratio in (65, 100_000):
        with pytest.raises(ValueError, match=rf"sampling_ratio must be at most 64 .*got {ratio}"):
            run(ratio)
    with pytest.raises(ValueError, match="sampling_ratio must be at most 64"):  # the op itself
        torch.ops.torchdcn.roi_aligned_pool(x, box, None, None, 1, 1, 1.0, 65, True, 0.0, False)
    ramp = torch.arange(7.0).view(1, 1, 1, 7).expand(2, x.shape[1], 6, 7).contiguous()
    x = ramp  # value = column index: the mean over any grid of a box is its centre column
    got = run(64)
    aligned = op is not roi_align  # roi_align defaults to aligned=False
    centre = 3.0 - 0.5 * aligned
    torch.testing.assert_close(got, torch.full_like(got, centre))


# ---------------------------------------------------------------------------------------------
# The registered ops: schema, fake (meta) implementation and autograd registration.


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_opcheck(backend):
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = ROIS.double()
    off = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    off_ps = torch.randn(3, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    integer, aligned = torch.ops.torchdcn.roi_integer_pool, torch.ops.torchdcn.roi_aligned_pool
    cases = [
        (integer, (x, rois, 2, 2, 0.5, "max", False)),  # roi_pool
        (integer, (x, rois, 2, 2, 0.5, "avg", False)),  # roi_pool(mode="avg")
        (integer, (x, rois, 2, 2, 0.5, "avg", True)),  # ps_roi_pool
        (aligned, (x, rois, None, None, 2, 2, 0.5, -1, True, 0.0, False)),  # roi_align
        (aligned, (x, rois, None, None, 2, 2, 0.5, 2, False, 0.0, True)),  # ps_roi_align
        (aligned, (x, rois, off, mask, 2, 2, 0.5, 2, True, 0.1, False)),  # deform_roi_pool
        (aligned, (x, rois, None, None, 2, 2, 0.5, 2, True, 0.1, False)),
        (aligned, (x, rois, off_ps, None, 2, 2, 0.5, -1, True, 0.1, True)),  # deform_ps_roi_pool
    ]
    with use_backend(backend):
        for op, args in cases:
            torch.library.opcheck(op, args)


def test_registered_op_rejects_bad_mode():
    x = torch.randn(1, 4, 5, 5)
    rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]])
    with pytest.raises(ValueError, match="mode"):
        torch.ops.torchdcn.roi_integer_pool(x, rois, 2, 2, 1.0, "sum", False)
    with pytest.raises(ValueError, match="position_sensitive"):
        torch.ops.torchdcn.roi_integer_pool(x, rois, 2, 2, 1.0, "max", True)


def test_compiles_without_graph_breaks():
    x = torch.randn(2, 3, 6, 7, requires_grad=True)
    off = torch.randn(3, 2, 2, 2, requires_grad=True)

    def f(x, off):
        return deform_roi_pool(x, ROIS, off, 2, 0.5, 2).sum() + roi_align(x, ROIS, 2, 0.5).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, off), f(x, off))
    torch.testing.assert_close(
        torch.autograd.grad(compiled(x, off), (x, off)), torch.autograd.grad(f(x, off), (x, off))
    )


# ---------------------------------------------------------------------------------------------
# Routes without the eager checks: TorchScript, torch.ops.torchdcn.* called directly (forward and
# backward ops) and torch.compile (which traces with fake tensors, so cannot test values). The op
# itself checks what its kernel indexes with. In the bad-input tests every kernel is replaced by
# one that fails the test, so a regression cannot read out of bounds in this process.


def _s_roi_pool(x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    return roi_pool(x, rois, 2, 0.5)


def _s_ps_roi_pool(x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    return ps_roi_pool(x, rois, 2, 0.5)


def _s_roi_align(x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    return roi_align(x, rois, 2, 0.5, 2)


def _s_ps_roi_align(x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    return ps_roi_align(x, rois, 2, 0.5, 2)


def _s_deform_roi_pool(x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    return deform_roi_pool(x, rois, torch.zeros(rois.shape[0], 2, 2, 2), 2, 0.5, 2, 0.1)


def _s_deform_ps_roi_pool(x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    return deform_ps_roi_pool(x, rois, torch.zeros(rois.shape[0], 2, 2, 2), 2, 0.5, 2)


# ``call(op, x, rois)`` as a scriptable function of (x, rois)
SCRIPTABLE = {
    roi_pool: _s_roi_pool,
    ps_roi_pool: _s_ps_roi_pool,
    roi_align: _s_roi_align,
    ps_roi_align: _s_ps_roi_align,
    deform_roi_pool: _s_deform_roi_pool,
    deform_ps_roi_pool: _s_deform_ps_roi_pool,
}


@functools.cache
def _scripted(op):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
        return torch.jit.script(SCRIPTABLE[op])


@functools.cache
def _compiled(op):
    return torch.compile(SCRIPTABLE[op], fullgraph=True, backend="aot_eager")


def _op_call(op, x, rois, grad=None):
    """``call(op, x, rois)`` as the registered op (or, with ``grad``, its backward op)."""
    r, ops = rois.shape[0], torch.ops.torchdcn
    if op in (roi_pool, ps_roi_pool):
        args = (x, rois, 2, 2, 0.5, "max" if op is roi_pool else "avg", op is ps_roi_pool)
        if grad is None:
            return ops.roi_integer_pool(*args)
        return ops.roi_integer_pool_backward(grad, *args)
    offset = torch.zeros(r, 2, 2, 2) if op in (deform_roi_pool, deform_ps_roi_pool) else None
    gamma = 0.1 if offset is not None else 0.0
    args = (x, rois, offset, None, 2, 2, 0.5, 2, op is not roi_align, gamma, op in PS)
    if grad is None:
        return ops.roi_aligned_pool(*args)
    return ops.roi_aligned_pool_backward(grad, *args)[0]


@pytest.fixture
def no_kernels(monkeypatch):
    """Every RoI kernel fails the test if called."""

    class Refuse:
        def __getattr__(self, name):
            def kernel(*args, **kwargs):
                raise AssertionError(f"kernel {name} reached with invalid arguments")

            return kernel

    monkeypatch.setattr(_roi_ops, "_kernels", lambda input: Refuse())


def _raises(route, match):
    """The error of a route: ValueError; TorchScript wraps any error raised in scripted code or an
    op it calls (RuntimeError or torch.jit.Error: "ValueError: <message>"), and a fullgraph
    torch.compile one found while tracing (torch._dynamo.exc.Unsupported naming the ValueError)."""
    if route == "script":
        return pytest.raises((RuntimeError, torch.jit.Error), match="ValueError: .*" + match)
    if route == "compile":
        return pytest.raises((ValueError, torch._dynamo.exc.Unsupported), match=match)
    return pytest.raises(ValueError, match=match)


ROUTES = ["script", "op", "backward_op", "compile"]


def _run(route, op, x, rois):
    if route == "script":
        return _scripted(op)(x, rois)
    if route == "compile":
        return _compiled(op)(x, rois)
    if route == "op":
        return _op_call(op, x, rois)
    c_out = x.shape[1] // 4 if op in PS else x.shape[1]
    return _op_call(op, x, rois, torch.ones(rois.shape[0], c_out, 2, 2))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("op", ALL, ids=lambda f: f.__name__)
def test_unchecked_routes_match_eager(op, route):
    x = _x(op)
    if route == "backward_op":
        leaf = x.clone().requires_grad_()
        (expected,) = torch.autograd.grad(call(op, leaf, ROIS).sum(), leaf)
    else:
        expected = call(op, x, ROIS)
    assert torch.equal(_run(route, op, x, ROIS), expected)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("op", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "rois, match",
    [
        (torch.tensor([[2, 1.0, 1.0, 4.0, 4.0]]), r"rois row 0 .*batch index in \[0, 2\)"),
        (torch.tensor([[1e6, 1.0, 1.0, 4.0, 4.0]]), r"rois row 0 .*batch index in \[0, 2\)"),
        (torch.tensor([[0, 1.0, 1.0, 4.0, 4.0], [-1, 0, 0, 1, 1]]), r"rois row 1 = \[-1\.0"),
        (torch.tensor([[0.5, 1.0, 1.0, 4.0, 4.0]]), r"integer batch index"),
        (torch.tensor([[0, 1.0, float("inf"), 4.0, 4.0]]), r"finite coordinates"),
        (torch.zeros(2, 4), r"must have shape \[R, 5\].*\(2, 4\)"),
    ],
    ids=["index_N", "index_1e6", "index_-1", "index_0.5", "inf", "R_4"],
)
def test_unchecked_routes_refuse_bad_rois(op, route, rois, match, no_kernels):
    if route == "compile" and rois.shape[1] != 5:
        match = r"boxes must have shape|rois must have shape"  # the eager check, while tracing
    with _raises(route, match):
        _run(route, op, _x(op), rois)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("op", PS, ids=lambda f: f.__name__)
def test_unchecked_routes_refuse_ps_channels_not_divisible(op, route, no_kernels):
    x = torch.randn(2, 6, 6, 7)  # 6 channels, ph * pw = 4
    # (under torch.compile the channels may be symbolic: "s27" in the shape)
    shape = "" if route == "compile" else r" .*\(2, 6, 6, 7\)"
    with _raises(route, r"divisible by ph \* pw = 4" + shape):
        _run(route, op, x, ROIS)


def _s_roi_align_list(x: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
    return roi_align(x, boxes, 2, 0.5, 2)


@functools.cache
def _scripted_list():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_s_roi_align_list)


def test_scripted_list_of_boxes(no_kernels):
    x = _x(roi_align)
    scripted = _scripted_list()
    with _raises("script", r"list of 3 per-image box tensors but input has batch size 2"):
        scripted(x, [torch.zeros(1, 4)] * 3)
    with _raises("script", r"rois\[0\] must have shape \[R_i, 4\]"):
        scripted(x, [torch.zeros(1, 5)])


def test_scripted_list_of_boxes_matches_eager():
    x = _x(roi_align, dtype=torch.float64)
    boxes = [ROIS[:1, 1:].double(), ROIS[1:, 1:].double()]
    assert torch.equal(_scripted_list()(x, boxes), call(roi_align, x, boxes))
    empty = _scripted_list()(x, [])  # RoIs made in the input's dtype
    assert empty.shape == (0, 2, 2, 2) and empty.dtype == torch.float64


def test_registered_ops_check_every_tensor(no_kernels):
    x, xp = torch.randn(2, 3, 6, 7), torch.randn(2, 4 * 4, 6, 7)  # xp: 4 output channels
    ops = torch.ops.torchdcn
    with pytest.raises(TypeError, match=r"rois has dtype torch\.float64 but input has dtype"):
        ops.roi_integer_pool(x, ROIS.double(), 2, 2, 0.5, "max", False)
    with pytest.raises(
        ValueError, match=r"offset must have shape \[R, 2, ph, pw\] = \(3, 2, 2, 2\)"
    ):
        ops.roi_aligned_pool(x, ROIS, torch.zeros(2, 2, 2, 2), None, 2, 2, 0.5, 2, True, 0.1, False)
    with pytest.raises(ValueError, match=r"mask must have shape \[R, 1, ph, pw\] = \(3, 1, 2, 2\)"):
        ops.roi_aligned_pool(x, ROIS, None, torch.ones(3, 1, 3, 3), 2, 2, 0.5, 2, True, 0.1, False)
    # PS offsets with C' = 2 pairs: the kernels read one mask plane per pair
    off = torch.zeros(3, 4, 2, 2)
    with pytest.raises(ValueError, match=r"mask must have shape \[R, C', ph, pw\].*\(3, 2, 2, 2\)"):
        ops.roi_aligned_pool(xp, ROIS, off, torch.ones(3, 1, 2, 2), 2, 2, 0.5, 2, True, 0.1, True)
    with pytest.raises(ValueError, match="spatial_scale must be positive"):
        ops.roi_integer_pool(x, ROIS, 2, 2, -1.0, "max", False)
    with pytest.raises(ValueError, match="output_size must be positive"):
        ops.roi_integer_pool(x, ROIS, 0, 2, 1.0, "max", False)
    # backward ops: the output gradient must be [R, C_out, ph, pw]
    with pytest.raises(ValueError, match=r"grad must have shape \[R, C_out, ph, pw\] = \(3, 3, 2"):
        ops.roi_integer_pool_backward(torch.ones(4, 3, 2, 2), x, ROIS, 2, 2, 0.5, "max", False)
    with pytest.raises(ValueError, match=r"grad must have shape .* = \(3, 4, 2, 2\), got \(3, 16"):
        ops.roi_aligned_pool_backward(
            torch.ones(3, 16, 2, 2), xp, ROIS, None, None, 2, 2, 0.5, 2, True, 0.0, True
        )


def test_scripted_backward_refuses_bad_rois(no_kernels):
    """The repro of a heap corruption: scripted forward and backward with batch index N."""
    x = _x(roi_align).requires_grad_()
    with _raises("script", r"rois row 0 .*batch index in \[0, 2\)"):
        _scripted(roi_align)(x, torch.tensor([[2, 1.0, 1.0, 4.0, 4.0]])).sum().backward()
    assert x.grad is None


@pytest.fixture
def value_checks(monkeypatch):
    """Counts the RoI value checks (the one device sync each) as they run."""
    calls = []
    check = _roi_checks._check_values

    def counted(rois, batch, name):
        calls.append(name)
        return check(rois, batch, name)

    monkeypatch.setattr(_roi_checks, "_check_values", counted)
    return calls


@pytest.mark.parametrize("op", ALL, ids=lambda f: f.__name__)
def test_eager_forward_and_backward_check_values_once(op, value_checks):
    """The public function checks the RoIs; its registered op and the autograd backward op skip
    them (the saved rois are the checked ones): one check, not three."""
    x = _x(op).requires_grad_()
    call(op, x, ROIS).sum().backward()
    assert value_checks == [
        "boxes" if op in (roi_align, roi_pool, ps_roi_align, ps_roi_pool) else "rois"
    ]


@pytest.mark.parametrize("op", ALL, ids=lambda f: f.__name__)
def test_direct_op_and_its_autograd_backward_check_values_once(op, value_checks):
    x = _x(op).requires_grad_()
    _op_call(op, x, ROIS).sum().backward()  # the forward op checks, autograd's backward skips
    assert value_checks == ["rois"]
    c_out = x.shape[1] // 4 if op in PS else x.shape[1]
    _op_call(op, x.detach(), ROIS, torch.ones(3, c_out, 2, 2))  # a direct backward-op call checks
    assert value_checks == ["rois", "rois"]


@pytest.mark.parametrize("op", ALL, ids=lambda f: f.__name__)
def test_skipping_ends_with_the_call(op, no_kernels):
    """A failing eager call leaves no skip behind: the next direct op call is checked."""
    with pytest.raises(AssertionError, match=r"kernel .* reached"):
        call(op, _x(op), ROIS)
    with pytest.raises(ValueError, match=r"rois row 0 .*batch index in \[0, 2\)"):
        _op_call(op, _x(op), torch.tensor([[2, 1.0, 1.0, 4.0, 4.0]]))


def test_compiled_forward_and_backward_check_values(value_checks):
    """Under torch.compile the eager check cannot see values: the compiled graph's forward op and
    backward op check them on the real tensors."""
    x = _x(roi_align).requires_grad_()
    _compiled(roi_align)(x, ROIS).sum().backward()
    assert value_checks == ["rois", "rois"]
    with pytest.raises(ValueError, match=r"rois row 0 .*batch index in \[0, 2\)"):
        _compiled(roi_align)(x, torch.tensor([[2, 1.0, 1.0, 4.0, 4.0]]))


# ---------------------------------------------------------------------------------------------
# Scalar arguments as torchvision takes them: NumPy scalars and 0-d tensors.


@pytest.mark.parametrize("op", [roi_align, roi_pool, ps_roi_align, ps_roi_pool])
def test_numpy_and_tensor_scalars(op):
    x = _x(op)
    takes_ratio = op in (roi_align, ps_roi_align)

    def run(scale, ratio=2):
        return op(x, ROIS, 2, scale, ratio) if takes_ratio else op(x, ROIS, 2, scale)

    expected = run(0.5)
    for scale in (np.float32(0.5), np.float64(0.5), torch.tensor(0.5), torch.tensor(0.5).double()):
        assert torch.equal(run(scale), expected)
    if takes_ratio:
        for ratio in (np.int64(2), np.int32(2), torch.tensor(2)):
            assert torch.equal(run(0.5, ratio), expected)
        with pytest.raises(TypeError, match="sampling_ratio must be an int"):
            run(0.5, True)
        with pytest.raises(TypeError, match="sampling_ratio must be an int"):
            run(0.5, torch.tensor([2]))
        with pytest.raises(TypeError, match="sampling_ratio must be an int"):
            run(0.5, np.float32(2.0))
    with pytest.raises(TypeError, match="spatial_scale must be a real number, got bool"):
        run(True)
    with pytest.raises(TypeError, match="spatial_scale must be a real number, got str"):
        run("0.5")
    with pytest.raises(TypeError, match=r"spatial_scale must be a real number or a 0-d .*\(1,\)"):
        run(torch.tensor([0.5]))
    with pytest.raises(TypeError, match=r"spatial_scale .*torch\.bool"):
        run(torch.tensor(True))
    with pytest.raises(TypeError, match="spatial_scale must not require grad"):
        run(torch.tensor(0.5, requires_grad=True))
    with pytest.raises(ValueError, match=r"spatial_scale must be positive, got -0\.5"):
        run(np.float32(-0.5))


def test_deform_scalars():
    x = _x(deform_roi_pool)
    off = torch.randn(3, 2, 2, 2)
    expected = deform_roi_pool(x, ROIS, off, 2, 0.5, 2, 0.1)
    got = deform_roi_pool(x, ROIS, off, 2, np.float32(0.5), np.int64(2), torch.tensor(0.1))
    assert torch.equal(got, expected)


# The refusals of _checks.real_scalar (tests/ops/test_deform_conv_args.py), word for word.
BAD_REALS = {
    "bool": True, "complex": 1 + 2j, "str": "0.5", "1-d": torch.tensor([0.5]),
    "grad": torch.tensor(0.5, requires_grad=True), "nan": math.nan, "inf": math.inf,
}  # fmt: skip
BAD_INTS = {
    "bool": True, "complex": 2 + 0j, "str": "2", "1-d": torch.tensor([2]),
    "float-tensor": torch.tensor(2.0), "2.0": 2.0, "2.5": 2.5, "numpy-2.0": np.float32(2.0),
}  # fmt: skip


def _refused_as_real_scalar_refuses(op, name, value, **kwargs):
    with pytest.raises((TypeError, ValueError)) as want:
        real_scalar(value, name, **kwargs)
    x = _x(op)
    with pytest.raises(type(want.value), match="^" + re.escape(str(want.value)) + "$"):
        if op in (deform_roi_pool, deform_ps_roi_pool):
            op(x, ROIS, torch.zeros(3, 2, 2, 2), 2, **{name: value})
        else:
            op(x, ROIS, 2, **{name: value})


@pytest.mark.parametrize("bad", list(BAD_REALS.values()), ids=list(BAD_REALS))
@pytest.mark.parametrize("op", ALL, ids=lambda f: f.__name__)
def test_every_op_refuses_bad_real_scalars_as_real_scalar_does(op, bad):
    _refused_as_real_scalar_refuses(op, "spatial_scale", bad)
    if op in (deform_roi_pool, deform_ps_roi_pool):
        _refused_as_real_scalar_refuses(op, "gamma", bad)


@pytest.mark.parametrize("bad", list(BAD_INTS.values()), ids=list(BAD_INTS))
@pytest.mark.parametrize("op", [roi_align, ps_roi_align, deform_roi_pool, deform_ps_roi_pool])
def test_every_op_refuses_bad_sampling_ratios_as_real_scalar_does(op, bad):
    _refused_as_real_scalar_refuses(op, "sampling_ratio", bad, integral=True)
