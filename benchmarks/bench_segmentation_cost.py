"""Cost of DeepLab ResNet-50, plain vs deformable v1 / v2 (the v1 paper's Table 4, issue 11).

Three DeepLabs in the v1 paper's layout (output stride 16, conv5 dilated 2, randomly initialised
1x1 conv to 1024 + ReLU, 1x1 classifier to 21 maps, VOC's 20 classes + background, bilinear
upsampling), randomly initialised:

- ``plain``: no deformable layer;
- ``v1``: deformable last three 3x3 convs of conv5 (the paper's DeepLab);
- ``v2``: modulated deformable 3x3 convs in conv3-conv5.

For each: parameters, multiply-adds of one inference on a ``--size`` image by kind
(:func:`torchdcn.analysis.complexity.flop_breakdown`: shapes only, fake tensors), and the median
wall time of one inference (eval mode, ``torch.no_grad``) with the three models taking turns in
the same process (``_harness.time_interleaved``), so the ratios to ``plain`` compare like with
like. ``--head aspp`` measures the ASPP head instead.

    .venv/bin/python benchmarks/bench_segmentation_cost.py [--size 360 480] [--repeats 2]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from collections.abc import Callable

# before torch starts its OpenMP pool (as `import torchdcn` would): idle threads do not spin
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from _harness import time_interleaved
from torch import nn

from torchdcn.analysis.complexity import KINDS, count_parameters, flop_breakdown
from torchdcn.engine.distributed import set_cpu_threads
from torchdcn.models.segmentation import deeplab

VARIANTS = {"plain": None, "v1": "v1", "v2": "v2"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--head", choices=("deeplab", "aspp"), default="deeplab")
    parser.add_argument("--output-stride", type=int, choices=(8, 16), default=16)
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="timed inferences per model")
    parser.add_argument("--no-time", action="store_true", help="parameters and MACs only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    set_cpu_threads(args.threads)  # torch and Numba: a Numba kernel call resets OpenMP's count
    torch.manual_seed(0)
    shape = (1, 3, *args.size)
    models = {
        # frozen BatchNorm as in the papers' fine-tuning (its statistics are buffers, not
        # parameters: the counts of docs/complexity.md)
        name: deeplab(
            args.backbone,
            deform,
            args.num_classes,
            args.output_stride,
            args.head,
            frozen_bn=True,
            freeze_at=2,
        ).eval()
        for name, deform in VARIANTS.items()
    }
    rows = {}
    for name, model in models.items():
        rows[name] = {"params": count_parameters(model), "macs": flop_breakdown(model, shape)}
    times: dict[str, float] = {}
    if not args.no_time:
        image = torch.rand(shape)

        def infer(model: nn.Module) -> Callable[[], object]:
            def call() -> object:
                with torch.no_grad():
                    return model(image)

            return call

        times = time_interleaved(
            {n: infer(m) for n, m in models.items()}, args.repeats, warmup=0, block=1
        )
    when = datetime.date.today().isoformat()
    print(
        f"# deeplab {args.backbone} head={args.head} output stride {args.output_stride}, "
        f"{args.num_classes + 1} maps, inference on 1 image 3 x {args.size[0]} x {args.size[1]}, "
        f"float32, {torch.get_num_threads()} threads, medians of {args.repeats}; {when}, "
        f"{platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}"
    )
    print()
    print("| model | deform | params (M) | x plain | GMACs | x plain | time (s) | x plain |")
    print("|---|---|---|---|---|---|---|---|")
    base = rows["plain"]
    base_total = sum(base["macs"][k] for k in KINDS)
    for name, row in rows.items():
        total = sum(row["macs"][k] for k in KINDS)
        timing = f"{times[name]:.2f} | {times[name] / times['plain']:.2f}" if times else "- | -"
        print(
            f"| {name} | {VARIANTS[name]} | {row['params'] / 1e6:.3f} "
            f"| {row['params'] / base['params']:.3f} | {total / 1e9:.2f} "
            f"| {total / base_total:.3f} | {timing} |"
        )
    print()
    for name, row in rows.items():
        parts = ", ".join(f"{k} {row['macs'][k] / 1e9:.3f}" for k in KINDS)
        print(f"# {name} GMACs by kind: {parts}")


if __name__ == "__main__":
    main()
