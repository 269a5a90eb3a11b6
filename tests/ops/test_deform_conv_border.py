"""deform_conv2d's offset gradient at sampling points exactly on the border lines -1, H - 1 and H:
the right derivative (torchvision's rule, also used at interior integer points), on every backend.

A fresh layer with padding has zero offsets, so its border taps sit exactly on y = -1 / x = -1: they
read 0, but moving them inwards reads row 0, so their gradient is not 0. Between integer positions
the sampled map is linear along one coordinate, so the one-sided difference quotient with a step
of 1/4 cell *is* the right derivative (up to rounding), with no truncation error. The Triton
kernels (float32) run under the Triton interpreter in a child process (``TRITON_INTERPRET=1`` must
be set before triton is imported).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from torchdcn.ops import deform_conv2d, use_backend

STEP = 0.25  # cells; a multiple of a power of two, so y + STEP is exact


def inputs(offsets: str, dtype=torch.float64, seed=0):
    """A padded 3x3 layer on a 4 x 5 map (taps reach y = -1 and y = H = 4 with zero offsets),
    with a mask, and an output gradient; ``offsets`` "zero" or "integer" (in [-2, 2])."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64)
    m = torch.rand(1, 9, 4, 5, generator=gen, dtype=torch.float64) + 0.5
    g = torch.randn(1, 3, 4, 5, generator=gen, dtype=torch.float64)
    if offsets == "zero":
        off = torch.zeros(1, 18, 4, 5, dtype=torch.float64)
    else:
        off = torch.randint(-2, 3, (1, 18, 4, 5), generator=gen).double()
    return [t.to(dtype) for t in (x, off, w, m, g)]


def tap_positions(off: torch.Tensor) -> torch.Tensor:
    """``[1, 18, 4, 5]``: the coordinate each offset entry moves (y: even channels, x: odd)."""
    k = torch.arange(9)
    oy = torch.arange(4).view(1, 1, 4, 1)
    ox = torch.arange(5).view(1, 1, 1, 5)
    base_y = (oy - 1 + (k // 3).view(1, 9, 1, 1)).expand(1, 9, 4, 5)
    base_x = (ox - 1 + (k % 3).view(1, 9, 1, 1)).expand(1, 9, 4, 5)
    return torch.stack([base_y, base_x], 2).reshape(1, 18, 4, 5) + off


def gradient_and_quotients(
    backend: str, offsets: str, dtype, border_only: bool
) -> tuple[torch.Tensor, ...]:
    """The offset gradient of ``(out * g).sum()`` and its right difference quotients for every
    offset entry, or (``border_only``) the entries whose tap is on -1, H - 1 or H (float64
    results, flat), and the positions those entries move."""
    x, off, w, m, g = inputs(offsets, dtype)
    pos = tap_positions(off.double()).flatten()
    entries = torch.arange(off.numel())
    if border_only:
        entries = entries[(pos == -1) | (pos == 3) | (pos == 4)]
    with use_backend(backend):
        leaf = off.clone().requires_grad_()
        out = deform_conv2d(x, leaf, w, padding=1, mask=m)
        (grad,) = torch.autograd.grad(out, leaf, g)
        base = (out.detach().double() * g.double()).sum()
        # one image per entry, that entry moved by STEP: every quotient in one call
        p = len(entries)
        bumped = off.reshape(1, -1).repeat(p, 1)
        bumped[torch.arange(p), entries] += STEP
        up = deform_conv2d(
            x.expand(p, -1, -1, -1), bumped.view(p, *off.shape[1:]), w, padding=1,
            mask=m.expand(p, -1, -1, -1),
        )  # fmt: skip
        quotient = ((up.double() * g.double()).sum((1, 2, 3)) - base) / STEP
    return grad.double().flatten()[entries], quotient, pos[entries]


def check(backend: str, offsets: str, dtype, tol: float, border_only: bool = False) -> dict:
    grad, quotient, pos = gradient_and_quotients(backend, offsets, dtype, border_only)
    on_minus_one = pos == -1
    report = {
        "max_error": float((grad - quotient).abs().max()),
        "at_minus_one": int(on_minus_one.sum()),
        "nonzero_at_minus_one": int((quotient[on_minus_one].abs() > 1e-3).sum()),
        "at_last_row": int(((pos == 3) | (pos == 4)).sum()),
    }
    torch.testing.assert_close(grad, quotient, rtol=tol, atol=tol)
    return report


@pytest.mark.parametrize("offsets", ["zero", "integer"])
@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_offset_gradient_on_the_border_is_the_right_derivative(backend, offsets):
    report = check(backend, offsets, torch.float64, 1e-9)
    # the border lines are really hit, and the -1 taps have a gradient the old rule zeroed
    assert report["at_minus_one"] >= 8 and report["nonzero_at_minus_one"] >= 4
    assert report["at_last_row"] >= 8


def test_border_taps_read_zero_and_nan_offsets_stay_inert():
    """Forward values unchanged: a tap on -1 or H reads 0 (a zero-offset padded layer is
    conv2d); a NaN/inf offset reads 0 and gets zero gradient, next to a tap on -1."""
    x, off, w, _, g = inputs("zero")
    expected = torch.nn.functional.conv2d(x, w, padding=1)
    off[0, 0, 1, 1] = float("nan")  # tap (0, 0) of output (1, 1): y = NaN
    off[0, 3, 2, 0] = float("inf")  # tap (0, 1) of output (2, 0): x = inf
    expected[0, :, 1, 1] -= w[:, :, 0, 0] @ x[0, :, 0, 0]
    expected[0, :, 2, 0] -= w[:, :, 0, 1] @ x[0, :, 1, 0]
    for backend in ("numba", "reference"):
        with use_backend(backend):
            leaf = off.clone().requires_grad_()
            out = deform_conv2d(x, leaf, w, padding=1)
            (grad,) = torch.autograd.grad(out, leaf, g)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
        assert grad[0, 0, 1, 1] == 0 and grad[0, 1, 1, 1] == 0
        assert grad[0, 2, 2, 0] == 0 and grad[0, 3, 2, 0] == 0
        assert grad[0, 0, 0, 1] != 0  # the tap (0, 0) of output (0, 1) sits on y = -1


CHILD = """
import importlib.util, json, sys, torch
spec = importlib.util.spec_from_file_location("border", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
print(json.dumps([mod.check("triton", o, torch.float32, 1e-4, True) for o in sys.argv[2:]]))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
@pytest.mark.parametrize(
    "offsets", ["zero", pytest.param("integer", marks=pytest.mark.slow)]
)  # the interpreter takes ~20 s per case
def test_triton_offset_gradient_on_the_border_in_the_interpreter(offsets):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, __file__, offsets], env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(r["nonzero_at_minus_one"] >= 4 for r in reports), reports
