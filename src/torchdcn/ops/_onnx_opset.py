"""The ``opset_version`` of the ``torch.onnx.export(dynamo=True)`` call in progress, so that a
node needing a newer opset refuses the export (:func:`._onnx.check_export_opset`) instead of
being written into a model no runtime loads.

The dynamo exporter writes a ``torch.onnx.ops.symbolic`` node as given, whatever the opset the
model is exported at: a ``DeformConv`` (opset 19) in a model exported with ``opset_version=18``
makes ``onnx.checker`` and onnxruntime reject the model ("No Op registered for DeformConv with
domain_version of 18"). The TorchScript exporter checks its symbolics' opsets itself.
"""

from __future__ import annotations

import sys

import torch

# torch's entry point of every dynamo export (torch.onnx.export(dynamo=True) and
# torch.onnx.export(ExportedProgram)); its local opset_version holds the requested opset with
# torch's default already filled in
_EXPORT_FUNCTION = "export_compat"
_EXPORT_FILE = "torch/onnx/_internal/exporter/_compat.py"


# evaluated for real (not traced) under torch.onnx.export's strict Dynamo capture
@torch.compiler.assume_constant_result
def export_opset() -> int:
    """The opset of the dynamo export in progress; 0 when it cannot be found (outside export,
    or a torch whose exporter no longer has this entry point: then nothing is checked).

    torch has no public way to ask, so this reads the argument from the frame of torch's
    ``export_compat`` (as of torch 2.13), which calls the capture and the decompositions.
    """
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == _EXPORT_FUNCTION and code.co_filename.replace("\\", "/").endswith(
            _EXPORT_FILE
        ):
            opset = frame.f_locals.get("opset_version")
            return opset if isinstance(opset, int) else 0
        frame = frame.f_back
    return 0
