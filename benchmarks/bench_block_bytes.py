"""The CPU deform_conv2d at several column-block sizes (``_deform_conv_cpu.BLOCK_BYTES``, and
``ONE_THREAD_BLOCK_BYTES`` set to the same size).

A block's columns are sampled and multiplied while still in cache; smaller blocks stay in a
core's L2 but pay their per-block costs (a product call, thread hand-offs) more often. This times
the op (v2, 3x3, float32) forward and forward+backward at each size, all sizes interleaved in one
process (``_harness.time_interleaved``), and prints medians with the ratio to the default size.
Run: ``python benchmarks/bench_block_bytes.py [--threads 2] [--repeats 9]
[--route auto|mm|conv|grid]`` (a fixed route separates the block size's effect from the route
the op would pick at that size).
"""

from __future__ import annotations

import argparse
import datetime
import platform

import numba
import torch
from _harness import deform_inputs, time_interleaved

from torchdcn.ops import _deform_conv_cpu as cpu
from torchdcn.ops import deform_conv2d

SHAPES = [(1, 256, 38, 50), (1, 128, 75, 100), (8, 64, 32, 32), (64, 32, 12, 12), (16, 64, 24, 24)]
MIB = [1, 2, 4, 8, 16, 32]


def _at_size(fn, size: int, route: str):
    def call():  # on one thread the op also caps whole-image blocks at ONE_THREAD_BLOCK_BYTES
        cpu.BLOCK_BYTES = cpu.ONE_THREAD_BLOCK_BYTES = size
        cpu.PRODUCTS = route
        return fn()

    return call


def _rows(n: int, c: int, h: int, w: int, repeats: int, default: int, route: str) -> list[str]:
    """The forward and forward+backward rows of one shape."""
    x, weight, offset, mask, grad = deform_inputs(n, c, h, w)

    def forward():
        with torch.no_grad():
            return deform_conv2d(x, offset, weight, None, 1, 1, 1, mask)

    def forward_backward():
        out = deform_conv2d(x, offset, weight, None, 1, 1, 1, mask)
        return torch.autograd.grad(out, (x, offset, weight, mask), grad)

    rows = []
    for call, fn in (("fwd", forward), ("f+b", forward_backward)):
        fns = {m: _at_size(fn, m << 20, route) for m in MIB}
        ms = {m: t * 1e3 for m, t in time_interleaved(fns, repeats).items()}
        base = ms[default >> 20]
        cells = " | ".join(f"{ms[m]:.2f} ({ms[m] / base:.2f}x)" for m in MIB)
        rows.append(f"| ({n}, {c}, {h}x{w}) | {call} | {cells} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--route", choices=["auto", *cpu.ROUTES], default="auto",
        help="the forward's product route (auto: the op's choice, which depends on the size)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    default = cpu.BLOCK_BYTES
    default_one = cpu.ONE_THREAD_BLOCK_BYTES
    print(
        f"# deform_conv2d (v2) by column-block size, forward products {args.route}, float32, "
        f"{args.threads} thread(s), medians of "
        f"{args.repeats}; {datetime.date.today()}, {platform.machine()}, torch {torch.__version__};"
        f" ms (x the default {default >> 20} MiB)"
    )
    print("| shape (N, C, HxW) | call | " + " | ".join(f"{m} MiB" for m in MIB) + " |")
    print("|---|---|" + "---|" * len(MIB))
    try:
        for shape in SHAPES:
            print("\n".join(_rows(*shape, args.repeats, default, args.route)), flush=True)
    finally:
        cpu.BLOCK_BYTES, cpu.ONE_THREAD_BLOCK_BYTES = default, default_one
        cpu.PRODUCTS = "auto"


if __name__ == "__main__":
    main()
