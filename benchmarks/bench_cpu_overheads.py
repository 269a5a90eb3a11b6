"""What a CPU deform_conv2d costs beyond its arithmetic: import order, a busy machine, first call.

Three parts, each printing a markdown table (float32, 3x3, stride 1, padding 1, random offsets
and masks, medians; ratios against dense ``F.conv2d`` of the same shape in the same process):

- ``import-order``: a fresh process per order (``import torch`` first, as most users write, or
  ``import torchdcn`` first), ``OMP_WAIT_POLICY`` unset: forward and forward+backward, ours and
  dense. torchdcn leaves the environment alone and starts Numba's own OpenMP runtime passive at
  its first kernel call, so the order should not matter.
- ``contention``: the same calls on an idle machine and while one other process keeps a core
  busy (a Python loop): each one's slowdown, ours against dense; ``--omp-wait passive`` runs it
  with ``OMP_WAIT_POLICY=PASSIVE`` set for the whole process.
- ``first-call``: a fresh process's import and first forward+backward, with Numba's cache warm
  (compiled by an earlier process) and cold (an empty ``NUMBA_CACHE_DIR``).
- ``processes``: the same timings in ``--processes`` fresh processes one after another, each
  process's figures on a row: how much one process differs from the next on an idle machine.

Run: ``python benchmarks/bench_cpu_overheads.py
[--part all|import-order|contention|first-call|processes] [--processes 6]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

SHAPES = [(64, 32, 12, 12), (8, 64, 32, 32), (1, 128, 75, 100)]

# Times ours and dense (forward; forward+backward) on SHAPES; prints one JSON line.
TIMING = r"""
import json, sys, time
{imports}
import torch.nn.functional as F
from torchdcn.ops import deform_conv2d
sys.path.insert(0, {bench_dir!r})
from _harness import deform_inputs, time_interleaved
torch.set_num_threads({threads})
rows = []
for n, c, h, w in {shapes!r}:
    x, wt, off, m, g = deform_inputs(n, c, h, w)
    fns = {{
        "dense_f": lambda: F.conv2d(x.detach(), wt.detach(), padding=1),
        "ours_f": lambda: deform_conv2d(x.detach(), off.detach(), wt.detach(), padding=1,
                                        mask=m.detach()),
        "dense_fb": lambda: torch.autograd.grad(F.conv2d(x, wt, padding=1), (x, wt), g),
        "ours_fb": lambda: torch.autograd.grad(
            deform_conv2d(x, off, wt, padding=1, mask=m), (x, off, wt, m), g),
    }}
    t = time_interleaved(fns, {repeats})
    rows.append({{"shape": [n, c, h, w], **{{k: v * 1e3 for k, v in t.items()}}}})
print(json.dumps(rows))
"""

FIRST_CALL = r"""
import time
t0 = time.perf_counter()
import torch
import torchdcn
from torchdcn.ops import deform_conv2d
t1 = time.perf_counter()
x = torch.randn(2, 16, 12, 12, requires_grad=True)
off = torch.randn(2, 18, 12, 12, requires_grad=True)
m = torch.rand(2, 9, 12, 12, requires_grad=True)
w = torch.randn(16, 16, 3, 3, requires_grad=True)
deform_conv2d(x, off, w, padding=1, mask=m).sum().backward()
t2 = time.perf_counter()
deform_conv2d(x, off, w, padding=1).sum().backward()
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(extra)
    return env


