"""The optimizer of a run: SGD or AdamW over groups that keep every offset lr multiplier."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..nn import param_groups
from .config import OptimConfig
from .schedule import set_base_lrs

#: Devices whose parameters take PyTorch's fused SGD / AdamW step (torch >= 2.4).
FUSED_DEVICES = ("cpu", "cuda")


def fused_kwargs(params: Iterable[Any]) -> dict[str, bool]:
    """``{"fused": True}`` when every parameter (tensors, or groups of them as dicts with
    ``"params"``) is a floating-point tensor on one of :data:`FUSED_DEVICES`, else ``{}``.

    PyTorch picks its per-parameter loop on CPU by default; the fused step computes the same
    update (to float rounding) in one kernel per parameter list: on this project's 2-core VM, one
    thread, an AdamW step of the digit-scenes Faster R-CNN took 11.3 ms as a loop, 7.5 ms with
    ``foreach`` and 2.0 ms fused (``benchmarks/profile_detector_step.py --optimizer``,
    RESULTS.md).
    """
    tensors = []
    for p in params:
        tensors.extend(p["params"] if isinstance(p, dict) else [p])
    ok = bool(tensors) and all(
        isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type in FUSED_DEVICES
        for t in tensors
    )
    return {"fused": True} if ok else {}


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over :func:`torchdcn.nn.param_groups` of ``model``.

    Each group's rate is ``config.lr * lr_mult`` (the deformable modules' ``offset_lr_mult``: 1.0
    for v1 predictors, 0.1 for v2) and is remembered as ``group["base_lr"]``, which the schedule
    scales (:func:`torchdcn.engine.schedule.apply_lr`). The step is PyTorch's fused one where the
    parameters allow it (:func:`fused_kwargs`).
    """
    groups = param_groups(
        model,
        config.lr,
        config.weight_decay,
        no_decay_norm_and_bias=config.no_decay_norm_and_bias,
    )
    if not groups:
        raise ValueError("the model has no trainable parameters")
    fast = fused_kwargs(groups)
    if config.name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, **fast
        )
    else:
        opt = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, **fast)
    set_base_lrs(opt)
    return opt
