"""Optimizer parameter groups that honour the learning-rate multipliers of offset predictors."""

from __future__ import annotations

from typing import Any

from torch import nn


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    *,
    no_decay_norm_and_bias: bool = False,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into optimizer groups.

    Every module with an ``offset_parameters()`` method and an ``offset_lr_mult`` attribute (all of
    ``torchdcn.nn``'s deformable modules) has those parameters trained at ``lr * offset_lr_mult``;
    the rest at ``lr``. Each group carries ``"lr_mult"`` too, so a scheduler that rescales the
    base rate can keep the ratio (``group["lr"] = base * group["lr_mult"]``).

    Args:
        model: any module.
        lr: the base learning rate.
        weight_decay: weight decay of every group (but see below).
        no_decay_norm_and_bias: give 1-D parameters (biases, norm scales) no weight decay.

    Returns:
        A list of dicts for ``torch.optim`` constructors, each with ``params``, ``lr``,
        ``lr_mult``, ``weight_decay`` and a descriptive ``name``; empty groups are left out.

    Example:
        >>> opt = torch.optim.SGD(param_groups(model, lr=0.02, weight_decay=1e-4), momentum=0.9)
    """
    mult_of: dict[int, float] = {}
    for module in model.modules():
        if hasattr(module, "offset_parameters") and hasattr(module, "offset_lr_mult"):
            for p in module.offset_parameters():
                mult_of[id(p)] = float(module.offset_lr_mult)
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        mult = mult_of.get(id(p), 1.0)
        decay = not (no_decay_norm_and_bias and p.ndim <= 1)
        key = (mult, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": lr * mult,
                "lr_mult": mult,
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"lr_mult={mult:g}" + ("" if decay else ", no_decay"),
            }
        groups[key]["params"].append(p)
    return sorted(groups.values(), key=lambda g: (-g["lr_mult"], g["name"]))
