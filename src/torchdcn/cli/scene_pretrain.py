"""Trunk pretraining for the digit-scenes recipe: the ResNet learns to classify the training digits.

The stand-in for ImageNet pretraining (:mod:`.scene_recipe`): each sample is one digit of the
scenes' ``train`` pool, drawn as the scenes draw it (:func:`~torchdcn.data.draw_digit`: ink
height, aspect and rotation from the scenes' training geometry) at a random place of a
``canvas x canvas`` black image, ImageNet-normalised like a detector's input. The network is the
recipe's ResNet at output stride 16 (the detectors' layout, conv5 dilated) with a 10-way
classifier, trainable BatchNorm, AdamW with warm-up and cosine decay. The validation digits are
never drawn; neither are the test digits.

Pretrained trunks are cached in ``cache_dir`` as ``trunk-<key>-seed<seed>.pt`` (the key hashes
what the trunk depends on, :meth:`SceneRecipe.trunk_key`).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.digit_scenes import digit_pools
from ..data.scene_drawing import Geometry, draw_digit
from ..models.backbones.resnet import ARCHITECTURES, ResNet
from ..models.detection.image_list import IMAGENET_MEAN, IMAGENET_STD  # the detectors' inputs
from .scene_recipe import NUM_DIGITS, SceneRecipe


def _crops(images: np.ndarray) -> list[np.ndarray]:
    out = []
    for d in images:
        ys, xs = np.nonzero(d)
        out.append(d[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] if len(ys) else d)
    return out


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def draw_digit_batch(
    crops: list[np.ndarray],
    labels: np.ndarray,
    rng: np.random.Generator,
    batch: int,
    canvas: int,
    geometry: Geometry,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` digits at random places: float images ``[B, 3, canvas, canvas]`` in [0, 1] and
    labels ``[B]``."""
    images = np.zeros((batch, canvas, canvas), np.uint8)
    picks = rng.integers(0, len(crops), batch)
    for b, i in enumerate(picks):
        lo, hi = geometry.heights[rng.integers(len(geometry.heights))]
        rlo, rhi = geometry.rotation[rng.integers(len(geometry.rotation))]
        angle = rng.uniform(rlo, rhi) * rng.choice([-1.0, 1.0])
        ink = draw_digit(
            crops[i], _log_uniform(rng, lo, hi), _log_uniform(rng, *geometry.aspect), angle
        )
        h, w = min(ink.shape[0], canvas), min(ink.shape[1], canvas)
        y, x = rng.integers(0, canvas - h + 1), rng.integers(0, canvas - w + 1)
        images[b, y : y + h, x : x + w] = ink[:h, :w]
    x = torch.from_numpy(images).float().div_(255).unsqueeze(1).expand(-1, 3, -1, -1)
    return x, torch.from_numpy(labels[picks])


def trunk_network(recipe: SceneRecipe) -> ResNet:
    """The trunk: the recipe's ResNet at output stride 16 with a 10-way classifier."""
    block, layers, groups, width = ARCHITECTURES[recipe.backbone]
    return ResNet(
        block, layers, groups=groups, width_per_group=width, output_stride=16,
        num_classes=NUM_DIGITS, base_channels=recipe.base_channels,
    )  # fmt: skip


def pretrain_trunk(
    recipe: SceneRecipe,
    seed: int,
    cache_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    canvas: int = 64,
    batch_size: int = 64,
    lr: float = 2e-3,
    log: Any = None,
) -> Path:
    """Train (or find in ``cache_dir``) the trunk of ``recipe`` for ``seed``; returns the file of
    its ``state_dict`` (classifier included; :func:`load_trunk` leaves it out)."""
    path = Path(cache_dir) / f"trunk-{recipe.trunk_key()}-seed{seed}.pt"
    if path.exists():
        return path
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1000)
    pool = digit_pools(data_root)["train"]
    crops, labels = _crops(pool.images), pool.labels
    model = trunk_network(recipe)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    geometry, steps, warmup = Geometry(), recipe.pretrain_steps, 50
    model.train()
    start, correct, seen = time.perf_counter(), 0, 0
    for step in range(steps):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        x, y = draw_digit_batch(crops, labels, rng, batch_size, canvas, geometry)
        logits = model((x - mean) / std)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= steps - 100:
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    if log is not None:
        log(
            f"trunk {recipe.backbone}/{recipe.base_channels} seed {seed}: {steps} steps in "
            f"{time.perf_counter() - start:.0f} s, train accuracy of the last 100 steps "
            f"{100 * correct / max(seen, 1):.1f} %"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return path


def load_trunk(
    backbone: torch.nn.Module, path: str | os.PathLike, compensate_masks: bool = False
) -> list[str]:
    """Copy a trunk's weights into a task model's ``backbone`` (a ResNet with or without
    deformable layers, trainable or frozen BatchNorm). Returns the backbone's parameters and
    buffers the trunk did not have (the offset predictors, which keep their zero start);
    ``ValueError`` if anything else is missing or a shape differs.

    A modulated layer's masks start at ``sigmoid(0) = 0.5`` (SPEC 2), so a v2 backbone loaded
    as is computes half of each converted conv's output. ``compensate_masks`` doubles those
    layers' weights (and biases), so the loaded network starts exactly as the trunk."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    missing = [k for k in own if k not in state and "num_batches_tracked" not in k]
    if any("conv_offset" not in k for k in missing):
        raise ValueError(
            f"the trunk lacks backbone weights {[k for k in missing if 'conv_offset' not in k][:5]}"
        )
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise ValueError(
                f"trunk weight {k} has shape {list(v.shape)}, backbone {list(own[k].shape)}"
            )
    backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    if compensate_masks:
        with torch.no_grad():
            for m in backbone.modules():
                if getattr(m, "modulated", False) and hasattr(m, "conv_offset"):
                    m.weight.mul_(2.0)
                    if m.bias is not None:
                        m.bias.mul_(2.0)
    return missing
