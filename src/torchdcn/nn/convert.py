"""Swap chosen ``nn.Conv2d`` layers of any model for their deformable twins, keeping the weights."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from .deform_conv import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack

Selector = Callable[[str, nn.Conv2d], bool] | Iterable[str]


def convert_to_deformable(
    model: nn.Module,
    select: Selector,
    modulated: bool = False,
    offset_groups: int = 1,
    offset_lr_mult: float | None = None,
) -> nn.Module:
    """Replace the selected ``nn.Conv2d`` layers of ``model`` by deformable convolutions, in place.

    Each chosen conv becomes ``DeformConv2dPack.from_conv2d(conv)`` (or
    ``ModulatedDeformConv2dPack``), a layer that predicts its own offsets:
    same weight and bias, same state-dict key for them (``<name>.weight``), plus a zero-initialised
    offset predictor at ``<name>.conv_offset.*``. A v1 model therefore computes what it did before
    the conversion up to float rounding (the deformable op sums in another order): within 4e-6 of
    the output's largest value in float32 (measured 2e-7 to 5e-7, from a small model to a
    ResNet-18 with every 3x3 conv converted) and 1e-12 in float64 (tests/nn/test_convert.py). A v2
    (modulated) layer starts at half its conv's output plus its bias, since the masks start at
    0.5 (SPEC section 3). The offset predictors inside deformable layers
    are never candidates. A conv reached by several names is converted once and shared as before.

    Args:
        model: any module.
        select: a callable ``(qualified_name, conv) -> bool`` called for every ``nn.Conv2d`` of
            the model, or an iterable of qualified names (as ``model.named_modules()`` gives them,
            e.g. ``"layer4.0.conv2"``); a single string is one name.
        modulated: make ``ModulatedDeformConv2dPack`` (v2) layers instead of ``DeformConv2dPack``
            (v1).
        offset_groups: offset groups ``G`` of every new layer (must divide its input channels).
        offset_lr_mult: learning-rate multiplier of the new predictors (default 1.0 v1, 0.1 v2).

    Returns:
        ``model`` itself, modified in place.

    Raises:
        ValueError: a name in ``select`` is not a module of ``model``, or not an ``nn.Conv2d``
            that can be converted (e.g. one inside a deformable layer or with non-zero padding
            mode).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))
        >>> convert_to_deformable(net, ["2"])[2]
        DeformConv2dPack(8, 8, kernel_size=(3, 3))
    """
    cls = ModulatedDeformConv2dPack if modulated else DeformConv2dPack
    candidates = _candidate_convs(model)
    if callable(select):
        chosen = [name for name, conv in candidates.items() if select(name, conv)]
    else:
        names = [select] if isinstance(select, str) else list(select)
        _check_names(model, candidates, names)
        chosen = list(dict.fromkeys(names))
    twins: dict[int, DeformConv2dPack] = {}
    for name in chosen:
        conv = candidates[name]
        if id(conv) not in twins:
            twins[id(conv)] = cls.from_conv2d(
                conv, offset_groups=offset_groups, offset_lr_mult=offset_lr_mult
            )
    # Replace every path to a converted conv, so a shared conv stays shared.
    for name, conv in candidates.items():
        if id(conv) in twins:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, twins[id(conv)])
    return model


def _candidate_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every ``nn.Conv2d`` below ``model`` by qualified name (all names of a shared one), except
    the predictors of deformable layers; ``model`` itself cannot be replaced in place."""
    inside_deform = {
        id(sub)
        for module in model.modules()
        if isinstance(module, DeformConv2d)
        for sub in module.modules()
    }
    return {
        name: module
        for name, module in model.named_modules(remove_duplicate=False)
        if name and isinstance(module, nn.Conv2d) and id(module) not in inside_deform
    }


def _check_names(model: nn.Module, candidates: dict[str, nn.Conv2d], names: list[str]) -> None:
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"select must hold qualified module names (str), got {name!r}")
    modules = dict(model.named_modules(remove_duplicate=False))
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(
            f"select names modules that {type(model).__name__} does not have: {unknown}; "
            f"its nn.Conv2d layers are {sorted(candidates)[:20]}"
            + (" ..." if len(candidates) > 20 else "")
        )
    not_conv = [
        f"{name} ({type(modules[name]).__name__})" for name in names if name not in candidates
    ]
    if not_conv:
        raise ValueError(
            f"select names modules that are not convertible nn.Conv2d layers: {not_conv}"
        )
