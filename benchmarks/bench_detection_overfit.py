"""Real-data sanity check of the detectors (issue 10): overfit a few COCO128 images, score them.

Each configuration trains from scratch (no pretrained weights exist here) on the first
``--images`` COCO128 images whose boxes are all at least ``--min-box`` pixels (32; 0 takes the
first images with any box), the whole set as one batch per step, no flip, and is
scored with :class:`torchdcn.engine.CocoEvaluator` (pycocotools' COCOeval) on the same images
every ``--eval-every`` steps. A run stops at ``--target`` AP50 or after ``--max-minutes`` of
wall time (training and evaluation both count). Configurations:

- ``roi_pool`` / ``roi_align`` / ``deform`` / ``mdeform``: Faster R-CNN (papers' layout, output
  stride 16) with that RoI pooling and a plain backbone;
- ``rpn``: the class-aware RPN detector (v1 section 2.3), anchors matched by the preset's
  ``detector_matcher`` (IoU 0.5, no ignored band; ``--rpn-iou 0.7 0.3`` restores the proposal
  matcher it had before), ``--eval-top-n`` anchors scored per image;
- ``rfcn_ps`` / ``rfcn_deform``: R-FCN with PS / deformable PS RoI pooling (128 sampled RoIs,
  the 1x1 reduction to ``--fc`` channels instead of 1024);
- ``mask_rcnn`` / ``mask_rcnn_v2``: Mask R-CNN, plain (RoIAlign 7x7 box and 14x14 mask poolings)
  and v2 (modulated deformable convs in the backbone, ``mdeform`` for both poolings, v2
  section 4.1), mask head ``--mask-channels`` (64; the paper's 256 is 16x the CPU time) wide;
  trained on the instance masks too and also scored with COCOeval ``segm``: they stop when box
  AP50 >= ``--target`` and mask AP50 >= ``--segm-target`` (0.8).

Small backbone (``--backbone resnet10``: the ResNet-18 preset with one block per stage swapped
in), anchors 16-256 px, trainable BatchNorm and no frozen stage (without
pretrained weights a frozen stem or frozen statistics make no sense), shorter side
``--min-size``; AdamW, linear warm-up, constant lr unless ``--lr-steps`` (times ``--lr-decay``).
The end of each run prints the recall at IoU 0.5 per image (ground truths with a detection of
their class, any score): missed objects vs. mis-ranked ones. Run::

    python benchmarks/bench_detection_overfit.py --config all --max-minutes 6.5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

# before torch starts its OpenMP pool: idle threads do not spin (what `import torchdcn` did
# until 2026-11-30, when the figures in RESULTS.md were taken; it now leaves the policy alone)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from torchdcn.data import coco128
from torchdcn.data.transforms import detection_transforms
from torchdcn.engine.coco_eval import CocoEvaluator
from torchdcn.models.backbones.resnet import BasicBlock, ResNet
from torchdcn.models.detection.faster_rcnn import faster_rcnn, rpn_detector
from torchdcn.models.detection.mask_rcnn import mask_rcnn
from torchdcn.models.detection.matcher import Matcher
from torchdcn.models.detection.rfcn import rfcn
from torchdcn.models.detection.sampler import BalancedSampler
from torchdcn.nn import param_groups
from torchdcn.ops import box_iou

CONFIGS = ("roi_pool", "roi_align", "deform", "mdeform", "rpn", "rfcn_ps", "rfcn_deform")
CONFIGS += ("mask_rcnn", "mask_rcnn_v2")  # Mask R-CNN: trained on masks, scored on segm too


def load_images(args: argparse.Namespace, masks: bool = False) -> tuple[object, list, list]:
    """The dataset and the first ``args.images`` samples with at least one box and no box smaller
    than ``args.min_box`` pixels (square root of its area in the original image); ``masks``:
    the targets carry the instance masks (Mask R-CNN)."""
    data = coco128(
        args.data_root,
        transforms=detection_transforms(False, args.min_size, args.max_size),
        masks=masks,
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
        deform = "v2" if config == "mask_rcnn_v2" else None  # the v2 network: modulated convs
        model.backbone = ResNet(
            BasicBlock, (1, 1, 1, 1), output_stride=16, features_only=True, deform=deform
        )
    return model


def _preset(config: str, num_classes: int, args: argparse.Namespace) -> torch.nn.Module:
    backbone = "resnet18" if args.backbone == "resnet10" else args.backbone
    common = dict(frozen_bn=False, freeze_at=0, anchor_sizes=tuple(args.anchor_sizes))
    common["aspect_ratios"] = tuple(args.aspect_ratios)
    rpn_kwargs = {
        "pre_nms_top_n": {"training": 1000, "testing": 1000},
        "post_nms_top_n": {"training": args.rois, "testing": 300},
    }
    if config.startswith("rfcn_"):  # R-FCN, PS or deformable PS pooling; 1x1 reduction to --fc
        ps_pool = config.removeprefix("rfcn_")
        return rfcn(backbone, None, ps_pool, num_classes, rpn_kwargs=rpn_kwargs,
                    reduce_channels=args.fc, **common)  # fmt: skip
    if config == "rpn":  # every anchor is a detection: --eval-top-n of them scored
        rpn_kwargs["pre_nms_top_n"] = {"training": 1000, "testing": args.eval_top_n}
        if args.rpn_iou is not None:
            rpn_kwargs["matcher"] = Matcher(*args.rpn_iou, allow_low_quality_matches=True)
        return rpn_detector(backbone, None, num_classes, rpn_kwargs=rpn_kwargs, **common)
    if config.startswith("mask_rcnn"):  # v2: modulated convs, mdeform box and mask poolings
        return mask_rcnn(
            backbone, "v2" if config == "mask_rcnn_v2" else None, num_classes=num_classes,
            representation_size=args.fc, deform_hidden=args.fc, rpn_kwargs=rpn_kwargs,
            roi_heads_kwargs={"sampler": BalancedSampler(args.rois // 2, 0.25)},
            mask_channels=args.mask_channels, **common,
        )  # fmt: skip
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
def evaluate(
    model: torch.nn.Module, data: object, images: list, targets: list, outputs: list | None = None
) -> dict:
    """COCOeval of the model on the images; the detections are appended to ``outputs``."""
    model.eval()
    outputs = [] if outputs is None else outputs
    for start in range(0, len(images), 4):
        outputs += model(images[start : start + 4])
    segm = all("masks" in o for o in outputs)  # Mask R-CNN: score the masks too
    iou_types = ("bbox", "segm") if segm else ("bbox",)
    evaluator = CocoEvaluator.from_dataset(data, boxes_in="input", iou_types=iou_types)
    evaluator.process(outputs, targets)
    model.train()
    return evaluator.summarize()


def recall_per_image(outputs: list, targets: list, iou: float = 0.5) -> list[tuple[int, int, int]]:
    """``(image_id, found, boxes)`` per image: ground-truth boxes with a detection of their class
    at IoU >= ``iou`` (any score; input pixels), to tell missed objects from mis-ranked ones."""
    out = []
    for det, target in zip(outputs, targets):
        overlap = box_iou(target["boxes"], det["boxes"])  # [G, D]
        same = target["labels"][:, None] == det["labels"][None]
        found = ((overlap >= iou) & same).any(dim=1)
        out.append((int(target["image_id"]), int(found.sum()), len(found)))
    return out


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up (from scratch, Adam), then constant, times ``--lr-decay`` after each step
    of ``--lr-steps``."""
    decay = args.lr_decay ** sum(step >= s for s in args.lr_steps)
    return args.lr * min(1.0, (step + 1) / args.warmup) * decay


