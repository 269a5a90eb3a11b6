"""The one dispatcher of every op family: which kernel runs, and in which dtype.

Two rules, written here once and called at each op's entry point:

* :func:`kernel_backend` — ``"reference"``, ``"numba"`` or ``"triton"`` for the tensors that reach
  a kernel. It is :func:`._backend.select_backend` (``auto``: Numba on CPU, Triton on CUDA; or
  the forced backend) with the dtype rules of the kernels: float64 always runs the reference
  (the Triton kernels compute in float32), and the Numba kernels take float32/float64 only.
* :func:`compute_dtype` — float16/bfloat16 are computed in float32 except by the Triton kernels,
  which read them as they are and accumulate in float32. Callers upcast with it before the
  registered op and cast the result back to the caller's dtype.

Each registered op's implementation then branches on the backend name explicitly
(``if backend == "numba": ...``), so the call site shows which module runs.
"""

from __future__ import annotations

import torch

from . import _backend

HALF_DTYPES = (torch.float16, torch.bfloat16)


def kernel_backend(device: torch.device, dtype: torch.dtype) -> str:
    """``"reference"``, ``"numba"`` or ``"triton"``: the kernel for tensors on ``device`` with
    ``dtype`` (after :func:`compute_dtype`'s upcast)."""
    name = _backend.select_backend(device, dtype)
    if name == "triton" and dtype == torch.float64:
        return "reference"
    if name == "numba" and dtype not in (torch.float32, torch.float64):
        return "reference"
    return name


def compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute ``dtype`` tensors on ``device`` in: float32 for
    float16/bfloat16 unless the Triton backend runs (it takes them as they are), else ``dtype``."""
    if dtype in HALF_DTYPES and _backend.select_backend(device, dtype) != "triton":
        return torch.float32
    return dtype
