"""The CPU deform_conv2d's building blocks around its sampling: block products and padded copy.

For each benchmark shape (3x3, float32) the op multiplies column blocks ``[P, 9 * C]`` by the
weight ``[C, 9 * C]`` (forward), and in the backward forms the weight gradient ``g^T @ cols`` (added
into one accumulator) and the columns' gradient ``g @ W``. Two tables:

* blocks: on one block of the size the op uses for that shape (``_deform_conv_cpu._blocks``),
  the op's own ``_Product.forward`` on each route (``torch.mm``, the 1x1 convolution, the
  strided convolution over the grid layout), and the
  backward's two products as the op runs them (``torch.mm``, the weight gradient accumulated in
  place) against the 1x1 convolution's and the grid's weight and input backwards (alternatives
  the op does not take; the 1x1 one's weight gradient computed and added), with the output
  gradient as the op passes it
  (rows for blocks of whole images, a strided segment of the NCHW gradient inside big images);
* the op: ``deform_conv2d`` forward and forward+backward (v2, with mask) with the forward's
  products on each route (``_deform_conv_cpu.PRODUCTS``), dense
  ``conv2d`` alongside, all interleaved in one process;
* copies: the op's padded channels-last copy of the input (``_padded_channels_last``) forced
  to copy directly and to pad first, for channel planes of several sizes.

Run: ``python benchmarks/bench_cpu_products.py [--threads 2] [--repeats 15]
[--part blocks|op|copies]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform

import numba
import torch
import torch.nn.functional as F
from _harness import deform_inputs, time_interleaved

from torchdcn.ops import _deform_conv_cpu as cpu
from torchdcn.ops import deform_conv2d

SHAPES = [(1, 512, 38, 50), (1, 256, 38, 50), (1, 128, 75, 100), (8, 64, 32, 32), (64, 32, 12, 12)]
ROUTES = cpu.ROUTES
_CONV = ((1, 1), (0, 0), (1, 1), False, (0, 0), 1)


def bench_blocks(n, c, h, w, repeats):
    """``(P forward, P backward, whole images?, {name: ms})`` for one shape's first blocks: the
    op's own ``_Product.forward`` on each route; the weight gradient and the columns' gradient
    as the op computes them (``torch.mm``) and as the 1x1 convolution's weight and input
    backwards would (alternatives the op does not take)."""
    width = 9 * c
    gen = torch.Generator().manual_seed(0)
    w2 = torch.randn(c, width, generator=gen)
    f_blocks, f_images = cpu._blocks(n, h, w * width * 4)
    p_f = (f_blocks[0][1] - f_blocks[0][0]) * w
    b_blocks, whole = cpu._blocks(n, h, 2 * w * width * 4)
    p_b = (b_blocks[0][1] - b_blocks[0][0]) * w
    cols_f = torch.randn(p_f // w, w, width, generator=gen)  # [rows, W_out, 9 C]
    cols, g_cols = torch.randn(p_b, width, generator=gen), torch.empty(p_b, width)
    # the output gradient as the op passes it, [C, P]: transposed rows for blocks of whole
    # images, else a strided segment of one image's NCHW gradient
    g_t = torch.randn(p_b, c, generator=gen).t() if whole else torch.randn(c, h * w)[:, :p_b]
    g_image = cpu._as_image(g_t.t()) if whole else g_t[None, :, None]
    products = {route: cpu._Product(w2, 1, None, (3, 3), route=route) for route in ROUTES}
    w4, g_w = products["conv"].w4, products["mm"].g_w
    cb = torch.ops.aten.convolution_backward

    def backward_conv(mask):
        return cb(g_image, cpu._as_image(cols), w4, None, *_CONV, mask)

    # the grid's backwards: the block's columns as a tiled image, the gradient as rows of it
    # (made contiguous outside the timing even for a segment: this favours the grid slightly)
    rows = p_b // w
    grid = torch.randn(1, rows * 3, w * 3, c, generator=gen).permute(0, 3, 1, 2)
    g_grid = g_t.t().contiguous().view(1, rows, w, c).permute(0, 3, 1, 2)
    w4_grid = products["grid"].w4

    def backward_grid(mask):
        return cb(g_grid, grid, w4_grid, None, (3, 3), (0, 0), (1, 1), False, (0, 0), 1, mask)

    fns = {f"fwd {r}": lambda p=prod: p.forward(cols_f, f_images) for r, prod in products.items()}
    fns["gW mm"] = lambda: g_w.addmm_(g_t, cols)  # as _Product.grad_weight
    fns["gW conv"] = lambda: g_w.add_(backward_conv((False, True, False))[1].view_as(g_w))
    fns["gW grid"] = lambda: backward_grid((False, True, False))
    fns["gcols mm"] = lambda: torch.mm(g_t.t(), w2, out=g_cols)  # as _Product.grad_columns
    fns["gcols conv"] = lambda: backward_conv((True, False, False))
    fns["gcols grid"] = lambda: backward_grid((True, False, False))
    times = time_interleaved(fns, repeats)
    return p_f, p_b, bool(whole), {k: v * 1e3 for k, v in times.items()}


def bench_op(n, c, h, w, repeats):
    """``{name: ms}``: the op's forward and forward+backward on each product route, and dense."""
    x, weight, offset, mask, grad = deform_inputs(n, c, h, w)

    def on(route, backward):
        def run():
            cpu.PRODUCTS = route
            if not backward:
                with torch.no_grad():
                    return deform_conv2d(x, offset, weight, padding=1, mask=mask)
            out = deform_conv2d(x, offset, weight, padding=1, mask=mask)
            return torch.autograd.grad(out, (x, offset, weight, mask), grad)

        return run

    def dense_f():
        with torch.no_grad():
            return F.conv2d(x, weight, padding=1)

    def dense_fb():
        return torch.autograd.grad(F.conv2d(x, weight, padding=1), (x, weight), grad)

    fns = {"dense f": dense_f, "dense f+b": dense_fb}
    for route in ROUTES:
        fns[f"{route} f"] = on(route, False)
        fns[f"{route} f+b"] = on(route, True)
    try:
        times = time_interleaved(fns, repeats)
    finally:
        cpu.PRODUCTS = "auto"
    return {k: v * 1e3 for k, v in times.items()}


