"""The optimizer of a run: SGD or AdamW over groups that keep every offset lr multiplier."""

from __future__ import annotations

import torch
from torch import nn

from ..nn import param_groups
from .config import OptimConfig
from .schedule import set_base_lrs


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over :func:`torchdcn.nn.param_groups` of ``model``.

    Each group's rate is ``config.lr * lr_mult`` (the deformable modules' ``offset_lr_mult``: 1.0
    for v1 predictors, 0.1 for v2) and is remembered as ``group["base_lr"]``, which the schedule
    scales (:func:`torchdcn.engine.schedule.apply_lr`).
    """
    groups = param_groups(
        model,
        config.lr,
        config.weight_decay,
        no_decay_norm_and_bias=config.no_decay_norm_and_bias,
    )
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if config.name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)
    set_base_lrs(opt)
    return opt
