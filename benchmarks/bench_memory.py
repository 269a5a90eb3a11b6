"""Peak memory of deform_conv2d forward+backward on CPU against dense conv2d, one fresh process
per case.

Each case runs in its own interpreter (no heap or high-water mark left by another case): the
child compiles the kernels on a tiny shape, allocates the inputs and the upstream gradient, then
calls forward+backward (``torch.autograd.grad`` of every input) twice and reports

* ``first``: the rise of ``ru_maxrss`` (``resource.getrusage``) over the resident set just before
  the first full-size call: the fresh-process high-water mark;
* ``again``: the rise of the peak resident set (``VmHWM`` reset through ``/proc/self/clear_refs``)
  over the resident set before the second call, with glibc set to map every large buffer
  (benchmarks/_harness.py): the steady-state cost.

Both include what the call returns (output, gradients), so compare against the dense conv2d row;
the workspace column is the bound the CPU kernel promises for its working memory
(``max(limit, one image's share) + 2 column blocks``, src/torchdcn/ops/_deform_conv_cpu.py).

Run: ``python benchmarks/bench_memory.py [--threads 2]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# (N, C_in, C_out, H, W)
SHAPES = [(96, 64, 64, 64, 64), (8, 64, 64, 32, 32)]
# (label, op, mask, workspace MiB)
CASES = [
    ("dense conv2d", "dense", False, None),
    ("deform v1", "deform", False, 256),
    ("deform v2 (mask)", "deform", True, 256),
    ("deform v1, limit 64 MiB", "deform", False, 64),
]


def child(args: argparse.Namespace) -> None:
    if args.workspace is not None:
        os.environ["TORCHDCN_WORKSPACE_MB"] = str(args.workspace)
    import resource

    import numba
    import torch
    import torch.nn.functional as F
    from _harness import _status_kib, peak_extra_mib, pin_malloc

    from torchdcn.ops import _deform_conv_cpu, deform_conv2d, workspace_limit

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    n, c_in, c_out, h, w = args.shape
    gen = torch.Generator().manual_seed(0)

    def make(n, c_in, c_out, h, w):
        x = torch.randn(n, c_in, h, w, generator=gen).requires_grad_()
        weight = (torch.randn(c_out, c_in, 3, 3, generator=gen) / 24).requires_grad_()
        offset = torch.randn(n, 18, h, w, generator=gen).requires_grad_()
        mask = torch.rand(n, 9, h, w, generator=gen).requires_grad_() if args.mask else None
        g = torch.randn(n, c_out, h, w, generator=gen)
        leaves = [t for t in (x, weight, offset, mask) if t is not None]
        if args.op == "dense":
            leaves = [x, weight]

            def call():
                return torch.autograd.grad(F.conv2d(x, weight, padding=1), leaves, g)
        else:

            def call():
                y = deform_conv2d(x, offset, weight, padding=1, mask=mask)
                return torch.autograd.grad(y, leaves, g)

        return call

    make(2, c_in, c_out, 8, 8)()  # compile the kernels, start the thread pools
    call = make(n, c_in, c_out, h, w)
    pin_malloc(128 * 1024)
    before = _status_kib("VmRSS")
    call()
    first = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    again = peak_extra_mib(call)
    padded = c_in * (h + 2) * (w + 2) * 4
    try:
        share = _deform_conv_cpu._item_bytes(torch.empty(1, c_in, h, w), backward=True)
    except TypeError:  # a checkout before the backward's share was counted
        share = _deform_conv_cpu._item_bytes(torch.empty(1, c_in, h, w))
    chunk = min(n, max(1, workspace_limit() // share))
    bound = (chunk * share + 2 * _deform_conv_cpu.BLOCK_BYTES) / 2**20
    inputs = (n * (c_in + 18 + (9 if args.mask else 0) + c_out) * h * w * 4) / 2**20
    print(json.dumps({"first": first, "again": again, "bound": bound, "chunk": chunk,
                      "padded_mib": padded / 2**20, "inputs_mib": inputs}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--op", default="deform", help=argparse.SUPPRESS)
    parser.add_argument("--mask", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workspace", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs=5, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import torch

    print(
        f"# deform_conv2d forward+backward peak memory on CPU, float32, {args.threads} threads, "
        f"one process per case; {datetime.date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}"
    )
    print(
        "| shape (N, C_in->C_out, HxW) | case | first call MiB (ru_maxrss) | again MiB (VmHWM) "
        "| minus dense (again) | kernel workspace bound MiB (images per chunk) |"
    )
    print("|---|---|---|---|---|---|")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDCN_")}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for shape in SHAPES:
        dense = None
        for label, op, mask, workspace in CASES:
            cmd = [sys.executable, os.path.join(HERE, "bench_memory.py"), "--child", "--op", op,
                   "--threads", str(args.threads), "--shape", *map(str, shape)]  # fmt: skip
            if mask:
                cmd.append("--mask")
            if workspace is not None:
                cmd += ["--workspace", str(workspace)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=HERE)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            r = json.loads(done.stdout.strip().splitlines()[-1])
            n, c_in, c_out, h, w = shape
            if op == "dense":
                dense = r["again"]
                extra, bound = "-", "-"
            else:
                extra = f"{r['again'] - dense:+.0f}"
                bound = f"{r['bound']:.0f} ({r['chunk']})"
            print(
                f"| ({n}, {c_in}->{c_out}, {h}x{w}) | {label} | {r['first']:.0f} | "
                f"{r['again']:.0f} | {extra} | {bound} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
