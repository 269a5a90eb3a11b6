"""deform_roi_pool / deform_ps_roi_pool: the offset gradient of bin samples exactly on the lines
-1, 0 and H - 1 of the RoIAlign border (SPEC 1) is the right derivative, on every backend.

RoIAlign's border reads row 0 for ``-1 <= y <= 0`` and the last row for ``H - 1 <= y <= H``: the
right derivative is 0 on -1 and H - 1 (the value is constant to the right) and the slope towards row
1 on 0, as at any interior integer. Samples are placed on integers by integer shifts (``gamma *
roi_size = 0.5`` exactly), never on H (where the value jumps to 0). Between integers the sampled
map is linear along one coordinate, so the one-sided difference quotient with a step of 1/4 cell is
the right derivative up to rounding. The Triton kernels (float32) run under the Triton interpreter
in a child process (``TRITON_INTERPRET=1`` must be set before triton is imported).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from torchdcn.ops import deform_ps_roi_pool, deform_roi_pool, use_backend

H, W, C, PH, PW = 4, 5, 2, 2, 2
GAMMA = 0.125  # with RoIs 4 cells wide, one offset unit is half a cell, exactly
STEP = 0.5  # offset units: a quarter of a cell
# aligned=False, scale 1: RoIs 4 x 4 cells; sampling 1: samples at corner + 1, + 3; sampling 2:
# at corner + 0.5, 1.5, 2.5, 3.5
CASES = {
    1: torch.tensor([[0, -2.0, -2.0, 2.0, 2.0], [0, 0.0, -1.0, 4.0, 3.0]], dtype=torch.float64),
    2: torch.tensor([[0, -1.5, -1.5, 2.5, 2.5], [0, -0.5, 0.5, 3.5, 4.5]], dtype=torch.float64),
}


def samples(start: float, ratio: int) -> torch.Tensor:
    """``[bins, ratio]`` sample positions along one axis of a 4-cell RoI starting at ``start``."""
    step = 4 / PH
    return start + torch.arange(PH)[:, None] * step + (torch.arange(ratio) + 0.5) * step / ratio


def inputs(ps: bool, ratio: int, dtype=torch.float64, seed=0):
    """Map, RoIs, offsets putting every sample on an integer in ``[-1, size - 1]`` (many on -1 and
    0), mask and output gradient; also ``pos [R, 2, ph, pw, ratio]``: the samples each offset
    entry moves (along its axis)."""
    gen = torch.Generator().manual_seed(seed)
    rois = CASES[ratio]
    r = rois.shape[0]
    x = torch.randn(1, C * PH * PW if ps else C, H, W, generator=gen, dtype=torch.float64)
    off = torch.zeros(r, 2, PH, PW, dtype=torch.float64)
    pos = torch.zeros(r, 2, PH, PW, ratio, dtype=torch.float64)
    for k in range(r):
        for plane, (col, size) in enumerate([(1, W), (2, H)]):  # plane 0 moves x, plane 1 y
            s = samples(float(rois[k, col]), ratio)  # [bins, ratio]
            for b in range(PH):
                shifts = [t for t in range(-4, 5) if -1 <= s[b].min() + t and s[b].max() + t < size]
                choice = shifts[int(torch.randint(len(shifts), (1,), generator=gen))]
                if b == 0 and k == 0:
                    choice = shifts[0]  # the lowest sample on -1 or its nearest integer
                idx = (k, plane, slice(None), b) if plane == 0 else (k, plane, b, slice(None))
                off[idx] = choice / (GAMMA * 4)
                pos[idx] = s[b] + choice
    mask = torch.rand(r, 1, PH, PW, generator=gen, dtype=torch.float64) + 0.5
    grad = torch.randn(r, C, PH, PW, generator=gen, dtype=torch.float64)
    return [t.to(dtype) for t in (x, rois, off, mask, grad)], pos


def call(ps, x, rois, off, mask, ratio):
    if ps:
        return deform_ps_roi_pool(x, rois, off, (PH, PW), 1.0, ratio, GAMMA, False)
    return deform_roi_pool(x, rois, off, (PH, PW), 1.0, ratio, GAMMA, mask, False)


def check(backend: str, ps: bool, ratio: int, dtype, tol: float) -> dict:
    (x, rois, off, mask, g), pos = inputs(ps, ratio, dtype)
    with use_backend(backend):
        leaf = off.clone().requires_grad_()
        out = call(ps, x, rois, leaf, mask, ratio)
        (grad,) = torch.autograd.grad(out, leaf, g)
        base = (out.detach().double() * g.double()).sum()
        # one copy of all RoIs per offset entry, that entry moved by STEP: one call
        p, r = off.numel(), rois.shape[0]
        bumped = off.reshape(1, -1).repeat(p, 1)
        bumped[torch.arange(p), torch.arange(p)] += STEP
        up = call(
            ps, x, rois.repeat(p, 1), bumped.view(p * r, 2, PH, PW), mask.repeat(p, 1, 1, 1),
            ratio,
        )  # fmt: skip
        value = (up.double().view(p, *g.shape) * g.double()).sum((1, 2, 3, 4))
        quotient = ((value - base) / STEP).view(off.shape)
    torch.testing.assert_close(grad.double(), quotient, rtol=tol, atol=tol)
    on_zero = (pos == 0).any(-1)
    return {
        "on_minus_one": int((pos == -1).any(-1).sum()),
        "on_zero": int(on_zero.sum()),
        "nonzero_on_zero": int((quotient[on_zero].abs() > 1e-3).sum()),
        "on_last": int(((pos == H - 1) | (pos == W - 1)).any(-1).sum()),
    }


@pytest.mark.parametrize("ratio", [1, 2])
@pytest.mark.parametrize("ps", [False, True], ids=["deform_roi_pool", "deform_ps_roi_pool"])
@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_offset_gradient_on_the_border_is_the_right_derivative(backend, ps, ratio):
    report = check(backend, ps, ratio, torch.float64, 1e-9)
    # the lines are really hit; on 0 the gradient is not the clamped side's 0
    assert report["on_minus_one"] >= 2 and report["on_zero"] >= 1, report
    assert report["nonzero_on_zero"] >= 1, report


def test_gradient_on_minus_one_is_zero_and_on_zero_is_the_slope():
    """One sample, by hand: on y = -1 the value is row 0 and stays so to the right (gradient 0);
    on y = 0 the gradient is ``gamma * roi_h * (row 1 - row 0)`` at the sample's column."""
    x = torch.randn(1, 1, H, W, dtype=torch.float64)
    box = torch.tensor([[0, 0.0, -3.0, 4.0, 1.0]], dtype=torch.float64)  # one bin, sample y = -1
    for backend in ("numba", "reference"):
        for shift, expected in (
            (0.0, 0.0),
            (2.0, GAMMA * 4 * float(x[0, 0, 1, 2] - x[0, 0, 0, 2])),
        ):
            off = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
            off[0, 1] = shift  # 2.0: y = -1 + 1 = 0
            off.requires_grad_(True)
            with use_backend(backend):
                out = deform_roi_pool(x, box, off, 1, 1.0, 1, GAMMA, aligned=False)
                (g,) = torch.autograd.grad(out.sum(), off)
            torch.testing.assert_close(out[0, 0, 0, 0], x[0, 0, 0, 2], rtol=0, atol=1e-12)
            assert abs(float(g[0, 1]) - expected) < 1e-12, (backend, shift, float(g[0, 1]))


CHILD = """
import importlib.util, json, sys, torch
spec = importlib.util.spec_from_file_location("border", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
print(json.dumps([mod.check("triton", ps, 2, torch.float32, 1e-4) for ps in (False, True)]))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_triton_offset_gradient_on_the_border_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, __file__], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(r["nonzero_on_zero"] >= 1 for r in reports), reports
