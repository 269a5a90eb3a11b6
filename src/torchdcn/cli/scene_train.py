"""Fine-tune and score a :class:`~.scene_recipe.SceneRecipe` model on digit scenes.

:func:`train_scene_model` runs the recipe's step 3 (SGD, warm-up then cosine decay, offset
predictors at their multiplier after their own warm-up) on a split held in memory;
:func:`evaluate_scenes` scores a model on a split with COCOeval (boxes, and masks for Mask
R-CNN) under the digit-scenes size buckets, or with mean IoU for DeepLab, optionally with every
learned offset zeroed (:func:`~torchdcn.analysis.zero_offsets.zeroed_offsets`).

Splits are read once per process through the ordinary :class:`~torchdcn.data.CocoDetection`
(and :class:`~torchdcn.data.FolderSegmentation`-style label PNGs for DeepLab) and kept.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..analysis.zero_offsets import offset_modules, zeroed_offsets
from ..data.coco import CocoDetection
from ..engine.coco_eval import CocoEvaluator
from ..engine.optim import fused_kwargs
from ..nn import param_groups
from .scene_pretrain import load_trunk
from .scene_recipe import SCENE_AREA_RANGES, SceneRecipe, build_scene_model


@functools.lru_cache(maxsize=16)
def load_split(scenes_dir: str, split: str, masks: bool = False) -> tuple[CocoDetection, list]:
    """The split's dataset and all its samples ``(image [3, H, W] float, target)`` in memory."""
    root = Path(scenes_dir)
    ds = CocoDetection(root / "annotations" / f"instances_{split}.json", root / split, masks=masks)
    samples = []
    for i in range(len(ds)):
        image, target = ds[i]
        samples.append((image.float() / 255 if image.dtype == torch.uint8 else image, target))
    return ds, samples


@functools.lru_cache(maxsize=16)
def load_semantic(scenes_dir: str, split: str) -> list[Tensor]:
    """The split's semantic label maps ``[H, W]`` int64 (0 background, 1-10 digits, 255
    ignore), in the order of :func:`load_split`'s images."""
    from PIL import Image

    ds, _ = load_split(scenes_dir, split)
    out = []
    for image_id in ds.image_ids:
        name = Path(ds.coco.imgs[image_id]["file_name"]).with_suffix(".png").name
        label = np.asarray(Image.open(Path(scenes_dir) / "semantic" / split / name))
        out.append(torch.from_numpy(label.astype(np.int64)))
    return out


def _set_offset_mult(model: nn.Module, mult: float | None) -> None:
    if mult is None:
        return
    for m in offset_modules(model).values():
        m.offset_lr_mult = float(mult)


def _detection_targets(targets: list[dict], masks: bool) -> list[dict]:
    keys = ("boxes", "labels", "masks") if masks else ("boxes", "labels")
    return [{k: t[k] for k in keys} for t in targets]


