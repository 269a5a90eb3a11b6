"""Single-precision matrix products for the CPU kernels, on the fastest library present.

PyTorch's CPU matrix product is MKL's, which picks slow code paths on AMD processors. On the
2-core AMD EPYC machines of this project the deformable-conv op ran 1.5-2.4x faster forward and
1.3-1.9x faster forward+backward with its block products in MLAS (onnxruntime's GEMM) than in
oneDNN's 1x1 convolution (benchmarks/bench_deform_conv.py, with and without TORCHDCN_MLAS=0;
benchmarks/RESULTS.md). When onnxruntime is installed, :func:`gemm` runs ONNX ``Gemm`` through
it, reading and writing the tensors' memory in place (IO binding, no copies); callers fall back
to oneDNN otherwise. Set ``TORCHDCN_MLAS=0`` to turn it off.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import torch
from torch import Tensor

ENABLED = (
    importlib.util.find_spec("onnxruntime") is not None
    and importlib.util.find_spec("onnx") is not None
    and os.environ.get("TORCHDCN_MLAS", "1") != "0"
)


def usable(*tensors: Tensor) -> bool:
    """Whether :func:`gemm` can take these tensors (CPU float32, dense rows)."""
    return ENABLED and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors
    )


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
    ``out``: ``[M, N]``, written in place; ``c`` broadcasts to ``[M, N]`` (e.g. a bias ``[M, 1]``).
    """
    session = _session(trans_a, trans_b, c is not None, torch.get_num_threads())
    binding = session.io_binding()
    for name, t in (("A", a), ("B", b), ("C", c)):
        if t is not None:
            binding.bind_input(name, "cpu", 0, np.float32, list(t.shape), t.data_ptr())
    binding.bind_output("Y", "cpu", 0, np.float32, list(out.shape), out.data_ptr())
    session.run_with_iobinding(binding)
    return out
