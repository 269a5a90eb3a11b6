"""The Triton kernels of the RoI pooling family, run on CPU by the Triton interpreter, against the
reference: every op, forward and gradients, default (atomics) and deterministic backward.

``TRITON_INTERPRET=1`` must be set before triton is first imported (see
``test_triton_interpreter.py``): collected first in a CPU-only process this module sets it and runs
here, otherwise one test reruns the file in a child process. Shapes are tiny.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
IN_PROCESS = os.environ.get("TRITON_INTERPRET") == "1" or (
    "triton" not in sys.modules and not torch.cuda.is_available()
)
if HAS_TRITON and IN_PROCESS:
    os.environ["TRITON_INTERPRET"] = "1"

from torchdcn.ops import (  # noqa: E402
    deform_ps_roi_pool,
    deform_roi_pool,
    ps_roi_align,
    ps_roi_pool,
    roi_align,
    roi_pool,
    set_workspace_limit,
    use_backend,
)

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="the Triton kernels need triton installed")
interpreted = pytest.mark.skipif(not IN_PROCESS, reason="run by test_in_interpreter_process")


@pytest.mark.skipif(IN_PROCESS, reason="the interpreter tests run in this process")
def test_in_interpreter_process():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]


# RoIs in image pixels on a 7 x 9 map at scale 1/4: inside, past every border, a single point,
# inverted, and one large enough that the adaptive grid takes several samples per bin.
ROIS = torch.tensor(
    [
        [0, 1.0, 2.0, 30.0, 20.0],
        [1, -8.0, -4.0, 12.0, 40.0],
        [1, 20.0, 10.0, 70.0, 60.0],
        [0, 5.0, 5.0, 5.0, 5.0],
        [1, 14.0, 9.0, 3.0, 2.0],
        [0, -2.0, 0.0, 36.0, 28.0],
    ]
)
SCALE = 0.25


def case(name: str, dtype=torch.float32, seed=0):
    """``(op, tensors, kwargs)``: the op, its differentiable inputs (input, offset, mask) and the
    remaining arguments; offsets are large enough to push samples off the map."""
    gen = torch.Generator().manual_seed(seed)
    r = ROIS.shape[0]

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).to(dtype)

    rois = ROIS.to(dtype)
    if name == "roi_pool":
        return (
            roi_pool,
            [randn(2, 5, 7, 9)],
            dict(boxes=rois, output_size=(3, 2), spatial_scale=SCALE),
        )
    if name == "roi_pool-avg":
        kw = dict(boxes=rois, output_size=(3, 2), spatial_scale=SCALE, mode="avg")
        return roi_pool, [randn(2, 5, 7, 9)], kw
    if name == "ps_roi_pool":
        return (
            ps_roi_pool,
            [randn(2, 12, 7, 9)],
            dict(boxes=rois, output_size=2, spatial_scale=SCALE),
        )
    if name == "roi_align":
        kw = dict(boxes=rois, output_size=(2, 3), spatial_scale=SCALE, sampling_ratio=2)
        kw["aligned"] = True
        return roi_align, [randn(2, 5, 7, 9)], kw
    if name == "roi_align-adaptive-unaligned":
        kw = dict(boxes=rois, output_size=3, spatial_scale=SCALE, sampling_ratio=-1, aligned=False)
        return roi_align, [randn(2, 3, 7, 9)], kw
    if name == "ps_roi_align":
        kw = dict(boxes=rois, output_size=2, spatial_scale=SCALE, sampling_ratio=-1)
        return ps_roi_align, [randn(2, 12, 7, 9)], kw
    if name == "deform_roi_pool":  # modulated (v2)
        kw = dict(rois=rois, output_size=3, spatial_scale=SCALE, sampling_ratio=2, gamma=0.3)
        tensors = [randn(2, 5, 7, 9), randn(r, 2, 3, 3), torch.rand(r, 1, 3, 3, generator=gen)]
        return deform_roi_pool, [tensors[0], tensors[1], tensors[2].to(dtype)], kw
    if name == "deform_roi_pool-v1":
        kw = dict(rois=rois, output_size=(2, 3), spatial_scale=SCALE, sampling_ratio=-1)
        return deform_roi_pool, [randn(2, 4, 7, 9), randn(r, 2, 2, 3, scale=3.0)], kw
    if name == "deform_ps_roi_pool":  # 3 output channels in 3 offset classes
        kw = dict(rois=rois, output_size=2, spatial_scale=SCALE, sampling_ratio=2, gamma=0.2)
        return deform_ps_roi_pool, [randn(2, 12, 7, 9), randn(r, 6, 2, 2, scale=2.0)], kw
    raise KeyError(name)


def run(backend, op, tensors, kwargs, grad_seed=1):
    """Output and the gradients of the tensors (input, offset, mask)."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    with use_backend(backend):
        if op in (deform_roi_pool, deform_ps_roi_pool):
            extra = {"mask": leaves[2]} if len(leaves) == 3 else {}
            out = op(leaves[0], offset=leaves[1], **kwargs, **extra)
        else:
            out = op(leaves[0], **kwargs)
        gen = torch.Generator().manual_seed(grad_seed)
        out.backward(torch.randn(out.shape, generator=gen).to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


def assert_close_all(got, want, rtol=1e-5, atol=1e-5):
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, k=k: f"#{k}: {m}")


NAMES = [
    "roi_pool",
    "roi_pool-avg",
    "ps_roi_pool",
    "roi_align",
    "roi_align-adaptive-unaligned",
    "ps_roi_align",
    "deform_roi_pool",
    "deform_roi_pool-v1",
    "deform_ps_roi_pool",
]


@interpreted
@pytest.mark.parametrize("name", NAMES)
def test_matches_reference(name):
    op, tensors, kwargs = case(name)
    assert_close_all(run("triton", op, tensors, kwargs), run("reference", op, tensors, kwargs))