def train_scene_model(
    recipe: SceneRecipe,
    seed: int,
    scenes_dir: str | os.PathLike,
    trunk: str | os.PathLike | None = None,
    steps: int | None = None,
    log: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``recipe``'s model (seeded), load ``trunk`` into its backbone and fine-tune it for
    ``steps`` (default ``recipe.steps``) on the ``train`` split.

    Returns the model (eval mode) and ``{"steps", "train_seconds", "seconds_per_step",
    "final_loss", "parameters"}``. Runs on the threads torch has (``torch.set_num_threads``)."""
    steps = recipe.steps if steps is None else steps
    torch.manual_seed(seed)
    model = build_scene_model(recipe)
    if trunk is not None:
        load_trunk(model.backbone, trunk, recipe.compensate_masks)
    _set_offset_mult(model, recipe.offset_lr_mult)
    groups = param_groups(model, recipe.lr, recipe.weight_decay)
    if recipe.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=recipe.lr, **fused_kwargs(groups))
    else:
        opt = torch.optim.SGD(
            groups, lr=recipe.lr, momentum=recipe.momentum, **fused_kwargs(groups)
        )
    offset_ids = {id(p) for m in offset_modules(model).values() for p in m.offset_parameters()}
    is_offset = [any(id(p) in offset_ids for p in g["params"]) for g in opt.param_groups]
    segmentation = recipe.model == "deeplab"
    masks = recipe.model == "mask_rcnn"
    _, samples = load_split(str(scenes_dir), "train", masks)
    labels = load_semantic(str(scenes_dir), "train") if segmentation else None
    rng = np.random.default_rng(seed)
    model.train()
    start, losses = time.perf_counter(), []
    for step in range(steps):
        warm = min(1.0, (step + 1) / max(recipe.warmup_steps, 1))
        scale = warm * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group, offset in zip(opt.param_groups, is_offset):
            frozen = offset and step < recipe.offset_warmup_steps
            group["lr"] = 0.0 if frozen else recipe.lr * group["lr_mult"] * scale
        picks = rng.integers(0, len(samples), recipe.batch_size)
        images = [samples[i][0] for i in picks]
        if segmentation:
            out = model(torch.stack(images), torch.stack([labels[i] for i in picks]))
        else:
            out = model(images, _detection_targets([samples[i][1] for i in picks], masks))
        loss = sum(out.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step} ({recipe})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (step + 1) % 200 == 0:
            log(f"  step {step + 1}/{steps} loss {np.mean(losses[-200:]):.3f}")
    seconds = time.perf_counter() - start
    model.eval()
    info = {
        "steps": steps,
        "train_seconds": seconds,
        "seconds_per_step": seconds / max(steps, 1),
        "final_loss": float(np.mean(losses[-100:])) if losses else float("nan"),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, info


@torch.no_grad()
def evaluate_scenes(
    model: nn.Module,
    scenes_dir: str | os.PathLike,
    split: str,
    zero_offsets: bool = False,
    batch_size: int = 16,
    limit: int | None = None,
) -> dict[str, float]:
    """Score ``model`` on ``split``: COCO box metrics (``AP``, ``AP50``, ``mAP@0.7``, ``APs`` /
    ``APm`` / ``APl`` under :data:`SCENE_AREA_RANGES`; ``segm_*`` too for Mask R-CNN), or
    ``miou``, ``pixel_accuracy``, ``mean_accuracy`` and ``iou/<class>`` for a segmenter;
    fractions in [0, 1]. ``zero_offsets``: every learned offset
    replaced by 0 (the control)."""
    segmentation = not hasattr(model, "roi_heads") and not hasattr(model, "rpn")
    masks = hasattr(getattr(model, "roi_heads", None), "mask_head")
    ds, samples = load_split(str(scenes_dir), split, masks)
    samples = samples[:limit]
    model.eval()
    with zeroed_offsets(model) if zero_offsets else contextlib.nullcontext():
        if segmentation:
            return _miou(model, samples, load_semantic(str(scenes_dir), split), batch_size)
        iou_types = ("bbox", "segm") if masks else ("bbox",)
        evaluator = CocoEvaluator.from_dataset(
            ds, iou_types=iou_types, area_ranges=SCENE_AREA_RANGES
        )
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            outputs = model([s[0] for s in chunk])
            evaluator.process(outputs, [s[1] for s in chunk])
        return evaluator.summarize()


def _miou(model: nn.Module, samples: list, labels: list[Tensor], batch_size: int) -> dict:
    from ..engine.miou import MIoUEvaluator

    evaluator = MIoUEvaluator(num_classes=10, ignore_index=255)
    for i in range(0, len(samples), batch_size):
        images = torch.stack([s[0] for s in samples[i : i + batch_size]])
        scores = model(images)
        evaluator.process(scores.argmax(1), torch.stack(labels[i : i + batch_size]))
    return evaluator.summarize()
