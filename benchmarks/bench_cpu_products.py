"""The matrix products inside the CPU deform_conv2d: oneDNN's 1x1 convolution against torch.mm.

For each benchmark shape (3x3, float32) the op multiplies column blocks ``[P, 9 * C]`` by the
weight ``[C, 9 * C]`` (forward), and in the backward forms the weight gradient ``g^T @ cols``
and the columns' gradient ``g @ W``. This script times each product on one block of the size the
op uses for that shape (``_deform_conv_cpu._blocks``), both ways, interleaved in one process:

* forward: ``torch.mm`` into rows vs a 1x1 convolution over the block seen as a channels-last
  image (what the op runs),
* weight gradient: ``torch.mm`` vs the 1x1 convolution's weight backward (what the op runs),
* columns' gradient: ``torch.mm`` (what the op runs) vs the 1x1 convolution's input backward.

Run: ``python benchmarks/bench_cpu_products.py [--threads 2] [--repeats 15]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform

import numba
import torch
import torch.nn.functional as F
from _harness import time_interleaved

from torchdcn.ops import _deform_conv_cpu as cpu

SHAPES = [(1, 512, 38, 50), (1, 256, 38, 50), (1, 128, 75, 100), (8, 64, 32, 32), (64, 32, 12, 12)]
_CONV = ((1, 1), (0, 0), (1, 1), False, (0, 0), 1)


def _image(rows: torch.Tensor) -> torch.Tensor:
    return rows[None, None].permute(0, 3, 1, 2)  # [P, C] -> channels-last [1, C, 1, P]


def bench(n, c, h, w, repeats, backward):
    width = 9 * c
    row_bytes = (2 if backward else 1) * w * width * 4
    blocks, _ = cpu._blocks(n, h, row_bytes)
    p = (blocks[0][1] - blocks[0][0]) * w
    gen = torch.Generator().manual_seed(0)
    cols = torch.randn(p, width, generator=gen)
    w2 = torch.randn(c, width, generator=gen)
    w4 = w2[:, :, None, None].contiguous(memory_format=torch.channels_last)
    g = torch.randn(p, c, generator=gen)
    rows, g_cols = torch.empty(p, c), torch.empty(p, width)
    cb = torch.ops.aten.convolution_backward
    fns = {
        "fwd mm": lambda: torch.mm(cols, w2.t(), out=rows),
        "fwd conv": lambda: F.conv2d(_image(cols), w4),
        "gW mm": lambda: torch.mm(g.t(), cols),
        "gW conv": lambda: cb(_image(g), _image(cols), w4, None, *_CONV, (False, True, False)),
        "gcols mm": lambda: torch.mm(g, w2, out=g_cols),
        "gcols conv": lambda: cb(_image(g), _image(cols), w4, None, *_CONV, (True, False, False)),
    }
    return p, {k: v * 1e3 for k, v in time_interleaved(fns, repeats).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    print(
        f"# deform_conv2d's block products, float32, {args.threads} thread(s), medians of "
        f"{args.repeats}; {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}"
    )
    print("| shape (N, C, HxW) | block P (fwd / bwd) | fwd mm / conv ms (ratio) "
          "| gW mm / conv ms (ratio) | gcols mm / conv ms (ratio) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for n, c, h, w in SHAPES:
        p_f, t_f = bench(n, c, h, w, args.repeats, backward=False)
        p_b, t_b = bench(n, c, h, w, args.repeats, backward=True)

        def cell(t, key):
            mm, conv = t[f"{key} mm"], t[f"{key} conv"]
            return f"{mm:.2f} / {conv:.2f} ({conv / mm:.2f}x)"

        print(
            f"| ({n}, {c}, {h}x{w}) | {p_f} / {p_b} | {cell(t_f, 'fwd')} | {cell(t_b, 'gW')} "
            f"| {cell(t_b, 'gcols')} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
