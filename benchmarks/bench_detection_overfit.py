"""Real-data sanity check of the detectors (issue 10): overfit a few COCO128 images, score them.

Each configuration trains from scratch (no pretrained weights exist here) on the first
``--images`` COCO128 images whose boxes are all at least ``--min-box`` pixels (32; 0 takes the
first images with any box), the whole set as one batch per step, no flip, and is
scored with :class:`torchdcn.engine.CocoEvaluator` (pycocotools' COCOeval) on the same images
every ``--eval-every`` steps. A run stops at ``--target`` AP50 or after ``--max-minutes`` of
wall time (training and evaluation both count). Configurations:

- ``roi_pool`` / ``roi_align`` / ``deform`` / ``mdeform``: Faster R-CNN (papers' layout, output
  stride 16) with that RoI pooling and a plain backbone;
- ``rpn``: the class-aware RPN detector (v1 section 2.3).

Small backbone (``--backbone resnet10``: the ResNet-18 preset with one block per stage swapped
in), anchors 16-256 px, trainable BatchNorm and no frozen stage (without
pretrained weights a frozen stem or frozen statistics make no sense), shorter side
``--min-size``. Run::

    python benchmarks/bench_detection_overfit.py --config all --max-minutes 6.5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

# before torch starts its OpenMP pool (as `import torchdcn` would): idle threads do not spin
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from torchdcn.data import coco128
from torchdcn.data.transforms import detection_transforms
from torchdcn.engine.coco_eval import CocoEvaluator
from torchdcn.models.backbones.resnet import BasicBlock, ResNet
from torchdcn.models.detection.faster_rcnn import faster_rcnn, rpn_detector
from torchdcn.models.detection.sampler import BalancedSampler
from torchdcn.nn import param_groups

CONFIGS = ("roi_pool", "roi_align", "deform", "mdeform", "rpn")


def load_images(args: argparse.Namespace) -> tuple[object, list, list]:
    """The dataset and the first ``args.images`` samples with at least one box and no box smaller
    than ``args.min_box`` pixels (square root of its area in the original image)."""
    data = coco128(
        args.data_root, transforms=detection_transforms(False, args.min_size, args.max_size)
    )
    images, targets = [], []
    for i in range(len(data)):
        image, target = data[i]
        sides = (data.target(i)["boxes"][:, 2:] - data.target(i)["boxes"][:, :2]).prod(1).sqrt()
        if len(sides) and sides.min() >= args.min_box:
            images.append(image)
            targets.append(target)
        if len(images) == args.images:
            break
    return data, images, targets


def build(config: str, num_classes: int, args: argparse.Namespace) -> torch.nn.Module:
    """The preset of ``config``; ``--backbone resnet10`` builds it with ResNet-18 and swaps in a
    ResNet with one basic block per stage (same channels, strides and dilations)."""
    model = _preset(config, num_classes, args)
    if args.backbone == "resnet10":
        model.backbone = ResNet(BasicBlock, (1, 1, 1, 1), output_stride=16, features_only=True)
    return model


def _preset(config: str, num_classes: int, args: argparse.Namespace) -> torch.nn.Module:
    backbone = "resnet18" if args.backbone == "resnet10" else args.backbone
    common = dict(frozen_bn=False, freeze_at=0, anchor_sizes=tuple(args.anchor_sizes))
    rpn_kwargs = {
        "pre_nms_top_n": {"training": 1000, "testing": 1000},
        "post_nms_top_n": {"training": args.rois, "testing": 300},
    }
    if config == "rpn":
        return rpn_detector(backbone, None, num_classes, rpn_kwargs=rpn_kwargs, **common)
    return faster_rcnn(
        backbone,
        None,
        roi_pool=config,
        num_classes=num_classes,
        representation_size=args.fc,
        deform_hidden=args.fc,
        rpn_kwargs=rpn_kwargs,
        roi_heads_kwargs={"sampler": BalancedSampler(args.rois // 2, 0.25)},
        **common,
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: object, images: list, targets: list) -> dict:
    model.eval()
    evaluator = CocoEvaluator.from_dataset(data, boxes_in="input")
    outputs = []
    for start in range(0, len(images), 4):
        outputs += model(images[start : start + 4])
    evaluator.process(outputs, targets)
    model.train()
    return evaluator.summarize()


def run(config: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    data, images, targets = load_images(args)
    boxes = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
    model = build(config, data.num_classes, args).train()
    params = param_groups(model, args.lr, args.weight_decay)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    start = time.perf_counter()
    budget = args.max_minutes * 60
    best, history, step, metrics = 0.0, [], 0, {}
    while True:
        # linear warm-up (from scratch, Adam), then constant
        for group in opt.param_groups:
            group["lr"] = args.lr * group["lr_mult"] * min(1.0, (step + 1) / args.warmup)
        losses = model(images, boxes)
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{config}: non-finite loss at step {step}: {losses}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        step += 1
        elapsed = time.perf_counter() - start
        if step % args.eval_every == 0 or elapsed > budget:
            metrics = evaluate(model, data, images, targets)
            elapsed = time.perf_counter() - start
            best = max(best, metrics["AP50"])
            named = " ".join(f"{k}={v.item():.3f}" for k, v in losses.items())
            print(
                f"  [{config}] step {step:4d}  {elapsed:6.1f}s  loss={loss.item():.3f} ({named})  "
                f"AP50={metrics['AP50']:.3f} AP={metrics['AP']:.3f}",
                flush=True,
            )
            history.append((step, round(elapsed, 1), round(metrics["AP50"], 4)))
            if metrics["AP50"] >= args.target or elapsed > budget:
                break
    return {
        "config": config,
        "steps": step,
        "seconds": round(time.perf_counter() - start, 1),
        "AP50": round(metrics["AP50"], 4),
        "AP": round(metrics["AP"], 4),
        "best_AP50": round(best, 4),
        "reached": metrics["AP50"] >= args.target,
        "boxes": sum(len(t["boxes"]) for t in targets),
        "image_ids": [int(t["image_id"]) for t in targets],
        "history": history,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=(*CONFIGS, "all"), default="all")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument(
        "--min-box", type=float, default=32, help="skip images with a smaller box (original px)"
    )
    parser.add_argument("--backbone", default="resnet10", help="resnet10: resnet18, 1 block/stage")
    parser.add_argument("--min-size", type=int, default=192)
    parser.add_argument("--max-size", type=int, default=320)
    parser.add_argument("--anchor-sizes", type=float, nargs=5, default=(16, 32, 64, 128, 256))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=10, help="linear warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--rois", type=int, default=128, help="RPN post-NMS training proposals")
    parser.add_argument("--fc", type=int, default=256, help="width of the 2 fcs (and mdeform)")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--max-minutes", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="append one JSON line per config here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {' '.join(sys.argv)}", flush=True)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for config in CONFIGS if args.config == "all" else (args.config,):
        result = run(config, args)
        print(
            f"{config:10s} AP50={result['AP50']:.3f} (best {result['best_AP50']:.3f}) "
            f"AP={result['AP']:.3f} steps={result['steps']} {result['seconds']:.0f}s "
            f"reached={result['reached']}",
            flush=True,
        )
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({**result, "args": vars(args)}) + "\n")


if __name__ == "__main__":
    main()
