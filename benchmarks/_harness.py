"""Timing and memory helpers shared by the CPU benchmark scripts.

* glibc's adaptive malloc thresholds make timings depend on run order (shared/notes): they are
  pinned here, high for timing (buffers are reused, no page faults) and low while measuring memory
  (every large buffer is its own mapping, so resident memory tracks live memory).
* Peak memory is the rise of the process's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs``) over its resident set before the call.
"""

from __future__ import annotations

import ctypes
import re
import statistics
import time
from collections.abc import Callable

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
try:
    _libc = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: nothing to pin
    _libc = None


def pin_malloc(mmap_threshold: int) -> None:
    """Fix glibc's mmap and trim thresholds (disables their adaptive adjustment)."""
    if _libc is not None:
        _libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        _libc.mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def peak_extra_mib(fn: Callable[[], object]) -> float:
    """MiB by which ``fn()`` raises the process's peak resident memory above its current level."""
    pin_malloc(128 * 1024)
    if _libc is not None:
        _libc.malloc_trim(0)  # hand back what the timing runs left in the heap
    try:
        fn()  # warm: lazy allocations and compilation are not the op's working memory
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024
    except OSError:
        return float("nan")
    finally:
        pin_malloc(1 << 30)


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 2,
    block: int = 5,
    settle: float = 0.05,
) -> dict[str, float]:
    """Median seconds of each function. The functions take turns in blocks of ``block``
    consecutive calls, rounds repeated until each has ``repeats`` calls: every function sees the
    same machine over time, and none is timed right after another library's threads were busy
    (several thread pools share the cores; a call made just after another pool ran pays for it).
    The first call of each block is a warm-up and is not timed, and each block starts after
    ``settle`` seconds of sleep: the previous block's library may keep its threads spinning
    after returning (onnxruntime's pool does; a call of ours made right after an onnxruntime
    block ran 2.7x slower at (64, 32, 12x12)), and the next block should not pay for that."""
    pin_malloc(1 << 30)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    while min(len(s) for s in samples.values()) < repeats:
        for name, fn in fns.items():
            time.sleep(settle)
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def deform_inputs(n: int, c: int, h: int, w: int, seed: int = 0):
    """``(x, weight, offset, mask, grad)`` of a 3x3 v2 deformable layer ``c -> c`` on
    ``[n, c, h, w]``, float32, the first four requiring gradients: N(0, 1) input, offsets and
    output gradient, weights of std 0.05, masks uniform in [0, 1)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, requires_grad=True)
    weight = (0.05 * torch.randn(c, c, 3, 3, generator=gen)).requires_grad_()
    offset = torch.randn(n, 18, h, w, generator=gen).requires_grad_()
    mask = torch.rand(n, 9, h, w, generator=gen).requires_grad_()
    return x, weight, offset, mask, torch.randn(n, c, h, w, generator=gen)
