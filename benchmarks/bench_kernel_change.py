"""The CPU deform_conv2d of this tree against the one of an earlier commit, in one process.

Separate processes on this project's VMs vary by more than a kernel change of 10-20 % (runs of
one build moved 1.4-1.7x from process to process, benchmarks/RESULTS.md), so this loads the
earlier commit's two kernel modules (``ops/_deform_conv_cpu.py`` and
``ops/_deform_conv_cpu_kernels.py``, read with ``git show REV:path`` into a temporary package
whose other imports resolve to this tree) beside the current ones and times both drivers'
``forward`` and ``forward`` + ``backward`` (v2, 3x3, padding 1, float32; the functions the
registered op calls, without autograd), interleaved (``_harness.time_interleaved``). Prints
medians and the ratio new / old per shape, and checks that both give the same output.

Run: ``python benchmarks/bench_kernel_change.py --base REV [--threads 1] [--repeats 15]
[--shapes N,C,H,W ...]``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numba
import torch
from _harness import deform_inputs, time_interleaved

from torchdcn.ops import _deform_conv_cpu as new

SHAPES = [(1, 256, 38, 50), (1, 128, 75, 100), (8, 64, 32, 32), (64, 32, 12, 12), (4, 128, 8, 8)]
FILES = ("_deform_conv_cpu_kernels", "_deform_conv_cpu")
ROOT = Path(__file__).resolve().parents[1]


def load_old(rev: str, where: Path):
    """The driver module of commit ``rev`` (its kernels beside it, in package ``old_ops``)."""
    pkg = where / "old_ops"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in FILES:
        text = subprocess.run(
            ["git", "show", f"{rev}:src/torchdcn/ops/{name}.py"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        # the modules' other relative imports are this tree's (threads, batch chunks)
        for other in ("_backend", "_numba_threads"):
            text = text.replace(f"from .{other} import", f"from torchdcn.ops.{other} import")
        (pkg / f"{name}.py").write_text(text)
    sys.path.insert(0, str(where))
    spec = importlib.util.find_spec("old_ops._deform_conv_cpu")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(old, shapes, repeats):
    for n, c, h, w in shapes:
        x, weight, offset, mask, grad = (t.detach() for t in deform_inputs(n, c, h, w))
        args = (x, offset, mask, weight, None, (1, 1), (1, 1), (1, 1))
        torch.testing.assert_close(new.forward(*args), old.forward(*args), rtol=1e-4, atol=1e-4)

        def fwd(mod, args=args):
            return lambda: mod.forward(*args)

        def fwd_bwd(mod, args=args, grad=grad):
            return lambda: (mod.forward(*args), mod.backward(grad, *args))

        fns = {"old f": fwd(old), "new f": fwd(new)}
        fns.update({"old f+b": fwd_bwd(old), "new f+b": fwd_bwd(new)})
        t = {k: v * 1e3 for k, v in time_interleaved(fns, repeats).items()}
        yield (
            f"| ({n}, {c}, {h}x{w}) | {t['old f']:.2f} | {t['new f']:.2f} "
            f"({t['new f'] / t['old f']:.2f}x) | {t['old f+b']:.2f} | {t['new f+b']:.2f} "
            f"({t['new f+b'] / t['old f+b']:.2f}x) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier commit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--shapes", nargs="*", default=None, help="N,C,H,W each")
    args = parser.parse_args()
    shapes = [tuple(map(int, s.split(","))) for s in args.shapes] if args.shapes else SHAPES
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.base], cwd=ROOT, check=True, capture_output=True,
        text=True,
    ).stdout.strip()  # fmt: skip
    print(
        f"# deform_conv2d (v2) on CPU, this tree against {rev}, float32, {args.threads} "
        f"thread(s), medians of {args.repeats}; {datetime.date.today()}, {platform.machine()}, "
        f"torch {torch.__version__}; ms (x old)"
    )
    print("| shape (N, C, HxW) | old f | new f | old f+b | new f+b |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        old = load_old(args.base, Path(tmp))
        for row in rows(old, shapes, args.repeats):
            print(row, flush=True)


if __name__ == "__main__":
    main()
