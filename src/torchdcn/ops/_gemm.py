"""Single-precision matrix products for the CPU kernels, on the fastest library present.

PyTorch's CPU matrix product is MKL's, which picks slow code paths on AMD processors. On the
2-core AMD EPYC machines of this project the deformable-conv op ran 1.5-2.4x faster forward and
1.3-1.9x faster forward+backward with its block products in MLAS (onnxruntime's GEMM) than in
oneDNN's 1x1 convolution (benchmarks/bench_deform_conv.py, with and without TORCHDCN_MLAS=0;
benchmarks/RESULTS.md). When onnxruntime is installed, :func:`gemm` runs ONNX ``Gemm`` through
it, reading and writing the tensors' memory in place (IO binding, no copies of dense tensors);
callers fall back to oneDNN otherwise. Set ``TORCHDCN_MLAS=0`` (or ``false``/``off``/``no``; a
value other than these and ``1``/``true``/``on``/``yes`` is a ValueError) to turn it off, or
:func:`use_mlas` for a block of code (the tests run both routes this way).

IO binding hands onnxruntime a bare pointer and the logical shape, so :func:`gemm` accepts any
float32 CPU matrices but makes every operand a dense row-major buffer first (a copy only when it is
not one already: an expanded, transposed or channel-major view) and writes through a dense
temporary when ``out`` is not dense or shares memory with an operand.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from ._backend import MLAS_FROM_ENV

#: onnxruntime and onnx are installed, so the MLAS route can run at all
AVAILABLE = (
    importlib.util.find_spec("onnxruntime") is not None
    and importlib.util.find_spec("onnx") is not None
)
#: the MLAS route is taken (read at every call; ``TORCHDCN_MLAS=0`` or :func:`use_mlas` clear it)
ENABLED = AVAILABLE and MLAS_FROM_ENV


def usable(*tensors: Tensor) -> bool:
    """Whether the MLAS route is on and these tensors are CPU float32 (any strides: :func:`gemm`
    makes them dense)."""
    return ENABLED and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


@contextlib.contextmanager
def use_mlas(enabled: bool) -> Iterator[None]:
    """Turn the MLAS route on or off inside the ``with`` block (on needs onnxruntime and onnx)."""
    global ENABLED
    if not isinstance(enabled, bool):
        raise TypeError(f"use_mlas takes True or False, got {enabled!r}")
    if enabled and not AVAILABLE:
        raise ValueError("use_mlas(True) needs onnxruntime and onnx (pip install onnxruntime onnx)")
    previous, ENABLED = ENABLED, enabled
    try:
        yield
    finally:
        ENABLED = previous


@functools.lru_cache(maxsize=32)
def _session(trans_a: bool, trans_b: bool, with_c: bool, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    names = ["A", "B", "C"] if with_c else ["A", "B"]
    node = helper.make_node("Gemm", names, ["Y"], transA=int(trans_a), transB=int(trans_b))
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # idle threads must not spin: PyTorch's own kernels run right after on the same cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _check(t: Tensor, name: str) -> None:
    if not isinstance(t, Tensor) or t.dim() != 2:
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"gemm: {name} must be a 2-D tensor, got {got}")
    if t.device.type != "cpu" or t.dtype != torch.float32:
        raise TypeError(f"gemm: {name} must be a CPU float32 tensor, got {t.dtype} on {t.device}")


def _dense(t: Tensor) -> Tensor:
    """``t`` itself when its memory is one row-major block at ``data_ptr()``, else a copy."""
    return t if t.is_contiguous() else t.contiguous()


def _overlaps(x: Tensor, y: Tensor) -> bool:
    """Whether the bytes spanned by ``x`` and ``y`` intersect (both dense, or the span is an
    over-estimate, which only costs a copy)."""
    if x.numel() == 0 or y.numel() == 0:
        return False
    if x.untyped_storage().data_ptr() != y.untyped_storage().data_ptr():
        return False
    lo_x, lo_y = x.data_ptr(), y.data_ptr()
    hi_x = lo_x + x.element_size() * (
        1 + sum((s - 1) * abs(st) for s, st in zip(x.shape, x.stride()))
    )
    hi_y = lo_y + y.element_size() * (
        1 + sum((s - 1) * abs(st) for s, st in zip(y.shape, y.stride()))
    )
    return lo_x < hi_y and lo_y < hi_x


def gemm(
    a: Tensor,
    b: Tensor,
    out: Tensor,
    trans_a: bool = False,
    trans_b: bool = False,
    c: Tensor | None = None,
) -> Tensor:
    """``out = op(a) @ op(b) (+ c)``, ``op`` transposing where asked; all 2-D float32 CPU.

    ``a``: ``[M, K]`` (``[K, M]`` if ``trans_a``), ``b``: ``[K, N]`` (``[N, K]`` if ``trans_b``),
    ``out``: ``[M, N]``, written in place; ``c`` broadcasts to ``[M, N]`` (e.g. a bias ``[1, N]``).
    Any strides are accepted: operands that are not dense row-major are copied, and a non-dense
    (or overlapping) ``out`` is written through a temporary, since onnxruntime reads raw pointers.
    """
    for name, t in (("a", a), ("b", b), ("out", out), ("c", c)):
        if t is not None:
            _check(t, name)
    m, k = (a.shape[1], a.shape[0]) if trans_a else tuple(a.shape)
    k_b, n = (b.shape[1], b.shape[0]) if trans_b else tuple(b.shape)
    if k != k_b or tuple(out.shape) != (m, n):
        raise ValueError(
            f"gemm: op(a) is {(m, k)} and op(b) is {(k_b, n)}, so the inner sizes must "
            f"match and out must be {(m, n)}; got out of shape {tuple(out.shape)}"
        )
    if c is not None and any(s not in (1, full) for s, full in zip(c.shape, (m, n))):
        raise ValueError(f"gemm: c of shape {tuple(c.shape)} does not broadcast to {(m, n)}")
    if m == 0 or n == 0:
        return out
    if k == 0:  # an empty sum: onnxruntime rejects the zero-size operands
        return out.copy_(c.expand(m, n)) if c is not None else out.zero_()
    a, b = _dense(a), _dense(b)
    c = None if c is None else _dense(c)
    target = out
    if not out.is_contiguous() or any(t is not None and _overlaps(out, t) for t in (a, b, c)):
        target = torch.empty(m, n, dtype=torch.float32)
    session = _session(trans_a, trans_b, c is not None, torch.get_num_threads())
    binding = session.io_binding()
    for name, t in (("A", a), ("B", b), ("C", c)):
        if t is not None:
            binding.bind_input(name, "cpu", 0, np.float32, list(t.shape), t.data_ptr())
    binding.bind_output("Y", "cpu", 0, np.float32, list(target.shape), target.data_ptr())
    session.run_with_iobinding(binding)
    if target is not out:
        out.copy_(target)
    return out
