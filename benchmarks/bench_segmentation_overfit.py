"""Real-data sanity check of DeepLab (issue 11): overfit a few COCO128 images, score their mIoU.

Each configuration trains from scratch (no pretrained weights exist here) on the first
``--images`` COCO128 images with at least one object and every class present covering at least
``--min-area`` pixels of the original image (4096 = 64 x 64, about 17 x 17 at the training size;
0 keeps the first images whatever their objects), label maps rendered from the instance masks
(:class:`torchdcn.data.segmentation.CocoSegmentation`: 0 background, 1..80 the categories, 255 on
crowds and where two classes overlap), the whole set as one batch per step, no flip. It is scored
with :class:`torchdcn.engine.miou.MIoUEvaluator` on the same images (at the resized input size)
every ``--eval-every`` steps; mIoU is the mean over the classes present in those images (the
background included). A run stops at ``--target`` mIoU or after ``--max-minutes`` of wall time
(training and evaluation both count). Configurations:

- ``plain``: DeepLab on a plain dilated backbone;
- ``v1``: the last three 3x3 convs of conv5 deformable (the v1 paper's DeepLab); the small
  backbone below has only two in conv5, both become deformable;
- ``v2``: every 3x3 conv of conv3-conv5 modulated deformable.

Small backbone (``--backbone resnet10``: one basic block per stage, the ResNet-18 widths), output
stride ``--output-stride`` 16 (the papers'; conv5 dilated 2), trainable BatchNorm, the paper's
head (1x1 conv to 1024 + ReLU, classifier), bilinear upsampling to the input; images with the
shorter side ``--min-size`` 128 (longer at most 192) so that a 2-core CPU makes a step in seconds.
AdamW lr 1e-3 (offset predictors at their multipliers), 10-step warm-up, gradient norm clipped at
10. Run::

    python benchmarks/bench_segmentation_overfit.py --config plain --max-minutes 40 --threads 1
    python benchmarks/bench_segmentation_overfit.py --config v2 --max-minutes 40 --threads 1
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

from torchdcn.data.coco import find_coco128
from torchdcn.data.segmentation import CocoSegmentation, segmentation_transforms
from torchdcn.engine.distributed import set_cpu_threads
from torchdcn.engine.miou import MIoUEvaluator
from torchdcn.models.backbones import DeformConfig
from torchdcn.models.backbones.resnet import BasicBlock, ResNet
from torchdcn.models.segmentation import ASPP, DeepLab, ReduceHead, deeplab, default_aspp_rates
from torchdcn.nn import param_groups

CONFIGS = ("plain", "v1", "v2")


def load_images(args: argparse.Namespace) -> tuple[CocoSegmentation, list, list]:
    """The data set and the first ``args.images`` samples with at least one labelled object and
    every class present covering at least ``args.min_area`` pixels of the original image."""
    base = find_coco128(args.data_root)
    data = CocoSegmentation(
        base / "annotations" / "instances_train2017.json",
        base / "train2017",
        transforms=segmentation_transforms(False, args.min_size, args.max_size),
    )
    images, targets = [], []
    for i in range(len(data)):
        original = data.semantic(i)
        counts = torch.bincount(original[original != 255].reshape(-1), minlength=256)[1:]
        present = counts[counts > 0]
        if len(present) and present.min() >= args.min_area:
            image, target = data[i]
            images.append(image)
            targets.append(target)
        if len(images) == args.images:
            break
    return data, images, targets


def build(config: str, num_classes: int, args: argparse.Namespace) -> DeepLab:
    deform = None if config == "plain" else config
    if args.backbone != "resnet10":
        return deeplab(
            args.backbone, deform, num_classes, args.output_stride, args.head,
            frozen_bn=False, freeze_at=0,
        )  # fmt: skip
    if deform == "v1":  # "the last three of conv5": one basic block has two, both deformable
        deform = DeformConfig(stages=(5,))
    body = ResNet(
        BasicBlock, (1, 1, 1, 1), deform=deform, output_stride=args.output_stride,
        features_only=True,
    )  # fmt: skip
    if args.head == "aspp":
        head = ASPP(512, 256, default_aspp_rates(args.output_stride))
    else:
        head = ReduceHead(512, 1024)
    return DeepLab(body, head, num_classes)


@torch.no_grad()
def evaluate(model: DeepLab, evaluator: MIoUEvaluator, images: list, targets: list) -> dict:
    model.eval()
    evaluator.reset()
    for start in range(0, len(images), 4):
        batch = slice(start, start + 4)
        evaluator.process(model(images[batch]), targets[batch])
    model.train()
    return evaluator.summarize()


def run(config: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    data, images, targets = load_images(args)
    model = build(config, data.num_classes, args).train()
    evaluator = MIoUEvaluator(data.num_classes, data.class_names)
    params = param_groups(model, args.lr, args.weight_decay)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    start = time.perf_counter()
    budget = args.max_minutes * 60
    best, history, step, metrics = 0.0, [], 0, {}
    while True:
        for group in opt.param_groups:  # linear warm-up (from scratch, Adam), then constant
            group["lr"] = args.lr * group["lr_mult"] * min(1.0, (step + 1) / args.warmup)
        loss = model(images, targets)["loss_seg"]
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{config}: non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        step += 1
        elapsed = time.perf_counter() - start
        if step % args.eval_every == 0 or elapsed > budget:
            metrics = evaluate(model, evaluator, images, targets)
            elapsed = time.perf_counter() - start
            best = max(best, metrics["miou"])
            print(
                f"  [{config}] step {step:4d}  {elapsed:6.1f}s  loss={loss.item():.4f}  "
                f"mIoU={metrics['miou']:.3f} pixel_acc={metrics['pixel_accuracy']:.3f}",
                flush=True,
            )
            history.append((step, round(elapsed, 1), round(metrics["miou"], 4)))
            if metrics["miou"] >= args.target or elapsed > budget:
                break
    print(evaluator.table, flush=True)
    present = [k for k in metrics if k.startswith("iou/")]
    return {
        "config": config,
        "steps": step,
        "seconds": round(time.perf_counter() - start, 1),
        "miou": round(metrics["miou"], 4),
        "best_miou": round(best, 4),
        "pixel_accuracy": round(metrics["pixel_accuracy"], 4),
        "reached": metrics["miou"] >= args.target,
        "classes_present": len(present),
        "worst_class": min(present, key=metrics.get) if present else None,
        "worst_iou": round(min(metrics[k] for k in present), 4) if present else None,
        "image_ids": [int(t["image_id"]) for t in targets],
        "sizes": [list(t["size"]) for t in targets],
        "history": history,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", choices=(*CONFIGS, "all"), default=["all"])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument(
        "--min-area",
        type=int,
        default=4096,
        help="skip images where a class present covers fewer pixels (original size; 0: keep all)",
    )
    parser.add_argument("--backbone", default="resnet10", help="resnet10: 1 basic block/stage")
    parser.add_argument("--output-stride", type=int, default=16, choices=(8, 16))
    parser.add_argument("--head", default="deeplab", choices=("deeplab", "aspp"))
    parser.add_argument("--min-size", type=int, default=128)
    parser.add_argument("--max-size", type=int, default=192)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=10, help="linear warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--max-minutes", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="append one JSON line per config here")
    args = parser.parse_args(argv)
    set_cpu_threads(args.threads)  # torch and Numba: a Numba kernel call resets OpenMP's count
    print(f"# {' '.join(sys.argv)}", flush=True)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for config in CONFIGS if "all" in args.config else args.config:
        result = run(config, args)
        print(
            f"{config:6s} mIoU={result['miou']:.3f} (best {result['best_miou']:.3f}) "
            f"pixel_acc={result['pixel_accuracy']:.3f} steps={result['steps']} "
            f"{result['seconds']:.0f}s reached={result['reached']} "
            f"classes={result['classes_present']} worst={result['worst_class']} "
            f"{result['worst_iou']}",
            flush=True,
        )
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({**result, "args": vars(args)}) + "\n")


if __name__ == "__main__":
    main()
