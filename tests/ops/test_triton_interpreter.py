"""The Triton deform_conv2d kernels, run on CPU by the Triton interpreter, against the reference.

Triton chooses between compiling and interpreting when a function is decorated, its own
``triton.language`` helpers included, so ``TRITON_INTERPRET=1`` must be set before triton is first
imported. When this module is collected first in a CPU-only process it sets the variable and runs
the tests here; otherwise (triton already imported, or a GPU present whose later tests want
compiled kernels) one test reruns this file in a child process with the variable set. Shapes are
tiny: the interpreter runs every program in Python.
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

from torchdcn.ops import deform_conv2d, set_workspace_limit, use_backend  # noqa: E402

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="the Triton kernels need triton installed")
interpreted = pytest.mark.skipif(not IN_PROCESS, reason="run by test_in_interpreter_process")


@pytest.mark.skipif(IN_PROCESS, reason="the interpreter tests run in this process")
def test_in_interpreter_process():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]


def make_inputs(n, c, c_out, h, w, kernel, stride, padding, dilation, groups, og, mask, bias,
                dtype=torch.float32, scale=2.0, seed=0):  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    x = torch.randn(n, c, h, w, generator=gen)
    # offsets large enough to reach past the border, so zero padding and invalid points are hit
    offset = scale * torch.randn(n, 2 * og * kh * kw, ho, wo, generator=gen)
    weight = torch.randn(c_out, c // groups, kh, kw, generator=gen) / (c // groups * kh * kw) ** 0.5
    b = torch.randn(c_out, generator=gen) if bias else None
    m = torch.rand(n, og * kh * kw, ho, wo, generator=gen) if mask else None
    grad = torch.randn(n, c_out, ho, wo, generator=gen)
    cast = [None if t is None else t.to(dtype) for t in (x, offset, weight, b, m)]
    return cast, dict(stride=stride, padding=padding, dilation=dilation), grad.to(dtype)


def run(backend, tensors, conv, grad):
    """Output and gradients ``[y, d input, d offset, d weight, (d bias), (d mask)]``."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    x, offset, weight, bias, mask = leaves
    with use_backend(backend):
        y = deform_conv2d(x, offset, weight, bias, mask=mask, **conv)
        y.backward(grad)
    return [y.detach()] + [t.grad for t in leaves if t is not None]


def assert_close_all(got, want, rtol=1e-4, atol=1e-4):
    names = ["output", "input", "offset", "weight", "bias/mask", "mask"]
    for name, a, b in zip(names, got, want):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


# (N, C_in, C_out, H, W, kernel, stride, padding, dilation, groups, offset_groups, mask, bias)
CONFIGS = {
    "v2": (2, 4, 6, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True),
    "v1-nobias": (2, 4, 6, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, False, False),
    "groups": (1, 6, 4, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2, 3, True, True),
    "offset-groups": (2, 8, 4, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, True, False),
    "stride-dilation": (1, 4, 5, 7, 8, (3, 2), (2, 1), (2, 1), (2, 2), 1, 1, True, True),
    "pointwise": (1, 4, 3, 5, 5, (1, 1), (1, 1), (0, 0), (1, 1), 1, 4, True, True),
    # several channel pieces per group and two weight-gradient splits (84 positions > BLOCK_M)
    "wide": (2, 40, 20, 6, 7, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, True),
}


@interpreted
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_reference(name):
    tensors, conv, grad = make_inputs(*CONFIGS[name])
    assert_close_all(run("triton", tensors, conv, grad), run("reference", tensors, conv, grad))


# NOTE: the interpreter runs a grid's programs one after another, so the bitwise-repeat check
# below cannot fail here even if the atomics-free deterministic path were broken; it only shows
# that deterministic mode computes the right values. Only a run on a GPU can show that it repeats.
# The CPU kernels' repeatability is tested in tests/ops/test_deform_conv.py.
@interpreted
@pytest.mark.parametrize("name", ["v2", "wide"])
def test_deterministic_matches_reference_and_repeats_bitwise(name):
    tensors, conv, grad = make_inputs(*CONFIGS[name])
    want = run("reference", tensors, conv, grad)
    torch.use_deterministic_algorithms(True)
    first = run("triton", tensors, conv, grad)
    second = run("triton", tensors, conv, grad)
    assert_close_all(first, want)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@interpreted
def test_deterministic_batch_chunks():
    """A workspace of one image makes the deterministic input gradient run image by image."""
    tensors, conv, grad = make_inputs(*CONFIGS["offset-groups"])
    want = run("reference", tensors, conv, grad)
    torch.use_deterministic_algorithms(True)
    set_workspace_limit(1)
    got = run("triton", tensors, conv, grad)
    assert_close_all(got, want)