def run(config: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    masks = config.startswith("mask_rcnn")
    data, images, targets = load_images(args, masks)
    boxes = [{k: t[k] for k in ("boxes", "labels", "masks") if k in t} for t in targets]
    model = build(config, data.num_classes, args).train()
    params = param_groups(model, args.lr, args.weight_decay)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    start = time.perf_counter()
    budget = args.max_minutes * 60
    best, history, step, metrics = 0.0, [], 0, {}
    while True:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, args) * group["lr_mult"]
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
            outputs = []
            metrics = evaluate(model, data, images, targets, outputs)
            elapsed = time.perf_counter() - start
            best = max(best, metrics["AP50"])
            named = " ".join(f"{k}={v.item():.3f}" for k, v in losses.items())
            segm = f" segm_AP50={metrics['segm_AP50']:.3f}" if masks else ""
            print(
                f"  [{config}] step {step:4d}  {elapsed:6.1f}s  loss={loss.item():.3f} ({named})  "
                f"AP50={metrics['AP50']:.3f} AP={metrics['AP']:.3f}{segm}",
                flush=True,
            )
            history.append((step, round(elapsed, 1), round(metrics["AP50"], 4)))
            if masks:
                history[-1] += (round(metrics["segm_AP50"], 4),)
            stop = args.keep_going and step < args.max_steps
            done = metrics["AP50"] >= args.target
            done = done and (not masks or metrics["segm_AP50"] >= args.segm_target)
            if (done and not stop) or elapsed > budget:
                break
        if args.max_steps and step >= args.max_steps and step % args.eval_every == 0:
            break
    if args.save:
        torch.save(model.state_dict(), args.save.format(config=config))
    recall = recall_per_image(outputs, targets)
    return {
        "config": config,
        "steps": step,
        "seconds": round(time.perf_counter() - start, 1),
        "AP50": round(metrics["AP50"], 4),
        "AP": round(metrics["AP"], 4),
        "best_AP50": round(best, 4),
        "reached": metrics["AP50"] >= args.target,
        **(
            {
                "segm_AP50": round(metrics["segm_AP50"], 4),
                "segm_AP": round(metrics["segm_AP"], 4),
                "segm_reached": metrics["segm_AP50"] >= args.segm_target,
            }
            if masks
            else {}
        ),
        "boxes": sum(len(t["boxes"]) for t in targets),
        "image_ids": [int(t["image_id"]) for t in targets],
        "recall50": recall,
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
    parser.add_argument("--anchor-sizes", type=float, nargs="+", default=(16, 32, 64, 128, 256))
    parser.add_argument("--aspect-ratios", type=float, nargs="+", default=(0.5, 1.0, 2.0))
    parser.add_argument(
        "--rpn-iou",
        type=float,
        nargs=2,
        default=None,
        metavar=("HIGH", "LOW"),
        help="rpn config: anchor matcher thresholds (default: the rpn_detector preset's)",
    )
    parser.add_argument(
        "--eval-top-n", type=int, default=1000, help="rpn config: anchors scored per image"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-steps", type=int, nargs="*", default=(), help="decay lr at these")
    parser.add_argument("--lr-decay", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=10, help="linear warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--rois", type=int, default=128, help="RPN post-NMS training proposals")
    parser.add_argument("--fc", type=int, default=256, help="width of the 2 fcs (and mdeform)")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--segm-target", type=float, default=0.8, help="mask AP50 (Mask R-CNN)")
    parser.add_argument(
        "--mask-channels", type=int, default=64, help="Mask R-CNN mask head width (paper: 256)"
    )
    parser.add_argument("--max-minutes", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many (0: no cap)")
    parser.add_argument(
        "--keep-going", action="store_true", help="train on past --target until --max-steps"
    )
    parser.add_argument("--save", default=None, help="state_dict path ('{config}' is replaced)")
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
            f"reached={result['reached']} recall@0.5 per image (id found/boxes): "
            + " ".join(f"{i}:{f}/{n}" for i, f, n in result["recall50"])
            + (f" segm_AP50={result['segm_AP50']:.3f}" if "segm_AP50" in result else ""),
            flush=True,
        )
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({**result, "args": vars(args)}) + "\n")


if __name__ == "__main__":
    main()
