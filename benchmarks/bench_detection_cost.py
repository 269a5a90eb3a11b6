"""Cost of Faster R-CNN ResNet-50, plain vs deformable v1 / v2 (the v1 paper's Table 4, issue 10).

Three detectors in the papers' layout (output stride 16, RPN on conv4, RoI heads on conv5 through
the 256-channel 1x1 reduction, 2 fc 1024, COCO's 80 classes), randomly initialised:

- ``plain``: no deformable layer, ``roi_align`` pooling (the twin of both others);
- ``v1``: deformable last three 3x3 convs of conv5 and v1 deformable RoI pooling (``deform``);
- ``v2``: modulated deformable convs in conv3-conv5 and ``mdeform`` RoI pooling.

For each: parameters, multiply-adds of one inference on a ``--size`` image (hooks on every
``nn.Conv2d``, ``nn.Linear`` and ``DeformConv2d`` during a real forward pass, with the counting
convention of :mod:`torchdcn.analysis.complexity`; the RoI head's share depends on the number of
test proposals, 1000 by default, so it is printed apart), and the median wall time of one
inference (eval mode, ``torch.no_grad``) with the three models interleaved in the same process
(``_harness.time_interleaved``), so the ratios to ``plain`` compare like with like. The RPN's two
predictor convs and the box predictor are zeroed (still computed) so that all three propose the
same boxes (the anchors, as many as ``post_nms_top_n`` keeps after NMS) and none keeps a
detection: the times compare the networks, not the post-processing of random detections.

    .venv/bin/python benchmarks/bench_detection_cost.py [--size 600 1000] [--repeats 3]

``--model rfcn`` measures R-FCN instead (1x1 reduction to 1024, 7 x 7 x 81 class and 7 x 7 x 4
box score maps): ``plain`` PS RoI pooling, ``v1`` deformable conv5 + deformable PS RoI pooling,
``v2`` modulated conv3-conv5 + deformable PS RoI pooling; its score convs are zeroed instead of
the box predictor.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from collections.abc import Callable

# before torch starts its OpenMP pool: idle threads do not spin (what `import torchdcn` did
# until 2026-11-30, when the figures in RESULTS.md were taken; it now leaves the policy alone)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from _harness import time_interleaved
from torch import Tensor, nn

from torchdcn.analysis.complexity import count_parameters
from torchdcn.models.detection.faster_rcnn import faster_rcnn
from torchdcn.models.detection.rfcn import rfcn
from torchdcn.nn import DeformConv2d

VARIANTS = {
    "plain": {"deform": None, "roi_pool": "roi_align"},
    "v1": {"deform": "v1", "roi_pool": "deform"},
    "v2": {"deform": "v2", "roi_pool": "mdeform"},
}
RFCN_VARIANTS = {
    "plain": {"deform": None, "ps_pool": "ps"},
    "v1": {"deform": "v1", "ps_pool": "deform"},
    "v2": {"deform": "v2", "ps_pool": "deform"},
}
KINDS = ("conv", "linear", "deform_conv", "offset_predictor", "sampling")


def detector_macs(model: nn.Module, images: list[Tensor]) -> dict[str, int]:
    """Multiply-adds of one eval forward of ``model(images)`` by kind (as
    :func:`torchdcn.analysis.complexity.flop_breakdown`, on real tensors since proposal counts
    depend on the data), plus ``"roi_heads"`` (the part spent in the RoI heads) and ``"rois"``
    (RoIs pooled)."""
    predictors = {id(m.conv_offset) for m in model.modules() if hasattr(m, "conv_offset")}
    heads = {id(m) for m in model.roi_heads.modules()}
    totals = dict.fromkeys((*KINDS, "roi_heads", "rois"), 0)

    def add(module: nn.Module, kind: str, macs: int) -> None:
        totals[kind] += macs
        if id(module) in heads:
            totals["roi_heads"] += macs

    def on_conv(module: nn.Conv2d, inputs: tuple, output: Tensor) -> None:
        c_out, c_in, kh, kw = module.weight.shape
        n, _, ho, wo = output.shape
        kind = "offset_predictor" if id(module) in predictors else "conv"
        add(module, kind, n * c_out * ho * wo * c_in * kh * kw)

    def on_linear(module: nn.Linear, inputs: tuple, output: Tensor) -> None:
        add(module, "linear", output.numel() * module.in_features)

    def on_deform(module: DeformConv2d, inputs: tuple, output: Tensor) -> None:
        c_out, c_in, kh, kw = module.weight.shape
        n, _, ho, wo = output.shape
        add(module, "deform_conv", n * c_out * ho * wo * c_in * kh * kw)
        modulated = getattr(module, "modulated", len(inputs) > 2 and inputs[2] is not None)
        values = n * module.in_channels * kh * kw * ho * wo
        add(module, "sampling", values * (5 if modulated else 4))

    def on_pool(module: nn.Module, args: tuple) -> None:
        totals["rois"] += sum(len(b) for b in args[1])

    handles = [model.roi_heads.pooler.register_forward_pre_hook(on_pool)]
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(on_linear))
        elif isinstance(module, DeformConv2d):
            handles.append(module.register_forward_hook(on_deform))
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return totals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(600, 1000), metavar=("H", "W"))
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--repeats", type=int, default=3, help="timed inferences per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=("faster_rcnn", "rfcn"), default="faster_rcnn")
    args = parser.parse_args(argv)
    variants = RFCN_VARIANTS if args.model == "rfcn" else VARIANTS
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = [torch.rand(3, *args.size)]
    models = {}
    for name, kw in variants.items():
        build = rfcn if args.model == "rfcn" else faster_rcnn
        # frozen BatchNorm (buffers, not parameters) as in the papers' fine-tuning
        model = build(args.backbone, num_classes=80, frozen_bn=True, freeze_at=2, **kw).eval()
        # random weights make random proposals (degenerate boxes that NMS merges, a different
        # count per model) and random detections (post-processing work that differs by model):
        # zero the predictors so that every model proposes the same anchors (equal scores, zero
        # deltas) and its box head scores every class 1 / 81, under the 0.05 threshold
        predictor = model.roi_heads.predictor
        for layer in (model.rpn.head.cls_logits, model.rpn.head.bbox_pred):
            nn.init.zeros_(layer.weight)
        head = model.roi_heads.pooler  # R-FCN: the score maps are its predictor
        layers = (head.cls_conv, head.box_conv) if args.model == "rfcn" else ()
        for layer in layers or (predictor.cls_score, predictor.bbox_pred):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        models[name] = model
    rows = {}
    for name, model in models.items():
        macs = detector_macs(model, images)
        rows[name] = {"params": count_parameters(model), "macs": macs}

    def infer(model: nn.Module) -> Callable[[], object]:
        def call() -> object:
            with torch.no_grad():
                return model(images)

        return call

    times = time_interleaved(
        {n: infer(m) for n, m in models.items()}, args.repeats, warmup=1, block=1
    )
    when = datetime.date.today().isoformat()
    print(
        f"# {args.model} {args.backbone} inference, 1 image 3 x {args.size[0]} x {args.size[1]}, "
        f"float32, {torch.get_num_threads()} threads, medians of {args.repeats}; {when}, "
        f"{platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}"
    )
    print()
    print(
        "| model | deform | RoI pooling | params (M) | x plain | GMACs | x plain "
        "| RoI heads GMACs (RoIs) | time (s) | x plain |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = rows["plain"]
    for name, row in rows.items():
        total = sum(row["macs"][k] for k in KINDS)
        base_total = sum(base["macs"][k] for k in KINDS)
        print(
            f"| {name} | {variants[name]['deform']} | {list(variants[name].values())[1]} "
            f"| {row['params'] / 1e6:.3f} | {row['params'] / base['params']:.3f} "
            f"| {total / 1e9:.2f} | {total / base_total:.3f} "
            f"| {row['macs']['roi_heads'] / 1e9:.2f} ({row['macs']['rois']}) "
            f"| {times[name]:.2f} | {times[name] / times['plain']:.2f} |"
        )
    print()
    for name, row in rows.items():
        parts = ", ".join(f"{k} {row['macs'][k] / 1e9:.3f}" for k in KINDS)
        print(f"# {name} GMACs by kind: {parts}")


if __name__ == "__main__":
    main()
