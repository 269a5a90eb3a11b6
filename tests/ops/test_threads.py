"""The CPU kernels run on torch's thread budget and leave torch's thread count as they found it.

Numba's OpenMP layer sets the process's OpenMP thread count when its pool starts and torch reads
its count from the same runtime: before the fix, the first deformable call turned
``torch.set_num_threads(1)`` into 2 threads, and the deformable convolution ran on every Numba
thread whatever torch was told; later the count was restored on the way out but not inside the
first call, whose products ran on 2 threads (another route, other bits). Run in fresh
processes: the pool starts once per process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import torch

    torch.set_num_threads({threads})  # before torchdcn (and Numba's pool) is imported
    import numba
    import torchdcn
    from torchdcn.nn import DeformConv2dPack, ModulatedDeformConv2dPack
    from torchdcn.ops import _deform_conv_cpu, deform_roi_pool, nms

    seen = []  # Numba's thread count at each deformable-convolution kernel call

    def spy(name):
        kernel = getattr(_deform_conv_cpu, name)

        def call(*args):
            seen.append(numba.get_num_threads())
            return kernel(*args)

        setattr(_deform_conv_cpu, name, call)

    for name in ("columns_kernel", "grad_kernel_images", "grad_kernel_parts"):
        spy(name)
    torch_seen = []  # torch's thread count inside the op, where its products choose a route
    product_init = _deform_conv_cpu._Product.__init__

    def product_spy(self, *args, **kwargs):
        torch_seen.append(torch.get_num_threads())
        product_init(self, *args, **kwargs)

    _deform_conv_cpu._Product.__init__ = product_spy
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    for kind in (DeformConv2dPack, ModulatedDeformConv2dPack):
        layer = kind(8, 8, 3, padding=1)
        torch.nn.init.normal_(layer.conv_offset.weight, std=0.1)
        layer(x).square().sum().backward()
        assert torch.get_num_threads() == {threads}, ("deform conv", torch.get_num_threads())
    rois = torch.tensor([[0, 1.0, 1.0, 9.0, 9.0]])
    offset = torch.randn(1, 2, 3, 3, requires_grad=True)
    deform_roi_pool(x, rois, offset, 3, 1.0, 2).sum().backward()
    assert torch.get_num_threads() == {threads}, ("deform_roi_pool", torch.get_num_threads())
    boxes = torch.rand(50, 4).cumsum(1)
    nms(boxes, torch.rand(50), 0.5)
    assert torch.get_num_threads() == {threads}, ("nms", torch.get_num_threads())
    assert seen and max(seen) <= {threads}, seen
    assert set(torch_seen) == {{{threads}}}, torch_seen  # the first call's too
    print("ok", torch.get_num_threads(), sorted(set(seen)))
    """
)


@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_keep_torch_thread_count(threads):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(threads=threads)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"ok {threads}"), done.stdout


def test_thread_budget_is_torch_count():
    import numba
    import torch

    from torchdcn.ops._numba_threads import threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with threads() as n:
            assert n == 1 and numba.get_num_threads() == 1
        with threads(work=1) as n:  # tiny work: one thread whatever the budget
            assert n == 1
        torch.set_num_threads(2)
        with threads() as n:
            assert n == min(2, numba.config.NUMBA_NUM_THREADS)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# Imports torch before torchdcn (as most users do), runs one kernel, then asks every loaded
# libgomp for its settings (OpenMP 5.1 omp_display_env, printed on stderr).
POLICY = textwrap.dedent(
    """
    import ctypes, os, sys
    import numba, torch, torchdcn
    from torchdcn.ops import deform_conv2d
    assert os.environ.get("OMP_WAIT_POLICY") == {before!r}, "import changed the environment"
    deform_conv2d(torch.randn(1, 4, 5, 5), torch.randn(1, 18, 5, 5), torch.randn(4, 4, 3, 3),
                  padding=1)
    assert os.environ.get("OMP_WAIT_POLICY") == {before!r}, "a kernel changed the environment"
    print(numba.threading_layer(), flush=True)
    maps = open("/proc/self/maps").read().splitlines()
    for path in sorted({{line.split()[-1] for line in maps if "libgomp" in line}}):
        if "torch" not in path:  # Numba's runtime
            sys.stderr.flush()
            ctypes.CDLL(path).omp_display_env(0)
    """
)


@pytest.mark.parametrize("user_policy", [None, "ACTIVE"])
def test_numba_runtime_waits_passively_unless_user_chose(user_policy):
    """Numba's OpenMP runtime starts with passive waiting whatever was imported first, without
    touching the process environment (so PyTorch's runtime keeps its own policy); a policy the
    user set is respected."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_policy:
        env["OMP_WAIT_POLICY"] = user_policy
    done = subprocess.run(
        [sys.executable, "-c", POLICY.format(before=user_policy)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    if done.stdout.strip() != "omp":
        pytest.skip(f"Numba's threading layer is {done.stdout.strip()!r}, not OpenMP")
    assert f"OMP_WAIT_POLICY = '{user_policy or 'PASSIVE'}'" in done.stderr, done.stderr[-2000:]