KINDS = ["dense", "sum", "sum1", "strided", "channel-major", "channels-last"]


def _backprop(kind, y, leaves, grad):
    """Gradients of ``leaves`` for an output gradient with ``grad``'s values laid out as ``kind``
    (``sum`` and ``sum1`` are the expanded, stride-0 gradients of those losses)."""
    if kind == "sum":
        return torch.autograd.grad(y.sum(), leaves, retain_graph=True)
    if kind == "sum1":
        return torch.autograd.grad((y.sum(1) * grad[:, 0]).sum(), leaves, retain_graph=True)
    if kind == "strided":
        wide = torch.zeros(*grad.shape[:3], 2 * grad.shape[3])
        wide[..., ::2] = grad
        view = wide[..., ::2]
    elif kind == "channel-major":
        view = grad.transpose(0, 1).contiguous().transpose(0, 1)
    elif kind == "channels-last":
        view = grad.contiguous(memory_format=torch.channels_last)
    else:
        view = grad
    return torch.autograd.grad(y, leaves, view, retain_graph=True)


@interpreted
@pytest.mark.parametrize(
    "n,one_image,kinds",
    [
        (1, False, KINDS),
        (3, False, ["sum1", "channel-major"]),
        (3, True, ["sum", "channels-last"]),
        pytest.param(3, False, KINDS, marks=pytest.mark.slow),
        pytest.param(3, True, KINDS, marks=pytest.mark.slow),
    ],
    ids=["n1", "n3", "n3-one-image-chunks", "n3-all", "n3-one-image-chunks-all"],
)
def test_upstream_gradient_layouts(n, one_image, kinds):
    """Every layout of the output gradient (dense, expanded by ``sum()``/``sum(1)``, strided,
    channel-major, channels-last) against the reference on the same values; the CPU routes run
    the same cases in tests/ops/test_deform_conv_layouts.py. One forward, a backward per layout;
    the interpreter is slow, so batch 3 runs two layouts each unless the slow tests run."""
    config = (n, 4, 5, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, True, True)
    tensors, conv, grad = make_inputs(*config)
    if one_image:
        set_workspace_limit(1)
    results = {}
    for backend in ("triton", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        x, offset, weight, bias, mask = leaves
        with use_backend(backend):
            y = deform_conv2d(x, offset, weight, bias, mask=mask, **conv)
            results[backend] = {k: [y.detach(), *_backprop(k, y, leaves, grad)] for k in kinds}
    for kind in kinds:
        assert_close_all(results["triton"][kind], results["reference"][kind])


@interpreted
def test_zero_offsets_equal_conv2d():
    tensors, conv, _ = make_inputs(*CONFIGS["v1-nobias"], scale=0.0)
    x, offset, weight, _, _ = tensors
    with use_backend("triton"):
        y = deform_conv2d(x, offset, weight, **conv)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, weight, **conv))


@interpreted
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_in_own_dtype(dtype):
    """16-bit tensors reach the kernels as they are and accumulate in float32: the result is
    close to float32 arithmetic on the same (rounded) values and keeps the dtype."""
    tensors, conv, grad = make_inputs(*CONFIGS["v2"], dtype=dtype)
    got = run("triton", tensors, conv, grad)
    want = run("reference", [t.float() for t in tensors], conv, grad.float())
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    for a, b in zip(got, want):
        assert a.dtype == dtype
        scale = b.abs().max().item()
        assert (a.float() - b).abs().max().item() <= tol * scale


@interpreted
def test_float64_uses_reference():
    tensors, conv, grad = make_inputs(*CONFIGS["groups"], dtype=torch.float64)
    got = run("triton", tensors, conv, grad)
    assert_close_all(got, run("reference", tensors, conv, grad), rtol=1e-12, atol=1e-12)


@interpreted
def test_empty_batch():
    tensors, conv, grad = make_inputs(0, 4, 6, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1,
                                      True, True)  # fmt: skip
    y, g_x, g_off, g_w, g_b, g_m = run("triton", tensors, conv, grad)
    assert y.shape == (0, 6, 5, 6) and g_x.shape == (0, 4, 5, 6) and g_m.shape == (0, 9, 5, 6)
    assert g_w.abs().sum() == 0 and g_b.abs().sum() == 0 and g_off.numel() == 0


