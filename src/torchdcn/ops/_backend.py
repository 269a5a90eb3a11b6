"""Which kernel runs an op: chosen per call from the tensors' device and dtype.

``auto`` (default) picks Numba on CPU, Triton on CUDA, and the reference elsewhere. The environment
variable ``TORCHDCN_BACKEND`` or :func:`use_backend` forces one (``reference`` to debug a kernel).
Working memory of the batched kernels is bounded by :func:`set_workspace_limit` (bytes, default
256 MiB; environment variable ``TORCHDCN_WORKSPACE_MB``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "reference", "numba", "triton")

_forced: str | None = None


def _workspace_from_env() -> int:
    """``TORCHDCN_WORKSPACE_MB`` (MiB, may be fractional; default 256) in bytes."""
    text = os.environ.get("TORCHDCN_WORKSPACE_MB", "").strip() or "256"
    try:
        mib = float(text)
    except ValueError:
        mib = float("nan")
    if not mib > 0 or mib == float("inf"):
        raise ValueError(f"TORCHDCN_WORKSPACE_MB must be a positive number of MiB, got {text!r}")
    return max(1, int(mib * 2**20))


_workspace_bytes: int = _workspace_from_env()
HAS_NUMBA = importlib.util.find_spec("numba") is not None
HAS_TRITON = importlib.util.find_spec("triton") is not None


def requested_backend() -> str:
    """The backend asked for by :func:`use_backend` or ``TORCHDCN_BACKEND`` (``auto`` if none)."""
    name = _forced or os.environ.get("TORCHDCN_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"TORCHDCN_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


def select_backend(device: torch.device, dtype: torch.dtype) -> str:
    """The kernel to run for tensors on ``device`` with ``dtype`` (after any float16 upcast)."""
    name = requested_backend()
    if name == "auto":
        if device.type == "cpu" and HAS_NUMBA:
            return "numba"
        if device.type == "cuda" and HAS_TRITON and dtype != torch.float64:
            return "triton"
        return "reference"
    if name == "numba" and device.type != "cpu":
        raise ValueError(f"backend 'numba' runs on CPU tensors only, got device {device}")
    if name == "triton" and not HAS_TRITON:
        raise ValueError("backend 'triton' needs the triton package (pip install triton)")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force every op inside the ``with`` block onto backend ``name`` (see :data:`BACKENDS`).

    A context manager only: ``with use_backend("reference"): ...``. Called on its own it
    changes nothing (set ``TORCHDCN_BACKEND`` for a whole process)."""
    global _forced
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def workspace_limit() -> int:
    """Bytes of working memory a batched kernel may use (chunks of the batch are sized by it)."""
    return _workspace_bytes


def set_workspace_limit(nbytes: int) -> None:
    """Bound the extra memory of the batched kernels to ``nbytes`` (at least one image's worth)."""
    global _workspace_bytes
    if nbytes <= 0:
        raise ValueError(f"workspace limit must be positive, got {nbytes}")
    _workspace_bytes = int(nbytes)


def batch_chunks(batch: int, bytes_per_item: int) -> Iterator[tuple[int, int]]:
    """Split ``range(batch)`` into ``(start, stop)`` chunks whose working memory fits the limit."""
    step = max(1, _workspace_bytes // max(1, bytes_per_item))
    for start in range(0, batch, step):
        yield start, min(batch, start + step)
