"""The environment variables TORCHDCN_BACKEND and TORCHDCN_WORKSPACE_MB, each set in
the environment of a fresh process (they are read at import or at every call, so setting them in
this process would test nothing) whose script reports what they did."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

# Runs one float32 forward and backward (one conv group, N = 1) and reports which routes ran.
PROBE = r"""
import json
import torch
from torchdcn.ops import _backend, _deform_conv_cpu, _deform_conv_ref, deform_conv2d
from torchdcn.ops import workspace_limit

calls = {"reference": 0, "chunks": []}

def counting(name, fn):
    def wrapper(*args, **kwargs):
        calls[name] += 1
        return fn(*args, **kwargs)
    return wrapper

def chunks(batch, item):
    out = list(original_chunks(batch, item))
    calls["chunks"].append([b - a for a, b in out])
    return iter(out)

_deform_conv_ref.deform_conv2d_reference = counting(
    "reference", _deform_conv_ref.deform_conv2d_reference)
original_chunks = _deform_conv_cpu.batch_chunks
_deform_conv_cpu.batch_chunks = chunks

gen = torch.Generator().manual_seed(0)
x = torch.randn(3, 16, 24, 24, generator=gen, requires_grad=True)
off = torch.randn(3, 18, 24, 24, generator=gen)
w = torch.randn(8, 16, 3, 3, generator=gen)
g = torch.randn(3, 8, 24, 24, generator=gen)
y = deform_conv2d(x, off, w, padding=1)
y.backward(g)
print(json.dumps({
    "backend": _backend.select_backend(torch.device("cpu"), torch.float32),
    "workspace": workspace_limit(),
    "calls": calls,
    "y": y.detach().flatten()[:50].tolist(),
    "grad": x.grad.flatten()[:50].tolist(),
}))
"""


@functools.cache
def _default() -> dict:
    """The probe with no TORCHDCN_ variable set (shared by the tests)."""
    return _probe()


def _probe(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDCN_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fails(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDCN_")}
    done = subprocess.run([sys.executable, "-c", code], env={**base, **env},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode != 0, done.stdout
    return done.stderr


def _close(a: list[float], b: list[float], tol: float) -> bool:
    return all(abs(p - q) <= tol * (1 + abs(q)) for p, q in zip(a, b, strict=True))


def test_removed_mlas_variable_changes_nothing():
    """TORCHDCN_MLAS chose a matrix-product route that no longer exists: set to anything, the
    package imports and computes what it computes without it."""
    default, legacy = _default(), _probe(TORCHDCN_MLAS="0")
    assert _close(legacy["y"], default["y"], 0) and _close(legacy["grad"], default["grad"], 0)


def test_torchdcn_backend_env_forces_reference():
    default = _default()
    forced = _probe(TORCHDCN_BACKEND="reference")
    assert default["backend"] == "numba" and default["calls"]["reference"] == 0
    assert forced["backend"] == "reference" and forced["calls"]["reference"] > 0
    assert forced["calls"]["chunks"] == []
    assert _close(forced["y"], default["y"], 1e-4)
    assert _close(forced["grad"], default["grad"], 1e-4)
    err = _fails(
        "import torch\nfrom torchdcn.ops import deform_conv2d\n"
        "deform_conv2d(torch.ones(1, 1, 3, 3), torch.zeros(1, 2, 3, 3), torch.ones(1, 1, 1, 1))",
        TORCHDCN_BACKEND="fastest",
    )
    assert "TORCHDCN_BACKEND must be one of" in err and "'fastest'" in err


def test_torchdcn_workspace_mb_env_bounds_the_batch_chunks():
    default = _default()
    small = _probe(TORCHDCN_WORKSPACE_MB="0.25")
    assert default["workspace"] == 256 * 2**20 and small["workspace"] == 2**18
    # forward: one chunk of 3 images by default; a 16x26x26 float32 padded copy is 43 KiB, so
    # 0.25 MiB holds 5 forward images; the backward's share (padded copies for the copy and
    # every thread's accumulator, plus the output gradient) allows fewer per chunk
    assert default["calls"]["chunks"] == [[3], [3]]
    fwd, bwd = small["calls"]["chunks"]
    assert fwd == [3] and len(bwd) > 1 and sum(bwd) == 3
    assert _close(small["grad"], default["grad"], 1e-5)
    err = _fails("import torchdcn.ops", TORCHDCN_WORKSPACE_MB="lots")
    assert "TORCHDCN_WORKSPACE_MB must be a positive number of MiB, got 'lots'" in err