@interpreted
def test_non_finite_offsets_read_zero():
    tensors, conv, grad = make_inputs(*CONFIGS["v2"])
    offset = tensors[1]
    offset[0, :, 1, 2] = float("nan")
    offset[1, 3, 0, 0] = float("inf")
    offset[1, 4, 2, 2] = -1e30
    got = run("triton", tensors, conv, grad)
    assert all(torch.isfinite(t).all() for t in got)
    assert_close_all(got, run("reference", tensors, conv, grad))


@interpreted
@pytest.mark.parametrize("deterministic", [False, True])
def test_opcheck_strides_match_fake(deterministic):
    """The registered ops' fake implementations promise the strides the Triton kernels return."""
    tensors, conv, grad = make_inputs(*CONFIGS["groups"])
    x, offset, weight, bias, mask = tensors
    args = (x, offset, mask, weight, bias, *conv["stride"], *conv["padding"], *conv["dilation"])
    torch.use_deterministic_algorithms(deterministic)
    with use_backend("triton"):
        checks = ("test_schema", "test_faketensor")
        torch.library.opcheck(torch.ops.torchdcn.deform_conv2d.default, args, test_utils=checks)
        backward = torch.ops.torchdcn.deform_conv2d_backward.default
        torch.library.opcheck(backward, (grad, *args), test_utils=checks)


# Every kernel of both Triton modules compiled ahead of time for an H100 (sm_90) by Triton's own
# toolchain (ptxas ships with triton), in a child process without the interpreter: this catches
# what the interpreter accepts but the compiler rejects. No GPU is needed.
COMPILE_ALL = r"""
import inspect, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from torchdcn.ops import _deform_conv_triton as dc, _roi_aligned_triton as ra
from torchdcn.ops import _roi_avg_triton as rv, _roi_max_triton as rm, _sorted_gather_triton as sg

INT_PTRS = {"pieces_ptr": "*i32", "q_start_ptr": "*i32", "g_start_ptr": "*i32", "perm_ptr": "*i32",
            "seg_ptr": "*i32", "int_ptr": "*i32", "bins_ptr": "*i32", "img_ptr": "*i32",
            "key_ptr": "*i64", "first_ptr": "*i64", "row_ptr": "*i64"}
F32_PTRS = ("part_ptr", "gcol_ptr", "frac_ptr", "coef_ptr", "src_ptr")

def build(fn, data, consts, **types):
    params = list(inspect.signature(fn.fn).parameters)
    sig = {p: "constexpr" if p in consts else types.get(p) or INT_PTRS.get(p)
           or ("*fp32" if p in F32_PTRS else data if p.endswith("_ptr") else "i32") for p in params}
    fixed = {(params.index(k),): v for k, v in consts.items()}
    src = ASTSource(fn=fn, signature=sig, constexprs=fixed)
    triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})

for elem, data in ((tl.float32, "*fp32"), (tl.bfloat16, "*bf16"), (tl.float16, "*fp16")):
    mm = dict(ELEM=elem, DOT=elem, PREC="ieee" if elem == tl.float32 else "tf32", BLOCK_M=64,
              BLOCK_N=64, BLOCK_C=32, HAS_MASK=True)
    build(dc._forward_kernel, data, {**mm, "HAS_BIAS": True})
    build(dc._grad_weight_kernel, data, mm)
    for det in (False, True):
        build(dc._grad_sample_kernel, data, {**mm, "DETERMINISTIC": det}, gx_ptr="*fp32")
    roi = dict(PS=True, HAS_OFF=True, HAS_MASK=True, BLOCK_B=64)
    build(ra._align_forward_kernel, data, {**roi, "BLOCK_C": 32})
    for scatter in (False, True):
        build(ra._align_backward_kernel, data, {**roi, "BLOCK_C": 32, "NEED_GEO": True,
              "SCATTER": scatter}, gx_ptr="*fp32")
    build(ra._align_points_kernel, data, roi)
    for backward in (False, True):
        build(rv._integer_kernel, data, dict(PS=False, BACKWARD=backward, BLOCK_B=64, BLOCK_C=32),
              out_ptr="*fp32" if backward else data)
for acc, data in ((tl.float32, "*fp32"), (tl.float64, "*fp64")):
    build(sg._gather_kernel, data, dict(BILINEAR=acc == tl.float32, ACCUMULATE=True, ACC=acc,
          BLOCK_PIX=32, BLOCK_C=32), src_ptr="*fp32")
build(rm._max_kernel, "*fp32", dict(NEG=-3.4e38, BLOCK_B=64, BLOCK_C=32), arg_ptr="*i32")
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_ALL], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-5000:]
