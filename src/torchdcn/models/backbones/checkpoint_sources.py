"""Which toolkit wrote a checkpoint: key conversion for :func:`~torchdcn.models.load_pretrained`,
and the deformable layout a DCN checkpoint implies.

``source`` names the key layout: ``"torchdcn"``, ``"torchvision"`` and ``"timm"`` share one
(no conversion); ``"mmdet"`` (mmdetection / mmcv, :mod:`.mmdet_weights`) and ``"detectron2"``
(:mod:`.detectron2_weights`) are renamed to it. Offsets and masks never need reordering: every
one of these toolkits uses SPEC section 1's layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from .deform_config import DeformConfig
from .detectron2_weights import detectron2_to_torchdcn
from .mmdet_weights import mmdet_to_torchdcn

SOURCES = ("torchdcn", "torchvision", "timm", "mmdet", "detectron2")
"""The values of ``load_pretrained(..., source=...)``."""

_OFFSET_WEIGHT = re.compile(r"(?:^|\.)layer([1-4])\.(\d+)\.conv2\.conv_offset\.weight$")
_CONV2_WEIGHT = re.compile(r"(?:^|\.)layer([1-4])\.(\d+)\.conv2\.weight$")


def convert_state_dict(state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """``state`` with torchdcn's keys, from the key layout of ``source`` (one of
    :data:`SOURCES`); raises ``ValueError`` for another ``source`` or a checkpoint the converter
    refuses (see :func:`.mmdet_to_torchdcn`, :func:`.detectron2_to_torchdcn`)."""
    if source in ("torchdcn", "torchvision", "timm"):
        return dict(state)
    if source == "mmdet":
        return mmdet_to_torchdcn(state)
    if source == "detectron2":
        return detectron2_to_torchdcn(state)
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")


def deform_from_checkpoint(
    state: Mapping[str, Tensor], modulated: bool | None = None
) -> tuple[DeformConfig, ...]:
    """The ``deform=`` argument that builds a ResNet with the deformable layers of ``state``.

    Args:
        state: a state dict with torchdcn's keys (after :func:`convert_state_dict`; a detector's
            prefixes may stay).
        modulated: v2 (True) or v1 (False) when the predictor's width does not say:
            ``2 * G * K`` (v1) and ``3 * G * K`` (v2) channels meet at 54 for 3x3 kernels
            (v1 with 3 offset groups, v2 with 2). ``None``: inferred, a ``ValueError`` if it
            cannot be.

    Returns:
        One :class:`DeformConfig` per stage with offset predictors (empty for a plain
        checkpoint): all of the stage's 3x3 convs, or its last ``n`` (``last_n``).

    Raises:
        ValueError: the deformable blocks of a stage are not its last ones, or v1/v2 is
            ambiguous and ``modulated`` is ``None``, or the predictor's width fits neither.
    """
    blocks: dict[int, set[int]] = {}
    for key in state:
        m = _CONV2_WEIGHT.search(key)
        if m:
            blocks.setdefault(int(m.group(1)) + 1, set()).add(int(m.group(2)))
    configs = []
    deformable: dict[int, dict[int, tuple[int, ...]]] = {}
    for key, value in state.items():
        m = _OFFSET_WEIGHT.search(key)
        if m:
            deformable.setdefault(int(m.group(1)) + 1, {})[int(m.group(2))] = tuple(value.shape)
    for stage in sorted(deformable):
        shapes = deformable[stage]
        channels, _, kh, kw = next(iter(shapes.values()))
        if any(s[0] != channels for s in shapes.values()):
            raise ValueError(f"stage conv{stage} mixes offset predictors of different widths")
        is_v2 = _modulated(channels, kh * kw, modulated, stage)
        n_blocks = max(blocks.get(stage, {0}) | set(shapes)) + 1
        last_n = None if len(shapes) == n_blocks else len(shapes)
        if sorted(shapes) != list(range(n_blocks - len(shapes), n_blocks)):
            raise ValueError(
                f"stage conv{stage} has offset predictors in blocks {sorted(shapes)} of "
                f"{n_blocks}, not its last ones: no DeformConfig builds that"
            )
        groups = channels // ((3 if is_v2 else 2) * kh * kw)
        configs.append(
            DeformConfig(stages=(stage,), last_n=last_n, modulated=is_v2, offset_groups=groups)
        )
    return tuple(configs)


def _modulated(channels: int, taps: int, modulated: bool | None, stage: int) -> bool:
    fits_v1, fits_v2 = channels % (2 * taps) == 0, channels % (3 * taps) == 0
    if modulated is not None:
        if not (fits_v2 if modulated else fits_v1):
            raise ValueError(
                f"stage conv{stage}: an offset predictor of {channels} channels is not "
                f"{'3' if modulated else '2'} x offset groups x {taps} taps "
                f"(modulated={modulated})"
            )
        return modulated
    if fits_v1 and fits_v2:
        raise ValueError(
            f"stage conv{stage}: {channels} offset channels fit both v1 "
            f"({channels // (2 * taps)} offset groups) and v2 ({channels // (3 * taps)} groups); "
            "pass modulated=True (mmcv DCNv2 / detectron2 DEFORM_MODULATED) or False"
        )
    if not (fits_v1 or fits_v2):
        raise ValueError(
            f"stage conv{stage}: {channels} offset channels are neither 2 (v1) nor 3 (v2) x "
            f"offset groups x {taps} taps"
        )
    return fits_v2
