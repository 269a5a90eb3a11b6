"""Cost of Mask R-CNN's mask branch, plain (RoIAlign) vs v2 (``mdeform``) 14 x 14 pooling.

``bench_detection_cost.py`` measures the detectors with zeroed predictors, so they keep no
detection and a Mask R-CNN's mask branch (which runs on the detections) would cost nothing there.
This script measures the branch on its own, on what it sees at test time: ``--detections`` boxes
(100, COCO's cap) on the stride-16 256-channel map of a ``--size`` image (the papers' layout, 38 x
63 cells for 600 x 1000), through the 14 x 14 pooler, 4 conv 3x3 256 + deconv, the 80-class 1x1
predictor, the sigmoid of each box's class map and the paste-back into the full image. Reported:
the branch's parameters (pooler's offset branch included), its multiply-adds (convs, deconv,
predictor, offset fcs) and the median wall time of the branch with and without the paste-back,
the two variants interleaved (``_harness.time_interleaved``). Add the branch to the Faster R-CNN
rows of ``bench_detection_cost.py`` for a whole Mask R-CNN (its box head is Faster R-CNN's).

    .venv/bin/python benchmarks/bench_mask_branch_cost.py [--size 600 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from _harness import time_interleaved
from torch import nn

from torchdcn.models.detection.mask_head import MaskHead, MaskPredictor, select_class_masks
from torchdcn.models.detection.paste_masks import paste_masks_in_image
from torchdcn.models.detection.poolers import RoIPooler

VARIANTS = {"plain": "roi_align", "v2": "mdeform"}


def branch(kind: str, channels: int, classes: int) -> nn.ModuleDict:
    pooler = RoIPooler(kind, ["conv5_reduced"], [16], channels, output_size=14, sampling_ratio=2)
    head = MaskHead(channels, 256, 4)
    return nn.ModuleDict(
        {"pooler": pooler, "head": head, "predictor": MaskPredictor(256, classes)}
    ).eval()


def macs(model: nn.ModuleDict, features: dict, boxes: torch.Tensor) -> int:
    total = 0

    def on_layer(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        else:  # Conv2d: out * c_in * k * k; ConvTranspose2d: in * c_out * k * k
            w = module.weight
            if isinstance(module, nn.ConvTranspose2d):
                total += inputs[0].numel() * w.shape[1] * w.shape[2] * w.shape[3]
            else:
                total += output.numel() * w.shape[1] * w.shape[2] * w.shape[3]

    handles = [
        m.register_forward_hook(on_layer)
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))
    ]
    try:
        with torch.no_grad():
            model["predictor"](model["head"](model["pooler"](features, [boxes])))
    finally:
        for h in handles:
            h.remove()
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(600, 1000), metavar=("H", "W"))
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = args.size
    features = {"conv5_reduced": torch.rand(1, 256, -(-h // 16), -(-w // 16))}
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(args.detections, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    wh = (0.05 + 0.25 * torch.rand(args.detections, 2, generator=g)) * torch.tensor([w, h])
    boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], dim=1)
    labels = torch.randint(1, args.classes + 1, (args.detections,), generator=g)
    models = {name: branch(kind, 256, args.classes) for name, kind in VARIANTS.items()}

    def run(model: nn.ModuleDict, paste: bool) -> Callable[[], object]:
        def call() -> object:
            with torch.no_grad():
                logits = model["predictor"](model["head"](model["pooler"](features, [boxes])))
                probs = select_class_masks(logits, labels).sigmoid()
                return paste_masks_in_image(probs, boxes, (h, w)) if paste else probs

        return call

    fns = {f"{n}/{p}": run(m, p == "paste") for n, m in models.items() for p in ("net", "paste")}
    times = time_interleaved(fns, args.repeats, warmup=1, block=1)
    print(
        f"# Mask R-CNN mask branch, {args.detections} boxes on a {h} x {w} image (stride-16 "
        f"256-channel map), {args.classes} classes, float32, {torch.get_num_threads()} threads, "
        f"medians of {args.repeats}; {datetime.date.today().isoformat()}, {platform.machine()}, "
        f"{os.cpu_count()} cores (shared), torch {torch.__version__}"
    )
    print()
    print("| mask pooling | params (M) | GMACs | time, branch (s) | time, + paste-back (s) |")
    print("|---|---:|---:|---:|---:|")
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        print(
            f"| {name} (`{VARIANTS[name]}`) | {params / 1e6:.3f} "
            f"| {macs(model, features, boxes) / 1e9:.2f} | {times[f'{name}/net']:.3f} "
            f"| {times[f'{name}/paste']:.3f} |"
        )


if __name__ == "__main__":
    main()
