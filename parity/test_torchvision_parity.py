"""torchdcn against torchvision 0.29.1 itself: every torchvision-named op and module, forward and
backward, on a grid of shapes, arguments and edge cases (``make parity``).

Each case runs the same call with ``torchvision.ops`` and ``torchdcn`` (default arguments where
the case leaves them out, so the defaults are compared too) and compares outputs and the gradients
of every differentiable input for one seeded random output gradient: float64 to 1e-10 (roi_pool
and ps_roi_pool bins exactly), float32 to 1e-5. Known, documented differences are asserted as such
(``test_documented_differences``).
"""

from __future__ import annotations

import pytest
import torch
import torchvision.ops as tv

import torchdcn.nn as dnn
import torchdcn.ops as dcn

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
_BACKEND = ["numba"]  # the backend of the running test (set by the fixture)


@pytest.fixture(autouse=True)
def _note_backend(request):
    callspec = getattr(request.node, "callspec", None)
    _BACKEND[0] = callspec.params.get("backend", "numba") if callspec else "numba"


def _boxes(seed: int, n_img: int, h: int, w: int, scale: float, dtype) -> torch.Tensor:
    """``[K, 5]`` boxes in image pixels: ordinary, partly off, wholly off, zero-width, zero-size,
    inverted, whole-map, integer and half-integer corners, then random ones."""
    sy, sx = h / scale, w / scale
    special = [
        [0, 0.1 * sx, 0.2 * sy, 0.7 * sx, 0.8 * sy],
        [n_img - 1, -0.3 * sx, -0.2 * sy, 0.4 * sx, 0.5 * sy],
        [0, 0.6 * sx, 0.5 * sy, 1.8 * sx, 2.2 * sy],
        [0, 3.0 * sx, 3.0 * sy, 3.5 * sx, 3.9 * sy],
        [n_img - 1, 0.4 * sx, 0.1 * sy, 0.4 * sx, 0.9 * sy],
        [0, 0.5 * sx, 0.5 * sy, 0.8 * sx, 0.3 * sy],
        [0, -1.0, -1.0, sx + 1, sy + 1],
        [n_img - 1, 2.0, 3.0, 9.0, 7.0],
        [0, 1.5, 2.5, 6.5, 4.5],
    ]
    gen = torch.Generator().manual_seed(seed)
    k = 8
    xy = torch.rand(k, 2, generator=gen, dtype=torch.float64) * torch.tensor([sx, sy]) - 2
    wh = torch.rand(k, 2, generator=gen, dtype=torch.float64) * torch.tensor([sx, sy]) * 0.6 + 0.5
    b = torch.randint(0, n_img, (k, 1), generator=gen).double()
    rand = torch.cat([b, xy, xy + wh], 1)
    return torch.cat([torch.tensor(special, dtype=torch.float64), rand]).to(dtype)


def _compare(fn_tv, fn_dcn, tensors, dtype, seed=0, exact=False):
    """Outputs and input gradients (for one random output gradient) of both calls agree."""
    results = []
    for fn in (fn_tv, fn_dcn):
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors]
        out = fn(*leaves)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        diff = [t for t in leaves if t.requires_grad]
        grads = torch.autograd.grad(out, diff, grad, allow_unused=True)
        results.append(
            (out, *[torch.zeros_like(t) if g is None else g for t, g in zip(diff, grads)])
        )
    tol = 0.0 if exact else TOL[dtype]
    for k, (a, b) in enumerate(zip(*results)):
        # exact pooling: outputs bit for bit; gradients too on Numba, which sums them in
        # torchvision's order (the reference backend's autograd sums in another order)
        t = tol if k == 0 or _BACKEND[0] == "numba" else TOL[dtype]
        torch.testing.assert_close(b, a, rtol=t, atol=t, equal_nan=True)


def _map(seed, n, c, h, w, dtype):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(dtype)


DTYPES = [torch.float64, torch.float32]
SCALES = [1.0, 0.5, 0.25]
SIZES = [2, (3, 2), 7]


