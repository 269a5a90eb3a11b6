"""``batched_nms`` with many categories on CPU: the Numba kernel, the blocked torch route (the CUDA
path, on CPU, once) and a per-category loop of ``nms`` calls, with identical kept lists.

Boxes as in ``bench_nms.py`` (N / 20 clustered centres in a 1333 x 800 image, sides 16-256 px,
10 % jitter, uniform scores), categories uniform in ``[0, C)``, IoU threshold 0.5, float32, one
thread, medians of ``--repeats`` calls (one warm-up call each).

    .venv/bin/python benchmarks/bench_batched_nms.py [--repeats 5] [--cases 20000:80 80000:80]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np
import torch

from torchdcn.ops import batched_nms, nms, use_backend


def make(n: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n // 20, 2, generator=g) * torch.tensor([1333.0, 800.0])
    size = torch.exp(torch.empty(n // 20, 1).uniform_(np.log(16), np.log(256), generator=g))
    pick = torch.randint(0, n // 20, (n,), generator=g)
    c = centres[pick] + 0.1 * size[pick] * torch.randn(n, 2, generator=g)
    s = size[pick] * torch.exp(0.1 * torch.randn(n, 2, generator=g))
    idxs = torch.randint(0, classes, (n,), generator=g)
    return torch.cat([c - s / 2, c + s / 2], 1), torch.rand(n, generator=g), idxs


def per_class_loop(boxes, scores, idxs, thr):
    kept = []
    for c in idxs.unique():
        members = (idxs == c).nonzero()[:, 0]
        kept.append(members[nms(boxes[members], scores[members], thr)])
    kept = torch.cat(kept).sort().values  # ties by index, then a stable sort by score
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def median_ms(fn, repeats: int):
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return result, 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cases", nargs="+", default=["1000:80", "20000:80", "80000:80", "20000:1"]
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, IoU 0.5, float32, medians of {args.repeats}")
    print("| N | categories | kept | numba ms | per-category nms loop ms | torch route ms | same |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for case in args.cases:
        n, classes = (int(v) for v in case.split(":"))
        boxes, scores, idxs = make(n, classes)
        with use_backend("numba"):
            call = functools.partial(batched_nms, boxes, scores, idxs, 0.5)
            kept, numba_ms = median_ms(call, args.repeats)
            loop, loop_ms = median_ms(
                functools.partial(per_class_loop, boxes, scores, idxs, 0.5), 1
            )
        same = torch.equal(kept, loop)
        torch_ms = float("nan")
        if n <= 20000:
            with use_backend("triton"):  # CPU tensors: the blocked torch route
                start = time.perf_counter()
                same &= torch.equal(batched_nms(boxes, scores, idxs, 0.5), kept)
                torch_ms = 1e3 * (time.perf_counter() - start)
        print(
            f"| {n} | {classes} | {len(kept)} | {numba_ms:.1f} | {loop_ms:.1f} | {torch_ms:.0f} "
            f"| {'yes' if same else 'NO'} |"
        )


if __name__ == "__main__":
    main()