@interpreted
@pytest.mark.parametrize(
    "name", ["roi_pool", "roi_pool-avg", "ps_roi_pool", "deform_roi_pool", "deform_ps_roi_pool"]
)
def test_deterministic_matches_reference_and_repeats_bitwise(name):
    op, tensors, kwargs = case(name)
    want = run("reference", op, tensors, kwargs)
    torch.use_deterministic_algorithms(True)
    first = run("triton", op, tensors, kwargs)
    second = run("triton", op, tensors, kwargs)
    assert_close_all(first, want)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@interpreted
def test_deterministic_roi_chunks():
    """A one-byte workspace makes the deterministic scatter take the RoIs one at a time."""
    op, tensors, kwargs = case("roi_align-adaptive-unaligned")
    want = run("reference", op, tensors, kwargs)
    torch.use_deterministic_algorithms(True)
    set_workspace_limit(1)
    got = run("triton", op, tensors, kwargs)
    assert_close_all(got, want)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["roi_pool", "deform_roi_pool"])
def test_half_precision_in_own_dtype(name, dtype):
    op, tensors, kwargs = case(name, dtype=dtype)
    got = run("triton", op, tensors, kwargs)
    key = "boxes" if "boxes" in kwargs else "rois"
    kwargs32 = {**kwargs, key: kwargs[key].float()}
    want = run("reference", op, [t.float() for t in tensors], kwargs32)
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    for a, b in zip(got, want):
        assert a.dtype == dtype
        assert (a.float() - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


@interpreted
def test_float64_uses_reference():
    op, tensors, kwargs = case("deform_roi_pool", dtype=torch.float64)
    got = run("triton", op, tensors, kwargs)
    assert_close_all(got, run("reference", op, tensors, kwargs), rtol=1e-12, atol=1e-12)


@interpreted
@pytest.mark.parametrize("name", ["roi_pool", "deform_roi_pool"])
def test_no_rois(name):
    op, tensors, kwargs = case(name)
    key = "boxes" if "boxes" in kwargs else "rois"
    kwargs[key] = kwargs[key][:0]
    tensors = [t[:0] if k else t for k, t in enumerate(tensors)]  # offsets/masks are per RoI
    got = run("triton", op, tensors, kwargs)
    assert got[0].shape[0] == 0 and got[1].abs().sum() == 0


@interpreted
def test_non_finite_offsets_read_zero():
    op, tensors, kwargs = case("deform_roi_pool")
    tensors[1][0, :, 1, 1] = float("nan")
    tensors[1][2, 0, 0, 2] = float("inf")
    got = run("triton", op, tensors, kwargs)
    assert all(torch.isfinite(t).all() for t in got)
    assert_close_all(got, run("reference", op, tensors, kwargs))


@interpreted
@pytest.mark.parametrize("deterministic", [False, True])
def test_opcheck_strides_match_fake(deterministic):
    """The backward ops' fake implementations promise the strides the Triton kernels return."""
    x = torch.randn(2, 8, 7, 9)
    rois = ROIS[:3]
    r = rois.shape[0]
    off, msk, geometry = (
        torch.randn(r, 2, 2, 2),
        torch.rand(r, 1, 2, 2),
        (2, 2, SCALE, 2, True, 0.1),
    )
    integer, aligned = "roi_integer_pool_backward", "roi_aligned_pool_backward"
    cases = [
        (integer, (torch.randn(r, 8, 3, 2), x, rois, 3, 2, SCALE, "max", False)),
        (integer, (torch.randn(r, 2, 2, 2), x, rois, 2, 2, SCALE, "avg", True)),
        (aligned, (torch.randn(r, 8, 2, 2), x, rois, None, None, 2, 2, SCALE, 2, True, 0.0, False)),
        (aligned, (torch.randn(r, 8, 2, 2), x, rois, off, msk, *geometry, False)),
    ]
    torch.use_deterministic_algorithms(deterministic)
    with use_backend("triton"):
        for name, args in cases:
            op = getattr(torch.ops.torchdcn, name).default
            torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


@interpreted
def test_roi_pool_max_by_hand():
    """The Triton max kernel: first of equal maxima takes the gradient, NaN is skipped."""
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 1, 3] = x[0, 0, 2, 4] = 7.0
    x[0, 0, 4, 4] = float("nan")
    x.requires_grad_(True)
    boxes = torch.tensor([[0, 1.0, 1.0, 4.0, 4.0]])
    with use_backend("triton"):
        out = roi_pool(x, boxes, 2)
        out.backward(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
    assert out[0, 0].tolist() == [[0.0, 7.0], [0.0, 0.0]]
    expected = torch.zeros(6, 6)
    expected[1, 1], expected[1, 3], expected[3, 1], expected[3, 3] = 1.0, 2.0, 3.0, 4.0
    assert torch.equal(x.grad[0, 0], expected)


@interpreted
def test_adaptive_grid_cap_applies(monkeypatch):
    """The adaptive grid cap (shared geometry) bounds the Triton loops too: with the cap set to
    2, a large RoI's adaptive result is the fixed 2 x 2 grid's."""
    from torchdcn.ops import _roi_common

    monkeypatch.setattr(_roi_common, "MAX_ADAPTIVE_GRID", 2)
    x = torch.randn(1, 3, 7, 9, generator=torch.Generator().manual_seed(3))
    boxes = torch.tensor([[0, -4000.0, -3000.0, 5000.0, 6000.0]])
    with use_backend("triton"):
        adaptive = roi_align(x, boxes, 2, SCALE, -1, aligned=True)
        fixed = roi_align(x, boxes, 2, SCALE, 2, aligned=True)
    assert torch.equal(adaptive, fixed)
