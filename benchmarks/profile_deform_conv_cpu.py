"""Where the CPU deform_conv2d spends its time: each kernel of one forward and one backward call.

Wraps the Numba kernels, the padded copy and the GEMM of ``torchdcn.ops._deform_conv_cpu`` with
timers, runs forward and backward (v2, 3x3, stride 1, padding 1, float32), and prints the mean
milliseconds per call of each part and of the whole (the rest is PyTorch glue and thread-pool
hand-offs; the backward samples its columns inside its gradient pass, so its "sampling" cell is
0 and the gradient pass's cell includes it). It also times the column sampling of one image into
a reused buffer and into a fresh buffer of the same size, which shows what page faults cost past
glibc's 32 MiB mmap threshold.
Run: ``python benchmarks/profile_deform_conv_cpu.py [--threads 2] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from functools import partial

import numba
import torch

from torchdcn.ops import _deform_conv_cpu as cpu

# the four shapes and the classification demo's body layer (batch 64, 32 channels, 12x12)
SHAPES = [(1, 512, 38, 50), (1, 256, 38, 50), (1, 128, 75, 100), (8, 64, 32, 32), (64, 32, 12, 12)]
if os.environ.get("PROFILE_SHAPES"):  # e.g. "64,32,12,12 8,64,32,32"
    SHAPES = [tuple(map(int, s.split(","))) for s in os.environ["PROFILE_SHAPES"].split()]
PARTS = {
    cpu: ["_padded_channels_last", "columns_kernel", "grad_kernel_images", "grad_kernel_parts"],
    cpu._Product: ["forward", "grad_columns", "grad_weight"],
}


def _instrument(spent: dict[str, float]) -> None:
    for module, names in PARTS.items():
        for name in names:
            fn = getattr(module, name)

            def timed(*args, _fn=fn, _name=name, **kwargs):
                t0 = time.perf_counter()
                out = _fn(*args, **kwargs)
                spent[_name] += time.perf_counter() - t0
                return out

            setattr(module, name, timed)


def _mean_ms(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def _sampling_ms(x, offset, mask, weight, conv, repeats) -> tuple[float, float, float]:
    """(MiB, ms into a reused buffer, ms into a fresh buffer) for one image's columns."""
    _, c, h, w = x.shape
    groups, offset_groups, geom, _ = cpu._setup(x[:1], offset[:1], weight, *conv)
    places = cpu.column_places(c, groups, offset_groups, geom[:2], w, grid=False)  # product layout
    xpad = cpu._padded_channels_last(x[:1])
    off, m = offset[:1].numpy(), mask[:1].numpy()
    reused = torch.empty(h, w, 9 * c)

    def sample(buf):
        cpu.columns_kernel(xpad.numpy(), off, m, True, *places, geom, 0, buf.view(h, -1).numpy())

    t_reused = _mean_ms(lambda: sample(reused), repeats)
    t_fresh = _mean_ms(lambda: sample(torch.empty(h, w, 9 * c)), repeats)
    return reused.numel() * 4 / 2**20, t_reused, t_fresh


def _parts_ms(fn, spent: dict[str, float], repeats: int) -> tuple[float, dict[str, float]]:
    """Mean ms of ``fn()`` and of each instrumented part inside it."""
    fn()
    spent.clear()
    total = _mean_ms(fn, repeats)
    return total, {k: v / (repeats + 1) * 1e3 for k, v in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    conv = ((1, 1), (1, 1), (1, 1))
    inputs = []
    for n, c, h, w in SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, h, w, generator=gen)
        offset = torch.randn(n, 18, h, w, generator=gen)
        mask = torch.rand(n, 9, h, w, generator=gen)
        weight = torch.randn(c, c, 3, 3, generator=gen)
        grad = torch.randn(n, c, h, w, generator=gen)
        inputs.append((x, offset, mask, weight, grad))
    sampling = [_sampling_ms(x, o, m, wt, conv, args.repeats) for x, o, m, wt, _ in inputs]
    spent: dict[str, float] = collections.defaultdict(float)
    _instrument(spent)
    print(f"# CPU deform_conv2d parts, float32, {args.threads} threads, means of {args.repeats}")
    print("| shape | call | total ms | padded copy | sampling | GEMM | gradient pass |")
    print("|---|---|---|---|---|---|---|")
    for (n, c, h, w), (x, offset, mask, weight, grad) in zip(SHAPES, inputs):
        calls = {
            "forward": partial(cpu.forward, x, offset, mask, weight, None, *conv),
            "backward": partial(cpu.backward, grad, x, offset, mask, weight, None, *conv),
        }
        for call, fn in calls.items():
            total, part = _parts_ms(fn, spent, args.repeats)
            cells = [part.get(k, 0.0) for k in ("_padded_channels_last", "columns_kernel")]
            cells.append(sum(part.get(k, 0.0) for k in ("forward", "grad_columns", "grad_weight")))
            cells.append(part.get("grad_kernel_images", 0.0) + part.get("grad_kernel_parts", 0.0))
            print(f"| ({n}, {c}, {h}x{w}) | {call} | {total:.2f} | " + " | ".join(
                f"{v:.2f}" for v in cells) + " |")  # fmt: skip
    print(
        "\n| shape | one image's columns | sampling into a reused buffer ms | into a fresh one ms |"
    )
    print("|---|---|---|---|")
    for (n, c, h, w), (mib, t_reused, t_fresh) in zip(SHAPES, sampling):
        print(f"| ({n}, {c}, {h}x{w}) | {mib:.1f} MiB | {t_reused:.2f} | {t_fresh:.2f} |")


if __name__ == "__main__":
    main()