def _timing(imports: str, threads: int, repeats: int, env=None) -> list[dict]:
    code = TIMING.format(
        imports=imports, bench_dir=BENCH_DIR, threads=threads, shapes=SHAPES, repeats=repeats
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env or _env(), capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _shape(row: dict) -> str:
    n, c, h, w = row["shape"]
    return f"({n}, {c}, {h}x{w})"


def import_order(threads: int, repeats: int) -> None:
    print("\n### import order (OMP_WAIT_POLICY unset; ms, ratio to dense in the same process)")
    print("| shape | order | dense f | ours f (x dense) | dense f+b | ours f+b (x dense) |")
    print("|---|---|---|---|---|---|")
    orders = {
        "torch first": "import torch\nimport torchdcn",
        "torchdcn first": "import torchdcn\nimport torch",
    }
    results = {name: _timing(imports, threads, repeats) for name, imports in orders.items()}
    for i in range(len(SHAPES)):
        for name, rows in results.items():
            r = rows[i]
            print(
                f"| {_shape(r)} | {name} | {r['dense_f']:.2f} | {r['ours_f']:.2f} "
                f"({r['ours_f'] / r['dense_f']:.2f}x) | {r['dense_fb']:.2f} | {r['ours_fb']:.2f} "
                f"({r['ours_fb'] / r['dense_fb']:.2f}x) |",
                flush=True,
            )


def contention(threads: int, repeats: int, wait: str) -> None:
    print(f"\n### one other busy process (OMP_WAIT_POLICY {wait}; ms idle -> busy, slowdown)")
    print("| shape | dense f | ours f | dense f+b | ours f+b |")
    print("|---|---|---|---|---|")
    imports = "import torch\nimport torchdcn"
    env = _env() if wait == "unset" else _env(OMP_WAIT_POLICY=wait.upper())
    idle = _timing(imports, threads, repeats, env)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = _timing(imports, threads, repeats, env)
    finally:
        hog.kill()
        hog.wait()
    for a, b in zip(idle, busy, strict=True):
        cells = [f"{a[k]:.2f} -> {b[k]:.2f} ({b[k] / a[k]:.2f}x)" for k in
                 ("dense_f", "ours_f", "dense_fb", "ours_fb")]  # fmt: skip
        print(f"| {_shape(a)} | " + " | ".join(cells) + " |", flush=True)


def first_call() -> None:
    print("\n### first call in a fresh process: import (s), first v2 f+b (s), then a v1 f+b (ms)")
    print("| Numba cache | import s | first v2 call s | next (v1) call ms |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as cache:
        env = _env(NUMBA_CACHE_DIR=cache)
        for label in ("cold (empty)", "warm"):
            done = subprocess.run(
                [sys.executable, "-c", FIRST_CALL], env=env, capture_output=True, text=True,
                check=True,
            )  # fmt: skip
            t = [float(v) for v in done.stdout.split()]
            print(f"| {label} | {t[0]:.2f} | {t[1]:.2f} | {t[2] * 1e3:.1f} |", flush=True)


def processes(threads: int, repeats: int, count: int) -> None:
    print(f"\n### {count} fresh processes, one after another (OMP_WAIT_POLICY unset; ms, x dense)")
    print("| shape | process | dense f | ours f (x dense) | dense f+b | ours f+b (x dense) |")
    print("|---|---|---|---|---|---|")
    runs = [_timing("import torch\nimport torchdcn", threads, repeats) for _ in range(count)]
    for i in range(len(SHAPES)):
        for k, rows in enumerate(runs):
            r = rows[i]
            print(
                f"| {_shape(r)} | {k + 1} | {r['dense_f']:.2f} | {r['ours_f']:.2f} "
                f"({r['ours_f'] / r['dense_f']:.2f}x) | {r['dense_fb']:.2f} | {r['ours_fb']:.2f} "
                f"({r['ours_fb'] / r['dense_fb']:.2f}x) |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part",
        choices=["all", "import-order", "contention", "first-call", "processes"],
        default="all",
    )
    parser.add_argument("--processes", type=int, default=6, help="fresh processes (processes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--omp-wait",
        choices=["unset", "passive"],
        default="unset",
        help="OMP_WAIT_POLICY of the contention part's processes (default: unset, as a user)",
    )
    args = parser.parse_args()
    print(
        f"# CPU deform_conv2d overheads, float32, {args.threads} threads, medians of "
        f"{args.repeats}; {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores"
    )
    if args.part in ("all", "import-order"):
        import_order(args.threads, args.repeats)
    if args.part in ("all", "contention"):
        contention(args.threads, args.repeats, args.omp_wait)
    if args.part in ("all", "first-call"):
        first_call()
    if args.part in ("all", "processes"):
        processes(args.threads, args.repeats, args.processes)


if __name__ == "__main__":
    main()
