"""Shared by the ONNX export tests: the two exporters as a parameter, an export that checks the
model, an onnxruntime run. Test modules call ``pytest.importorskip("onnx")`` and
``pytest.importorskip("onnxruntime")`` before importing this module."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from torchdcn.nn import DeformConv2dPack
from torchdcn.ops import onnx_translation_table

HAS_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None
needs_onnxscript = pytest.mark.skipif(
    not HAS_ONNXSCRIPT, reason="dynamo=True needs onnxscript (pip install torchdcn[onnx])"
)
EXPORTERS = [
    pytest.param(True, id="dynamo", marks=needs_onnxscript),
    pytest.param(False, id="torchscript"),
]
# the TorchScript exporter is deprecated in torch >= 2.9 (it warns) but still works
IGNORE_EXPORTER_WARNINGS = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning", "ignore::FutureWarning"
)


def export(model, args, path, dynamo, dynamic=None, table=False, opset=19):
    """Export with the given exporter, check the model and return its ONNX proto.

    ``dynamic``: ``{input name: [dynamic dims]}`` (inputs are named ``in0``, ``in1``, ...);
    ``table``: pass torchdcn's translation table to the dynamo exporter.
    """
    import onnx

    names = [f"in{i}" for i in range(len(args))]
    kwargs = {}
    if dynamo and table:
        kwargs["custom_translation_table"] = onnx_translation_table()
    if dynamo:
        if dynamic:
            auto = torch.export.Dim.AUTO
            kwargs["dynamic_shapes"] = [
                {d: auto for d in dynamic.get(n, [])} or None for n in names
            ]
        kwargs["verbose"] = False
    elif dynamic:
        kwargs["dynamic_axes"] = {n: {d: f"{n}_{d}" for d in dims} for n, dims in dynamic.items()}
    torch.onnx.export(
        model, tuple(args), str(path), opset_version=opset, dynamo=dynamo, input_names=names,
        **kwargs,
    )  # fmt: skip
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def run_ort(path, args):
    """The exported model's outputs for ``args`` in onnxruntime (CPU, one thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feed = dict(zip(names, (a.numpy() for a in args)))
    return [torch.from_numpy(o) for o in session.run(None, feed)]


def op_types(proto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def randomise_predictors(model: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    """Give every offset predictor non-zero weights (fresh ones predict offset 0, which would
    leave the bilinear sampling untested) and return the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DeformConv2dPack):
                m.conv_offset.weight.normal_(0, std, generator=gen)
                m.conv_offset.bias.uniform_(-1.5, 1.5, generator=gen)
    return model.eval()


def exception_chain(err: BaseException | None) -> list[BaseException]:
    """``err`` and its causes / contexts, outermost first (the exporters wrap errors)."""
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen
