"""Switch a model's learned offsets off: the control that tells whether the offsets carry a gain.

:func:`zeroed_offsets` makes every deformable module of a model (the conv packs
:class:`~torchdcn.nn.DeformConv2dPack` / :class:`~torchdcn.nn.ModulatedDeformConv2dPack`, the RoI
poolings :class:`~torchdcn.nn.DeformRoIPool` / :class:`~torchdcn.nn.ModulatedDeformRoIPool` /
:class:`~torchdcn.nn.DeformPSRoIPool`) use offsets of zero inside the ``with`` block, leaving
every weight and, for the modulated modules, the learned modulation in place. A deformable conv
with zero offsets is the plain conv with the same weights; a deformable RoI pooling with zero
offsets is RoIAlign-style bin averaging. If a deformable network's gain over its plain twin
vanishes under :func:`zeroed_offsets`, the offsets carried it; if it stays, the gain came from
elsewhere (the modulation, the extra parameters, a different optimisation path).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def offset_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules of ``model`` that predict offsets (they have ``predict`` and
    ``offset_parameters``), by qualified name."""
    return {
        name: m
        for name, m in model.named_modules()
        if callable(getattr(m, "predict", None)) and callable(getattr(m, "offset_parameters", None))
    }


def _zeroing(predict):
    def wrapped(*args, **kwargs):
        out = predict(*args, **kwargs)
        if isinstance(out, tuple):  # (offset, mask or None)
            return (torch.zeros_like(out[0]), *out[1:])
        return torch.zeros_like(out)

    return wrapped


@contextlib.contextmanager
def zeroed_offsets(model: nn.Module) -> Iterator[int]:
    """Inside the block every offset predictor of ``model`` outputs zeros (masks unchanged);
    yields how many modules were switched. The model is restored on exit, also after an
    exception."""
    modules = offset_modules(model)
    for m in modules.values():
        m.predict = _zeroing(m.predict)  # an instance attribute shadows the method
    try:
        yield len(modules)
    finally:
        for m in modules.values():
            del m.predict
