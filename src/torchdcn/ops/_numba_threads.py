"""How many Numba threads a CPU kernel call runs on: small calls run on fewer threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numba

# Below this many channel-sample products per thread, waking more threads costs more than it saves
# (a parallel launch costs milliseconds on a loaded machine; a tiny RoI batch takes microseconds).
_WORK_PER_THREAD = 1 << 16


@contextlib.contextmanager
def threads(work: int) -> Iterator[int]:
    """Run the kernels inside on as many Numba threads as ``work`` deserves; yields that number."""
    available = numba.get_num_threads()
    use = max(1, min(available, work // _WORK_PER_THREAD))
    numba.set_num_threads(use)
    try:
        yield use
    finally:
        numba.set_num_threads(available)
