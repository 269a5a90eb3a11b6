"""How many Numba threads a CPU kernel call runs on: small calls run on fewer threads."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TypeVar

import numba
import torch

# Below this many channel-sample products per thread, waking more threads costs more than it saves
# (a parallel launch costs milliseconds on a loaded machine; a tiny RoI batch takes microseconds).
_WORK_PER_THREAD = 1 << 16

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def threads(work: int | None = None) -> Iterator[int]:
    """Run the kernels inside on as many Numba threads as ``work`` deserves (``None``: all that
    are allowed), never more than
    torch's own thread count (``torch.set_num_threads`` is the user's budget for both); yields
    that number.

    Numba's OpenMP layer sets the process's OpenMP thread count when it launches a parallel
    region, and torch reads its count from the same OpenMP runtime: both counts are restored on
    the way out, so a deformable layer never changes what ``torch.get_num_threads()`` says.
    """
    torch_threads = torch.get_num_threads()  # before Numba's first call starts its pool
    available = numba.get_num_threads()
    use = max(1, min(available, torch_threads))
    if work is not None:
        use = max(1, min(use, work // _WORK_PER_THREAD))
    numba.set_num_threads(use)
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