# ---------------------------------------------------------------------------------------------
# roi_align / RoIAlign


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("ratio", [-1, 0, 2])
@pytest.mark.parametrize("aligned", [None, False, True])
@pytest.mark.parametrize("size", SIZES)
def test_roi_align(backend, dtype, scale, ratio, aligned, size):
    x = _map(1, 2, 3, 9, 11, dtype)
    boxes = _boxes(2, 2, 9, 11, scale, dtype)
    kw = {} if aligned is None else {"aligned": aligned}
    _compare(
        lambda t: tv.roi_align(t, boxes, size, scale, ratio, **kw),
        lambda t: dcn.roi_align(t, boxes, size, scale, ratio, **kw),
        [x],
        dtype,
    )


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_defaults_and_list_boxes(backend, aligned):
    x = _map(3, 3, 4, 8, 8, torch.float64)
    boxes = _boxes(4, 3, 8, 8, 1.0, torch.float64)
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(3)]
    if aligned:
        _compare(
            lambda t: tv.roi_align(t, per_image, 3, aligned=True),
            lambda t: dcn.roi_align(t, per_image, 3, aligned=True),
            [x],
            torch.float64,
        )
    else:  # every default left out
        _compare(
            lambda t: tv.roi_align(t, boxes, 3),
            lambda t: dcn.roi_align(t, boxes, 3),
            [x],
            torch.float64,
        )


