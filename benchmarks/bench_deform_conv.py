"""CPU speed and memory of torchdcn's deform_conv2d against dense conv2d, onnxruntime and OpenVINO.

Prints, per shape (3x3, stride 1, padding 1, float32) and with/without mask: forward and
forward+backward milliseconds, their ratio to dense ``F.conv2d`` of the same shape run in the same
process (interleaved, medians), onnxruntime's ``DeformConv`` (opset 19) forward, OpenVINO's
``DeformableConvolution`` forward (built with its opset8 Python API, ``bilinear_interpolation_pad``
on, which matches torchvision; OpenVINO's dense convolution alongside for reference), and the
peak extra memory of each. onnxruntime and OpenVINO are optional: a missing one prints ``n/a``.
Run: ``python benchmarks/bench_deform_conv.py [--threads 2] [--repeats 15] [--shapes N,C,H,W ...]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

if __name__ == "__main__":  # the OpenMP wait policy is read when the runtimes start: set it first
    _wait = sys.argv[sys.argv.index("--omp-wait") + 1] if "--omp-wait" in sys.argv else "unset"
    if _wait == "unset":  # as a user runs it: torchdcn makes only Numba's runtime passive
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = _wait.upper()

import numba
import torch
import torch.nn.functional as F
from _harness import peak_extra_mib, time_interleaved

from torchdcn.ops import deform_conv2d

# the issue's four shapes and the classification demo's body layer (batch 64, 32 channels, 12x12)
SHAPES = [
    (1, 512, 512, 38, 50),
    (1, 256, 256, 38, 50),
    (1, 128, 128, 75, 100),
    (8, 64, 64, 32, 32),
    (64, 32, 32, 12, 12),
]


def _ort_session(has_mask: bool, threads: int):
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    names = ["X", "W", "offset", "B"] + (["mask"] if has_mask else [])
    node = helper.make_node(
        "DeformConv", names, ["Y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _openvino_models(x, offset, weight, mask, threads):
    """Compiled OpenVINO ``(deformable, dense)`` models for these inputs, or None without it."""
    try:
        import openvino as ov
        import openvino.opset8 as ops
    except ImportError:
        return None
    import numpy as np

    data = ops.parameter(list(x.shape), np.float32)
    off = ops.parameter(list(offset.shape), np.float32)
    filters = ops.constant(weight.detach().numpy())
    params, kwargs = [data, off], {"bilinear_interpolation_pad": True}
    if mask is not None:
        kwargs["mask"] = ops.parameter(list(mask.shape), np.float32)
        params.append(kwargs["mask"])
    one, pad = [1, 1], [1, 1]
    deform = ops.deformable_convolution(data, off, filters, one, pad, pad, one, **kwargs)
    dense_in = ops.parameter(list(x.shape), np.float32)
    dense = ops.convolution(dense_in, filters, one, pad, pad, one)
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    return (
        core.compile_model(ov.Model([deform], params), "CPU", config).create_infer_request(),
        core.compile_model(ov.Model([dense], [dense_in]), "CPU", config).create_infer_request(),
    )


def bench_shape(n, c_in, c_out, h, w, has_mask, threads, repeats):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c_in, h, w, generator=gen, requires_grad=True)
    weight = torch.randn(c_out, c_in, 3, 3, generator=gen).mul_(0.05).requires_grad_()
    bias = torch.zeros(c_out, requires_grad=True)
    offset = torch.randn(n, 18, h, w, generator=gen).requires_grad_()
    mask = torch.rand(n, 9, h, w, generator=gen).requires_grad_() if has_mask else None
    grad = torch.randn(n, c_out, h, w, generator=gen)

    def dense_f():
        with torch.no_grad():
            return F.conv2d(x, weight, bias, padding=1)

    # fresh gradients each call (as in training), not accumulation into existing .grad buffers
    dense_inputs = (x, weight, bias)
    ours_inputs = (x, offset, weight, bias) + ((mask,) if has_mask else ())

    def dense_fb():
        return torch.autograd.grad(F.conv2d(x, weight, bias, padding=1), dense_inputs, grad)

    def ours_f():
        with torch.no_grad():
            return deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)

    def ours_fb():
        out = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
        return torch.autograd.grad(out, ours_inputs, grad)

    fns = {"dense_f": dense_f, "ours_f": ours_f, "dense_fb": dense_fb, "ours_fb": ours_fb}
    sess = _ort_session(has_mask, threads)
    if sess is not None:
        feeds = {"X": x, "W": weight, "offset": offset, "B": bias}
        if has_mask:
            feeds["mask"] = mask
        feeds = {k: v.detach().numpy() for k, v in feeds.items()}
        fns["ort_f"] = lambda: sess.run(None, feeds)
    ov_models = _openvino_models(x, offset, weight, mask, threads)
    if ov_models is not None:
        ov_deform, ov_dense = ov_models
        ov_feeds = [x.detach().numpy(), offset.detach().numpy()]
        if has_mask:
            ov_feeds.append(mask.detach().numpy())
        x_np = x.detach().numpy()
        fns["ov_f"] = lambda: ov_deform.infer(ov_feeds)
        fns["ov_dense_f"] = lambda: ov_dense.infer([x_np])
    t = time_interleaved(fns, repeats)
    mem = {name: peak_extra_mib(fns[name]) for name in ("dense_fb", "ours_f", "ours_fb")}
    return t, mem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch, numba, ORT)")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per function")
    parser.add_argument(
        "--omp-wait",
        choices=["unset", "passive", "active"],
        default="unset",
        help="OMP_WAIT_POLICY for both runtimes (default: unset, as a user runs it)",
    )
    parser.add_argument(
        "--shapes", nargs="*", metavar="N,C,H,W", help="C->C shapes instead of the default five"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    print(
        f"# deform_conv2d on CPU, float32, {args.threads} threads, medians of {args.repeats}; "
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    print(
        "| shape (N, C_in->C_out, HxW) | mask | dense fwd ms | ours fwd ms (x dense) "
        "| ORT fwd ms (ours/ORT) | OpenVINO fwd ms (ours/OV) | OV dense fwd ms "
        "| dense f+b ms | ours f+b ms (x dense) | peak MiB: dense f+b / ours fwd / ours f+b |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    shapes = SHAPES
    if args.shapes:
        shapes = [(n, c, c, h, w) for n, c, h, w in (map(int, s.split(",")) for s in args.shapes)]
    for n, c_in, c_out, h, w in shapes:
        for has_mask in (False, True):
            t, mem = bench_shape(n, c_in, c_out, h, w, has_mask, args.threads, args.repeats)
            ms = {k: v * 1e3 for k, v in t.items()}
            ort = (
                f"{ms['ort_f']:.1f} ({ms['ours_f'] / ms['ort_f']:.2f}x)" if "ort_f" in ms else "n/a"
            )
            ov = f"{ms['ov_f']:.1f} ({ms['ours_f'] / ms['ov_f']:.2f}x)" if "ov_f" in ms else "n/a"
            ov_dense = f"{ms['ov_dense_f']:.1f}" if "ov_dense_f" in ms else "n/a"
            print(
                f"| ({n}, {c_in}->{c_out}, {h}x{w}) | {'yes' if has_mask else 'no'} "
                f"| {ms['dense_f']:.1f} | {ms['ours_f']:.1f} ({ms['ours_f'] / ms['dense_f']:.2f}x) "
                f"| {ort} | {ov} | {ov_dense} | {ms['dense_fb']:.1f} "
                f"| {ms['ours_fb']:.1f} ({ms['ours_fb'] / ms['dense_fb']:.2f}x) "
                f"| {mem['dense_fb']:.0f} / {mem['ours_f']:.0f} / {mem['ours_fb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