COPY_SHAPES = [(8, 64, 16, 16), (8, 64, 16, 32), (8, 64, 24, 32), (8, 64, 32, 32), (8, 64, 32, 64),
               (2, 128, 32, 48), (16, 32, 16, 32), (4, 64, 20, 20), (64, 32, 12, 12),
               (1, 128, 75, 100)]  # fmt: skip


def bench_copies(n, c, h, w, repeats):
    """``{route: ms}`` of the op's padded channels-last copy (``_padded_channels_last``),
    forced to copy directly and to pad first."""
    x = torch.randn(n, c, h, w)

    def on(pad_first_bytes):
        def run():
            cpu.PAD_FIRST_BYTES = pad_first_bytes
            return cpu._padded_channels_last(x)

        return run

    saved = cpu.PAD_FIRST_BYTES
    fns = {"direct": on(1 << 62), "pad first": on(1)}  # no plane divides 2**62; every one 1
    try:
        assert torch.equal(fns["direct"](), fns["pad first"]())
        times = time_interleaved(fns, repeats)
    finally:
        cpu.PAD_FIRST_BYTES = saved
    return {k: v * 1e3 for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--part", choices=["blocks", "op", "copies", "all"], default="all")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    head = (
        f"float32, {args.threads} thread(s), medians of {args.repeats}; {datetime.date.today()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}"
    )
    if args.part in ("blocks", "all"):
        print(f"# deform_conv2d's block products, {head}")
        print(
            "| shape (N, C, HxW) | block P fwd / bwd (gradient as) | fwd mm / conv / grid ms "
            "(ratios to mm) | gW mm / conv / grid ms (ratios) | gcols mm / conv / grid ms "
            "(ratios) |"
        )
        print("|---|---|---|---|---|")
        for n, c, h, w in SHAPES:
            p_f, p_b, whole, t = bench_blocks(n, c, h, w, args.repeats)

            def cell(key, t=t):
                ms = " / ".join(f"{t[f'{key} {r}']:.2f}" for r in ROUTES)
                ratios = " / ".join(f"{t[f'{key} {r}'] / t[f'{key} mm']:.2f}x" for r in ROUTES[1:])
                return f"{ms} ({ratios})"

            layout = "rows" if whole else "NCHW segment"
            print(
                f"| ({n}, {c}, {h}x{w}) | {p_f} / {p_b} ({layout}) | {cell('fwd')} "
                f"| {cell('gW')} | {cell('gcols')} |",
                flush=True,
            )
    if args.part in ("op", "all"):
        print(f"\n# deform_conv2d (v2) by product route, {head}; ms (x dense)")
        cols = " | ".join(f"{r} f | {r} f+b" for r in ROUTES)
        print(f"| shape (N, C, HxW) | dense f | dense f+b | {cols} |")
        print("|---|---|---|" + "---|" * (2 * len(ROUTES)))
        for n, c, h, w in SHAPES:
            t = bench_op(n, c, h, w, args.repeats)
            cells = " | ".join(
                f"{t[f'{r} {k}']:.1f} ({t[f'{r} {k}'] / t[f'dense {k}']:.2f}x)"
                for r in ROUTES
                for k in ("f", "f+b")
            )
            print(
                f"| ({n}, {c}, {h}x{w}) | {t['dense f']:.1f} | {t['dense f+b']:.1f} | {cells} |",
                flush=True,
            )

    if args.part in ("copies", "all"):
        print(f"\n# padded channels-last copy, {head}")
        print("| shape (N, C, HxW) | plane bytes | direct ms | pad first ms (ratio) | op takes |")
        print("|---|---|---|---|---|")
        for n, c, h, w in COPY_SHAPES:
            t = bench_copies(n, c, h, w, args.repeats)
            plane = h * w * 4
            route = "pad first" if plane % cpu.PAD_FIRST_BYTES == 0 else "direct"
            print(
                f"| ({n}, {c}, {h}x{w}) | {plane} | {t['direct']:.3f} "
                f"| {t['pad first']:.3f} ({t['pad first'] / t['direct']:.2f}x) | {route} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
