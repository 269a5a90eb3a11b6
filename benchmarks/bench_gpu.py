"""GPU speed and memory of torchdcn's Triton deform_conv2d vs torchvision's CUDA op and cuDNN.

The layers are the modulated deformable 3x3 convs of a ResNet-50 DCNv2 backbone at an 800 x 1333
input (SPEC section 6): conv3 (128 channels, 100 x 168), conv4 (256 channels, 50 x 84) and conv5
(512 channels, 50 x 84 with conv5 at stride 16, so dilation 2). For each layer, batch size and
dtype it prints the median time of the forward pass and of forward + backward, the ratio of ours
to torchvision's ``deform_conv2d`` and to a plain cuDNN ``conv2d`` of the same shape (ratio > 1:
ours is slower), the peak extra memory of each, and the largest difference of our output from
torchvision's.

    python benchmarks/bench_gpu.py                      # batch 2 and 8, float32 and bfloat16
    python benchmarks/bench_gpu.py --batch 2 --dtype float32 --tf32

float32 follows PyTorch's defaults: our kernels and torchvision's (cuBLAS) multiply in IEEE
float32 unless ``--tf32`` (``torch.set_float32_matmul_precision("high")``), while cuDNN convolutions
use TF32 by default (``torch.backends.cudnn.allow_tf32``). torchvision is imported here only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from torchdcn.ops import deform_conv2d, use_backend


@dataclass(frozen=True)
class Layer:
    name: str
    channels: int
    height: int
    width: int
    dilation: int


LAYERS = (
    Layer("conv3", 128, 100, 168, 1),
    Layer("conv4", 256, 50, 84, 1),
    Layer("conv5", 512, 50, 84, 2),
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def make_tensors(layer: Layer, batch: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Input, offsets (a few pixels, as a trained layer), mask, weight, bias and output grad."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    c, h, w, k = layer.channels, layer.height, layer.width, 9

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, device="cuda", generator=gen)).to(dtype)

    return {
        "input": randn(batch, c, h, w),
        "offset": randn(batch, 2 * k, h, w, scale=2.0),
        "mask": torch.rand(batch, k, h, w, device="cuda", generator=gen).to(dtype),
        "weight": randn(c, c, 3, 3, scale=(1 / (9 * c)) ** 0.5),
        "bias": randn(c),
        "grad": randn(batch, c, h, w),
    }


def ours(t, dil):
    with use_backend("triton"):
        return deform_conv2d(
            t["input"], t["offset"], t["weight"], t["bias"], padding=dil, dilation=dil,
            mask=t["mask"],
        )  # fmt: skip


def torchvision_op(t, dil):
    from torchvision.ops import deform_conv2d as tv_deform_conv2d

    return tv_deform_conv2d(
        t["input"], t["offset"], t["weight"], t["bias"], padding=dil, dilation=dil, mask=t["mask"]
    )


def cudnn_conv(t, dil):
    return F.conv2d(t["input"], t["weight"], t["bias"], padding=dil, dilation=dil)


def measure(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median milliseconds over ``reps`` runs after warm-up, and peak extra memory in MiB."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return statistics.median(times), peak


def timed(op, t: dict, dil: int, backward: bool, reps: int) -> tuple[float, float] | None:
    """``(ms, MiB)`` of the op (forward, or forward + backward), or None if it does not run."""
    grad_names = ("input", "offset", "mask", "weight", "bias")
    leaves = {
        k: (v.detach().requires_grad_(backward) if k in grad_names else v) for k, v in t.items()
    }

    def run():
        if backward:
            for name in grad_names:
                leaves[name].grad = None
            op(leaves, dil).backward(leaves["grad"])
        else:
            with torch.no_grad():
                op(leaves, dil)

    try:
        return measure(run, reps)
    except (RuntimeError, NotImplementedError) as err:  # e.g. torchvision without bfloat16
        print(f"  ({op.__name__} failed: {str(err).splitlines()[0][:80]})", file=sys.stderr)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--dtype", choices=list(DTYPES), nargs="+", default=list(DTYPES))
    parser.add_argument("--layer", choices=[x.name for x in LAYERS], nargs="+")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in float32 products")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing run.")
    try:
        import torchvision.ops  # noqa: F401
    except ImportError:
        sys.exit("bench_gpu.py compares with torchvision: pip install torchvision (CUDA build)")
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    layers = [x for x in LAYERS if args.layer is None or x.name in args.layer]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"float32 matmul precision {torch.get_float32_matmul_precision()!r}, "
          f"cuDNN TF32 {torch.backends.cudnn.allow_tf32}")  # fmt: skip
    row = "{:6} {:>2} {:8} {:7} {:>8} {:>8} {:>8} {:>6} {:>7} {:>9} {:>9} {:>9} {:>12}"
    head = row.format("layer", "N", "dtype", "pass", "ours ms", "tv ms", "cuDNN ms", "/tv",
                      "/cuDNN", "ours MiB", "tv MiB", "cuDNN MiB", "max|ours-tv|")  # fmt: skip
    print(head)
    print("-" * len(head))
    for layer in layers:
        for batch in args.batch:
            for dname in args.dtype:
                t = make_tensors(layer, batch, DTYPES[dname])
                dil = layer.dilation
                with torch.no_grad():
                    try:
                        diff = (ours(t, dil).float() - torchvision_op(t, dil).float()).abs().max()
                        diff = f"{diff.item():.2e}"
                    except (RuntimeError, NotImplementedError):
                        diff = "n/a"
                for backward in (False, True):
                    res = [timed(op, t, dil, backward, args.reps)
                           for op in (ours, torchvision_op, cudnn_conv)]  # fmt: skip
                    ms = [f"{r[0]:.2f}" if r else "n/a" for r in res]
                    mib = [f"{r[1]:.0f}" if r else "n/a" for r in res]
                    ratio = [f"{res[0][0] / r[0]:.2f}" if res[0] and r else "n/a" for r in res[1:]]
                    step = "fwd+bwd" if backward else "fwd"
                    print(row.format(layer.name, batch, dname, step, *ms, *ratio, *mib, diff))
                del t
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
