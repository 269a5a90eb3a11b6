"""RoI pooling family on CPU: forward and forward+backward of every op, and a plain vectorised
PyTorch RoIAlign as the baseline.

512 RoIs on a (2, 256, 38, 50) float32 map (stride 16 of a 608 x 800 image), 7 x 7 bins, sampling
ratio 2; the position-sensitive ops read a (2, 245, 38, 50) map (5 output channels x 49 bins).
The last row is R-FCN's deformable PS pooling of the class score maps as the digit-scenes tables
run it: 512 RoIs of 4 images, a (4, 539, 8, 8) map (11 classes x 49 bins), one offset pair per
class and bin (one channel per offset group).
Two threads (torch and Numba), glibc malloc thresholds pinned, all runs interleaved, medians
(``_harness.time_interleaved``).

    .venv/bin/python benchmarks/bench_roi_pool.py [--repeats 15]

Targets (issue 3): every deformable op within 1.5x of ``roi_align``; ``roi_align`` on a par with
the baseline.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from collections.abc import Callable

import numba
import torch
from _harness import time_interleaved

from torchdcn.ops import (
    deform_ps_roi_pool,
    deform_roi_pool,
    ps_roi_align,
    ps_roi_pool,
    roi_align,
    roi_pool,
)

K, SCALE, RATIO = 7, 1 / 16, 2


def baseline_roi_align(x: torch.Tensor, rois: torch.Tensor, k: int, scale: float, ratio: int):
    """A straightforward vectorised RoIAlign (aligned, fixed ratio): every sample point of every bin
    at once, four corner gathers from a channels-last map, autograd for the backward."""
    _, _, h, w = x.shape
    b = rois[:, 0].long()
    x1, y1, x2, y2 = (rois[:, 1:] * scale - 0.5).unbind(1)
    steps = torch.arange(k)[:, None] + (torch.arange(ratio) + 0.5)[None, :] / ratio  # [k, ratio]
    ys = y1[:, None, None] + steps * ((y2 - y1) / k)[:, None, None]  # [R, k, ratio]
    xs = x1[:, None, None] + steps * ((x2 - x1) / k)[:, None, None]
    r = len(rois)
    yy = ys[:, :, None, :, None].expand(r, k, k, ratio, ratio)
    xx = xs[:, None, :, None, :].expand(r, k, k, ratio, ratio)
    valid = ((yy >= -1) & (yy <= h) & (xx >= -1) & (xx <= w)).unsqueeze(-1)
    yy = yy.clamp(0, h - 1)
    xx = xx.clamp(0, w - 1)
    y0, x0 = yy.floor().long(), xx.floor().long()
    y1i, x1i = (y0 + 1).clamp(max=h - 1), (x0 + 1).clamp(max=w - 1)
    ly, lx = (yy - y0).unsqueeze(-1), (xx - x0).unsqueeze(-1)
    feat = x.permute(0, 2, 3, 1)  # [N, H, W, C]
    bb = b[:, None, None, None, None]
    val = (
        (1 - ly) * (1 - lx) * feat[bb, y0, x0]
        + (1 - ly) * lx * feat[bb, y0, x1i]
        + ly * (1 - lx) * feat[bb, y1i, x0]
        + ly * lx * feat[bb, y1i, x1i]
    )
    return (val * valid).mean((3, 4)).permute(0, 3, 1, 2)


def make_inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 256, 38, 50, generator=gen)
    xp = torch.randn(2, 5 * K * K, 38, 50, generator=gen)
    r = 512
    wh = torch.rand(r, 2, generator=gen) * torch.tensor([400.0, 300.0]) + 16
    xy = torch.rand(r, 2, generator=gen) * (torch.tensor([800.0, 608.0]) - wh)
    b = torch.arange(r).remainder(2).float()[:, None]
    rois = torch.cat([b, xy, xy + wh], 1)
    offset = 0.3 * torch.randn(r, 2, K, K, generator=gen)
    offset_cls = 0.3 * torch.randn(r, 2 * 5, K, K, generator=gen)
    mask = torch.rand(r, 1, K, K, generator=gen)
    # R-FCN on the digit scenes: 128 x 128 images at stride 16, 11 classes, 128 RoIs per image
    scenes = torch.randn(4, 11 * K * K, 8, 8, generator=gen)
    wh = torch.rand(r, 2, generator=gen) * 96 + 8
    xy = torch.rand(r, 2, generator=gen) * (128 - wh)
    scene_rois = torch.cat([torch.arange(r).remainder(4).float()[:, None], xy, xy + wh], 1)
    scene_offset = 0.1 * torch.randn(r, 2 * 11, K, K, generator=gen)
    return x, xp, rois, offset, offset_cls, mask, (scenes, scene_rois, scene_offset)


def cases(x, xp, rois, offset, offset_cls, mask, scenes) -> dict[str, tuple[Callable, list]]:
    """name -> (function of the differentiable tensors, those tensors)."""
    scene_maps, scene_rois, scene_offset = scenes
    return {
        "baseline roi_align (vectorised torch)": (
            lambda t: baseline_roi_align(t, rois, K, SCALE, RATIO),
            [x],
        ),
        "roi_align": (lambda t: roi_align(t, rois, K, SCALE, RATIO, aligned=True), [x]),
        "roi_pool": (lambda t: roi_pool(t, rois, K, SCALE), [x]),
        "deform_roi_pool": (
            lambda t, o: deform_roi_pool(t, rois, o, K, SCALE, RATIO),
            [x, offset],
        ),
        "deform_roi_pool + mask (v2)": (
            lambda t, o, m: deform_roi_pool(t, rois, o, K, SCALE, RATIO, 0.1, m),
            [x, offset, mask],
        ),
        "ps_roi_pool": (lambda t: ps_roi_pool(t, rois, K, SCALE), [xp]),
        "ps_roi_align": (lambda t: ps_roi_align(t, rois, K, SCALE, RATIO), [xp]),
        "deform_ps_roi_pool (class-agnostic)": (
            lambda t, o: deform_ps_roi_pool(t, rois, o, K, SCALE, RATIO),
            [xp, offset],
        ),
        "deform_ps_roi_pool (5 classes)": (
            lambda t, o: deform_ps_roi_pool(t, rois, o, K, SCALE, RATIO),
            [xp, offset_cls],
        ),
        "deform_ps_roi_pool (R-FCN digit scenes, 11 classes)": (
            lambda t, o: deform_ps_roi_pool(t, scene_rois, o, K, SCALE, RATIO),
            [scene_maps, scene_offset],
        ),
    }


def forward_fn(fn, tensors) -> Callable[[], object]:
    def run():
        with torch.no_grad():
            return fn(*tensors)

    return run


def backward_fn(fn, tensors, grad) -> Callable[[], object]:
    def run():
        leaves = [t.detach().requires_grad_(True) for t in tensors]
        return torch.autograd.grad(fn(*leaves), leaves, grad)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)

    inputs = make_inputs()
    table = cases(*inputs)
    x, _, rois = inputs[:3]
    ours = roi_align(x, rois, K, SCALE, RATIO, aligned=True)
    torch.testing.assert_close(baseline_roi_align(x, rois, K, SCALE, RATIO), ours)
    fns: dict[str, Callable[[], object]] = {}
    for name, (fn, tensors) in table.items():
        with torch.no_grad():
            grad = torch.randn_like(fn(*tensors))
        fns[f"{name}/fwd"] = forward_fn(fn, tensors)
        fns[f"{name}/bwd"] = backward_fn(fn, tensors, grad)
    load = os.getloadavg()[0]
    times = time_interleaved(fns, args.repeats)  # every case once per round, medians
    load = max(load, os.getloadavg()[0])
    med_f = {name: 1e3 * times[f"{name}/fwd"] for name in table}
    med_b = {name: 1e3 * times[f"{name}/bwd"] for name in table}
    ref_f, ref_b = med_f["roi_align"], med_b["roi_align"]
    print(
        f"{datetime.date.today()}, torch {torch.__version__}, numba {numba.__version__}, "
        f"{args.threads} threads, {platform.machine()} ({os.cpu_count()} CPUs), 1-minute load "
        f"average up to {load:.2f} around the timed runs, {args.repeats} interleaved rounds, "
        "medians"
    )
    print()
    print("| op | forward ms | / roi_align | forward+backward ms | / roi_align |")
    print("|---|---:|---:|---:|---:|")
    for name in table:
        print(
            f"| {name} | {med_f[name]:.2f} | {med_f[name] / ref_f:.2f} | {med_b[name]:.2f} | "
            f"{med_b[name] / ref_b:.2f} |"
        )


if __name__ == "__main__":
    main()
