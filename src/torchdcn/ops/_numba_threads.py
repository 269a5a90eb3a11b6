"""How many Numba threads a CPU kernel call runs on: small calls run on fewer threads."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import numba
import torch

# Below this many channel-sample products per thread, waking more threads costs more than it saves
# (a parallel launch costs milliseconds on a loaded machine; a tiny RoI batch takes microseconds).
_WORK_PER_THREAD = 1 << 16

F = TypeVar("F", bound=Callable)

_started = False


def _start_numba_passive() -> None:
    """Start Numba's OpenMP runtime with passive waiting (once, before its first use).

    Numba's ``omp`` layer loads its own libgomp (not PyTorch's) when its threads first start, and
    libgomp reads ``OMP_WAIT_POLICY`` right then: set for that moment only, Numba's idle threads
    sleep instead of spinning against PyTorch's next parallel region, whatever was imported
    first, while PyTorch's own runtime keeps the user's (or libgomp's default) policy. A policy
    the user set is left alone."""
    global _started
    if _started:
        return
    _started = True
    if "OMP_WAIT_POLICY" in os.environ:
        numba.get_num_threads()
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        numba.get_num_threads()  # loads the threading layer (and its libgomp) now
    finally:
        del os.environ["OMP_WAIT_POLICY"]


@contextlib.contextmanager
def threads(work: int | None = None) -> Iterator[int]:
    """Run the kernels inside on as many Numba threads as ``work`` deserves (``None``: all that
    are allowed), never more than
    torch's own thread count (``torch.set_num_threads`` is the user's budget for both); yields
    that number.

    Numba's OpenMP layer sets the process's OpenMP thread count when it launches a parallel
    region, and torch reads its count from the same OpenMP runtime: torch's count is put back
    inside too (the first call in a process, which starts Numba's pool, found it raised to all
    cores, so that call's products ran on more threads, took another route and gave other bits
    than later calls) and both counts on the way out, so a deformable layer never changes what
    ``torch.get_num_threads()`` says.
    """
    torch_threads = torch.get_num_threads()  # before Numba's first call starts its pool
    _start_numba_passive()
    available = numba.get_num_threads()
    use = max(1, min(available, torch_threads))
    if work is not None:
        use = max(1, min(use, work // _WORK_PER_THREAD))
    numba.set_num_threads(use)
    if torch.get_num_threads() != torch_threads:  # starting Numba's pool reset torch's count
        torch.set_num_threads(torch_threads)
    try:
        yield use
    finally:
        numba.set_num_threads(available)
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


def thread_budget(fn: F) -> F:
    """Decorate a kernel entry point to run inside :func:`threads` (all allowed threads)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with threads():
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]
