"""Learning-rate schedules as a pure function of the step: linear warm-up times cosine or steps.

The rate of optimizer step ``t`` (0-based) is ``base_lr * lr_mult * factor(t)``, with
``factor(t) = warmup(t) * main(t)``:

- ``warmup(t) = warmup_factor + (1 - warmup_factor) * t / warmup_steps`` for ``t < warmup_steps``,
  then 1;
- cosine: ``main(t) = min_factor + (1 - min_factor) * (1 + cos(pi * t / total_steps)) / 2``;
- step: ``main(t) = gamma ** (number of milestones m with t >= round(m * steps_per_epoch))``.

Nothing but the step number is state, so a resumed run continues the very same schedule.
"""

from __future__ import annotations

import bisect
import math

from torch.optim import Optimizer

from .config import ScheduleConfig


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, config: ScheduleConfig) -> float:
    """The factor (see the module docstring) of 0-based optimizer step ``step``."""
    if config.name == "cosine":
        progress = min(step, total_steps) / max(1, total_steps)
        main = config.min_factor + (1 - config.min_factor) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )
    else:
        edges = [round(m * steps_per_epoch) for m in config.milestones]
        main = config.gamma ** bisect.bisect_right(edges, step)
    if step < config.warmup_steps:
        alpha = step / config.warmup_steps
        main *= config.warmup_factor + (1 - config.warmup_factor) * alpha
    return main


def set_base_lrs(optimizer: Optimizer) -> None:
    """Remember each group's starting rate (``base_lr``, offset multipliers included) once."""
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])


def apply_lr(optimizer: Optimizer, factor: float) -> None:
    """Set every group's ``lr`` to ``base_lr * factor``, keeping each group's multiplier."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
