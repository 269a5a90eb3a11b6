"""Inference of an exported deformable backbone in onnxruntime against torchdcn eager, on CPU.

``resnet50(deform="v2")`` and, for reference, the plain ``resnet50()`` (random weights, the
offset predictors given non-zero weights so the sampling is really deformed) are exported with
``torch.onnx.export(opset_version=19)`` (standard ``DeformConv`` nodes) and run in onnxruntime's
CPU provider in the same process as the eager models, with the same thread count; calls
interleaved, medians (``_harness.time_interleaved``). Also prints the largest difference
between the two outputs.

Run: ``python benchmarks/bench_onnx.py [--model resnet50] [--size 224] [--batch 1]
[--threads 2] [--repeats 5] [--exporter dynamo|torchscript]``.
"""

from __future__ import annotations

import os

# what `import torchdcn` sets when it comes before torch (README, "Threads on CPU"): torch's and
# Numba's OpenMP pools must not spin, measured 2.3 s instead of 49 ms for v2 at 32x32 otherwise
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import logging
import platform
import tempfile
import time
import warnings

import numba
import onnxruntime as ort
import torch
from _harness import time_interleaved

import torchdcn
import torchdcn.models
from torchdcn.nn import DeformConv2dPack


def build(name: str, deform: str | None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchdcn.models, name)(deform=deform)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DeformConv2dPack):
                m.conv_offset.weight.normal_(0, 0.01, generator=gen)
                m.conv_offset.bias.uniform_(-1, 1, generator=gen)
    return model.eval()


def export(model: torch.nn.Module, x: torch.Tensor, path: str, exporter: str) -> float:
    """Seconds taken by ``torch.onnx.export``."""
    kwargs = {}
    if exporter == "dynamo":
        kwargs = {"custom_translation_table": torchdcn.ops.onnx_translation_table()}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), path, opset_version=19, dynamo=exporter == "dynamo", verbose=False,
            input_names=["x"], **kwargs,
        )  # fmt: skip
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    args = parser.parse_args()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))

    x = torch.randn(args.batch, 3, args.size, args.size)
    rows = []
    for deform in ("v2", None):
        rows.append(measure(build(args.model, deform), x, args))
    print(f"date {datetime.date.today()}, {platform.machine()} {os.cpu_count()} cores, "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"{args.threads} threads, medians of {args.repeats}, exporter {args.exporter}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")  # fmt: skip
    print()
    print("| model | input | DeformConv nodes | export s | max abs diff | torchdcn eager ms | "
          "onnxruntime ms | eager / ORT |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    shape = "x".join(str(s) for s in x.shape)
    for deform, (n_deform, export_s, diff, e, o) in zip(("v2", "plain"), rows):
        print(f"| {args.model} {deform} | {shape} | {n_deform} | {export_s:.1f} | {diff:.1e} | "
              f"{e * 1e3:.1f} | {o * 1e3:.1f} | {e / o:.2f} |")  # fmt: skip


def measure(
    model: torch.nn.Module, x: torch.Tensor, args
) -> tuple[int, float, float, float, float]:
    """``(DeformConv layers, export s, max |ORT - eager|, eager s, onnxruntime s)``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_s = export(model, x, path, args.exporter)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    n_deform = sum(isinstance(m, torchdcn.nn.DeformConv2d) for m in model.modules())

    def eager():
        with torch.inference_mode():
            return model(x)

    def onnxruntime():
        return session.run(None, feed)[0]

    diff = (torch.from_numpy(onnxruntime()) - eager()).abs().max().item()
    times = time_interleaved({"eager": eager, "ort": onnxruntime}, args.repeats, warmup=3, block=2)
    return n_deform, export_s, diff, times["eager"], times["ort"]


if __name__ == "__main__":
    main()