@pytest.mark.parametrize("args", [(2, 0.5, 2), (3, 1.0, -1, True), ((2, 3), 0.25, 0, False)])
def test_roi_align_module(backend, args):
    x = _map(5, 2, 3, 9, 11, torch.float64)
    boxes = _boxes(6, 2, 9, 11, args[1], torch.float64)
    _compare(tv.RoIAlign(*args), dnn.RoIAlign(*args), [x, boxes], torch.float64)
    _compare(
        lambda t: tv.RoIAlign(*args)(t, boxes), lambda t: dnn.RoIAlign(*args)(t, boxes),
        [x], torch.float64,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# roi_pool / RoIPool (max pooling: exact, forward and gradient)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("size", [*SIZES, (1, 4)])
def test_roi_pool(backend, dtype, scale, size):
    x = _map(7, 2, 3, 9, 11, dtype)
    boxes = _boxes(8, 2, 9, 11, scale, dtype)
    _compare(
        lambda t: tv.roi_pool(t, boxes, size, scale),
        lambda t: dcn.roi_pool(t, boxes, size, scale),
        [x],
        dtype,
        exact=True,
    )


def test_roi_pool_ties_nan_and_list_boxes(backend):
    x = torch.zeros(2, 2, 6, 7, dtype=torch.float64)
    x[0, 0, 2:4, 2:4] = 1.0  # ties: the first in row-major order takes the gradient
    x[1, 1, 1, 1] = float("nan")  # skipped
    x[1, 0] = -1e39  # at most -FLT_MAX: no cell taken, the bin is -FLT_MAX
    boxes = [torch.tensor([[0.0, 0.0, 6.0, 5.0]]), torch.tensor([[0.0, 0.0, 4.0, 4.0]])]
    boxes = [b.double() for b in boxes]
    _compare(
        lambda t: tv.roi_pool(t, boxes, 2), lambda t: dcn.roi_pool(t, boxes, 2), [x],
        torch.float64, exact=True,
    )  # fmt: skip


@pytest.mark.parametrize("args", [(2, 0.5), (7, 1.0), ((3, 2), 0.25)])
def test_roi_pool_module(backend, args):
    x = _map(9, 2, 3, 9, 11, torch.float64)
    boxes = _boxes(10, 2, 9, 11, args[1], torch.float64)
    _compare(
        lambda t: tv.RoIPool(*args)(t, boxes), lambda t: dnn.RoIPool(*args)(t, boxes),
        [x], torch.float64, exact=True,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# ps_roi_pool / PSRoIPool, ps_roi_align / PSRoIAlign


def _inside_last_cells(boxes, scale, h, w):
    """The boxes whose bins end before the map's last row and column. torchvision's ps_roi_pool
    forward clips bins to ``[0, W - 1]`` but its backward to ``[0, W]``, so its gradient is not
    its forward's derivative for bins reaching the last row or column (its gradcheck fails, see
    ``test_documented_differences``); torchdcn's gradient is the exact derivative of the forward.
    """
    q = torch.tensor(scale, dtype=boxes.dtype)
    c = boxes[:, 1:] * q
    r = torch.trunc(c) + torch.sign(c) * ((c - torch.trunc(c)).abs() >= 0.5).to(c.dtype)
    x_end = torch.maximum(r[:, 2], r[:, 0] + 1)
    y_end = torch.maximum(r[:, 3], r[:, 1] + 1)
    return boxes[(x_end <= w - 1) & (y_end <= h - 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("size", [2, (3, 2), 3])
def test_ps_roi_pool(backend, dtype, scale, size):
    ph, pw = (size, size) if isinstance(size, int) else size
    x = _map(11, 2, 2 * ph * pw, 9, 11, dtype)
    boxes = _boxes(12, 2, 9, 11, scale, dtype)
    out_tv = tv.ps_roi_pool(x, boxes, size, scale)
    torch.testing.assert_close(
        dcn.ps_roi_pool(x, boxes, size, scale), out_tv, rtol=0, atol=TOL[dtype]
    )
    inside = _inside_last_cells(boxes, scale, 9, 11)
    assert len(inside) >= 8
    _compare(
        lambda t: tv.ps_roi_pool(t, inside, size, scale),
        lambda t: dcn.ps_roi_pool(t, inside, size, scale),
        [x],
        dtype,
    )


def _no_empty_grid(boxes, scale, ratio):
    """torchvision's ps_roi_align divides 0 by 0 (NaN) where an adaptive grid has no sample along
    an axis (a zero-size or inverted RoI; a documented difference, tested below): leave those
    boxes out of the common grid."""
    if ratio > 0:
        return boxes
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 4] > boxes[:, 2])
    return boxes[keep]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("ratio", [-1, 0, 2])
@pytest.mark.parametrize("size", [2, (3, 2)])
def test_ps_roi_align(backend, dtype, scale, ratio, size):
    ph, pw = (size, size) if isinstance(size, int) else size
    x = _map(13, 2, 2 * ph * pw, 9, 11, dtype)
    boxes = _no_empty_grid(_boxes(14, 2, 9, 11, scale, dtype), scale, ratio)
    _compare(
        lambda t: tv.ps_roi_align(t, boxes, size, scale, ratio),
        lambda t: dcn.ps_roi_align(t, boxes, size, scale, ratio),
        [x],
        dtype,
    )


def test_ps_defaults_and_modules(backend):
    x = _map(15, 2, 3 * 4, 9, 11, torch.float64)
    boxes = _no_empty_grid(_boxes(16, 2, 9, 11, 1.0, torch.float64), 1.0, -1)
    boxes = _inside_last_cells(_inside_last_cells(boxes, 0.5, 9, 11), 1.0, 9, 11)
    assert len(boxes) >= 5
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(2)]
    pairs = [
        (lambda t: tv.ps_roi_pool(t, boxes, 2), lambda t: dcn.ps_roi_pool(t, boxes, 2)),
        (lambda t: tv.ps_roi_align(t, boxes, 2), lambda t: dcn.ps_roi_align(t, boxes, 2)),
        (lambda t: tv.ps_roi_pool(t, per_image, 2), lambda t: dcn.ps_roi_pool(t, per_image, 2)),
        (lambda t: tv.PSRoIPool(2, 0.5)(t, boxes), lambda t: dnn.PSRoIPool(2, 0.5)(t, boxes)),
        (
            lambda t: tv.PSRoIAlign(2, 0.5, 2)(t, boxes),
            lambda t: dnn.PSRoIAlign(2, 0.5, 2)(t, boxes),
        ),
    ]
    for fn_tv, fn_dcn in pairs:
        _compare(fn_tv, fn_dcn, [x], torch.float64)


def test_documented_differences():
    """The only differences: an adaptive grid with no sample along an axis in ps_roi_align
    (torchvision NaN, here 0), adaptive grids past MAX_ADAPTIVE_GRID samples per bin (torchvision
    uncapped), and ps_roi_pool's gradient at the map's last row and column (torchvision's is not
    the derivative of its forward; torchdcn's is)."""
    x = _map(19, 1, 4, 9, 11, torch.float64).requires_grad_(True)
    box = torch.tensor([[0, 7.3, 3.3, 13.2, 7.2]], dtype=torch.float64)
    assert not torch.autograd.gradcheck(
        lambda t: tv.ps_roi_pool(t, box, 2), (x,), raise_exception=False
    )
    assert torch.autograd.gradcheck(lambda t: dcn.ps_roi_pool(t, box, 2), (x,))
    x = _map(17, 1, 4, 6, 6, torch.float64)
    zero = torch.tensor([[0, 2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    assert torch.isnan(tv.ps_roi_align(x, zero, 2)).all()
    assert torch.equal(dcn.ps_roi_align(x, zero, 2), torch.zeros(1, 1, 2, 2, dtype=torch.float64))
    x = _map(18, 1, 1, 70, 70, torch.float64)
    within = torch.tensor([[0, 0.0, 0.0, 64.0, 64.0]], dtype=torch.float64)  # grid 64 per bin
    torch.testing.assert_close(dcn.roi_align(x, within, 1), tv.roi_align(x, within, 1))
    beyond = torch.tensor([[0, 0.0, 0.0, 69.5, 69.0]], dtype=torch.float64)  # grid 70 > 64
    assert not torch.allclose(dcn.roi_align(x, beyond, 1), tv.roi_align(x, beyond, 1))


# ---------------------------------------------------------------------------------------------
# deform_conv2d / DeformConv2d

CONV_CASES = [
    # (n, c_in, c_out, h, w, k, stride, padding, dilation, groups, offset_groups, mask, bias)
    (2, 4, 6, 7, 8, 3, 1, 1, 1, 1, 1, False, True),
    (2, 4, 6, 7, 8, 3, 1, 1, 1, 1, 1, True, True),
    (1, 4, 4, 9, 7, (3, 2), (2, 1), (1, 0), (1, 2), 2, 2, True, False),
    (3, 6, 4, 6, 6, 3, 2, 2, 2, 1, 3, False, True),
    (2, 8, 8, 5, 6, 1, 1, 0, 1, 4, 2, True, True),
    (1, 2, 3, 4, 4, 3, 1, 0, 1, 1, 1, False, False),
    (2, 4, 4, 6, 5, (1, 3), 1, (0, 1), 1, 2, 4, True, True),
]


def _conv_tensors(case, dtype, seed):
    n, c_in, c_out, h, w, k, stride, padding, dilation, groups, og, has_mask, has_bias = case
    kh, kw = (k, k) if isinstance(k, int) else k
    s = (stride, stride) if isinstance(stride, int) else stride
    p = (padding, padding) if isinstance(padding, int) else padding
    d = (dilation, dilation) if isinstance(dilation, int) else dilation
    ho = (h + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
    wo = (w + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    x = rnd(n, c_in, h, w)
    offset = rnd(n, 2 * og * kh * kw, ho, wo, scale=2.0)  # points off the map too
    weight = rnd(c_out, c_in // groups, kh, kw)
    bias = rnd(c_out) if has_bias else None
    mask = torch.rand(n, og * kh * kw, ho, wo, generator=gen, dtype=torch.float64).to(dtype)
    return x, offset, weight, bias, (mask if has_mask else None), (s, p, d)


@pytest.fixture(params=["auto", "mm", "conv", "grid"])
def products(request, backend, monkeypatch):
    """The CPU kernel's forward product route (``_deform_conv_cpu.PRODUCTS``; "auto" is the
    default, the others are forced): each is compared with torchvision on the numba backend."""
    if backend != "numba" and request.param != "auto":
        pytest.skip("product routes are the numba backend's")
    from torchdcn.ops import _deform_conv_cpu

    monkeypatch.setattr(_deform_conv_cpu, "PRODUCTS", request.param)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_deform_conv2d(backend, products, dtype, case):
    x, offset, weight, bias, mask, (s, p, d) = _conv_tensors(CONV_CASES[case], dtype, case)
    tensors = [t for t in (x, offset, weight, bias, mask) if t is not None]
    has_bias, has_mask = bias is not None, mask is not None

    def call(op):
        def fn(x, offset, weight, *rest):
            it = iter(rest)
            b = next(it) if has_bias else None
            m = next(it) if has_mask else None
            return op(x, offset, weight, b, stride=s, padding=p, dilation=d, mask=m)

        return fn

    _compare(call(tv.deform_conv2d), call(dcn.deform_conv2d), tensors, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offsets", ["zero", "integer", "to_last_rows"])
@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_deform_conv2d_offsets_on_the_border(backend, products, dtype, offsets, case):
    """Sampling points exactly on the lines -1, H - 1 and H (zero offsets of a padded layer put
    the border taps on -1 and H; integer offsets reach every line): outputs and the offset
    gradient, torchvision's right derivative there, agree."""
    x, offset, weight, bias, mask, (s, p, d) = _conv_tensors(CONV_CASES[case], dtype, case + 50)
    gen = torch.Generator().manual_seed(case)
    if offsets == "zero":
        offset = torch.zeros_like(offset)
    elif offsets == "integer":
        offset = torch.randint(-3, 4, offset.shape, generator=gen).to(dtype)
    else:  # every dy / dx moves its tap onto the last row / column (H - 1, W - 1) or onto H, W
        h, w = x.shape[2:]
        kh, kw = weight.shape[2:]
        ho, wo = offset.shape[2:]
        k = torch.arange(kh * kw)
        base_y = (torch.arange(ho) * s[0] - p[0])[None, :, None] + (k // kw * d[0])[:, None, None]
        base_x = (torch.arange(wo) * s[1] - p[1])[None, None, :] + (k % kw * d[1])[:, None, None]
        extra = torch.randint(0, 2, offset.shape, generator=gen)
        target = torch.stack(
            [(h - 1 - base_y).expand(-1, -1, wo), (w - 1 - base_x).expand(-1, ho, -1)], 1
        )
        offset = (
            target.reshape(-1, ho, wo).repeat(offset.shape[1] // (2 * kh * kw), 1, 1) + extra
        ).to(dtype)
    tensors = [t for t in (x, offset, weight, bias, mask) if t is not None]
    has_bias, has_mask = bias is not None, mask is not None

    def call(op):
        def fn(x, offset, weight, *rest):
            it = iter(rest)
            b = next(it) if has_bias else None
            m = next(it) if has_mask else None
            return op(x, offset, weight, b, stride=s, padding=p, dilation=d, mask=m)

        return fn

    _compare(call(tv.deform_conv2d), call(dcn.deform_conv2d), tensors, dtype)


def test_deform_conv2d_defaults(backend):
    x, offset, weight, _, _, _ = _conv_tensors(CONV_CASES[5], torch.float64, 3)
    _compare(tv.deform_conv2d, dcn.deform_conv2d, [x, offset, weight], torch.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_deform_conv2d_module(backend, dtype, case):
    """A torchvision DeformConv2d's state dict loads into torchdcn's; same call style, results."""
    _, c_in, c_out, _, _, k, stride, padding, dilation, groups, _, has_mask, has_bias = CONV_CASES[
        case
    ]
    args = (c_in, c_out, k, stride, padding, dilation, groups, has_bias)
    torch.manual_seed(case)
    theirs = tv.DeformConv2d(*args).to(dtype)
    ours = dnn.DeformConv2d(*args).to(dtype)
    ours.load_state_dict(theirs.state_dict())  # strict: the same keys
    x, offset, _, _, mask, _ = _conv_tensors(CONV_CASES[case], dtype, case + 100)
    tensors = [x, offset] + ([mask] if has_mask else [])
    _compare(theirs, ours, tensors, dtype)
    params_tv = dict(theirs.named_parameters())
    params_dcn = dict(ours.named_parameters())
    assert params_tv.keys() == params_dcn.keys()


# ---------------------------------------------------------------------------------------------
# Signatures: the same argument names and defaults


@pytest.mark.parametrize(
    "name", ["roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool", "deform_conv2d"]
)
def test_signatures(name):
    import inspect

    theirs = inspect.signature(getattr(tv, name)).parameters
    ours = inspect.signature(getattr(dcn, name)).parameters
    for pname, param in theirs.items():
        assert pname in ours, f"{name} lacks argument {pname}"
        assert list(ours).index(pname) == list(theirs).index(pname), pname
        if param.default is not inspect.Parameter.empty:
            mine = ours[pname].default
            mine = (mine, mine) if type(mine) is int and isinstance(param.default, tuple) else mine
            assert mine == param.default, (name, pname)
