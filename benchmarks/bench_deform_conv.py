"""CPU speed and memory of torchdcn's deform_conv2d against dense conv2d and onnxruntime.

Prints, per shape (3x3, stride 1, padding 1, float32) and with/without mask: forward and
forward+backward milliseconds, their ratio to dense ``F.conv2d`` of the same shape run in the same
process (interleaved, medians), onnxruntime's DeformConv forward, and the peak extra memory of
each. Run: ``python benchmarks/bench_deform_conv.py [--threads 2] [--repeats 15]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

if __name__ == "__main__":  # the OpenMP wait policy is read when the runtimes start: set it first
    _wait = sys.argv[sys.argv.index("--omp-wait") + 1] if "--omp-wait" in sys.argv else "passive"
    os.environ["OMP_WAIT_POLICY"] = _wait.upper()

import numba
import torch
import torch.nn.functional as F
from _harness import peak_extra_mib, time_interleaved

from torchdcn.ops import deform_conv2d

SHAPES = [(1, 512, 512, 38, 50), (1, 256, 256, 38, 50), (1, 128, 128, 75, 100), (8, 64, 64, 32, 32)]


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
    t = time_interleaved(fns, repeats)
    mem = {name: peak_extra_mib(fns[name]) for name in ("dense_fb", "ours_f", "ours_fb")}
    return t, mem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch, numba, ORT)")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per function")
    parser.add_argument(
        "--omp-wait",
        choices=["passive", "active"],
        default="passive",
        help="OpenMP wait policy (torchdcn's default is passive, see README)",
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
        "| ORT fwd ms (ours/ORT) | dense f+b ms | ours f+b ms (x dense) "
        "| peak MiB: dense f+b / ours fwd / ours f+b |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n, c_in, c_out, h, w in SHAPES:
        for has_mask in (False, True):
            t, mem = bench_shape(n, c_in, c_out, h, w, has_mask, args.threads, args.repeats)
            ms = {k: v * 1e3 for k, v in t.items()}
            ort = (
                f"{ms['ort_f']:.1f} ({ms['ours_f'] / ms['ort_f']:.2f}x)" if "ort_f" in ms else "n/a"
            )
            print(
                f"| ({n}, {c_in}->{c_out}, {h}x{w}) | {'yes' if has_mask else 'no'} "
                f"| {ms['dense_f']:.1f} | {ms['ours_f']:.1f} ({ms['ours_f'] / ms['dense_f']:.2f}x) "
                f"| {ort} | {ms['dense_fb']:.1f} "
                f"| {ms['ours_fb']:.1f} ({ms['ours_fb'] / ms['dense_fb']:.2f}x) "
                f"| {mem['dense_fb']:.0f} / {mem['ours_f']:.0f} / {mem['ours_fb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
