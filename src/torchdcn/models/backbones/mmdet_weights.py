"""mmdetection / mmcv ResNet checkpoints with DCN layers, as :class:`~torchdcn.models.ResNet` keys.

mmdetection's ``ResNet`` (``style='pytorch'``) names its tensors as torchvision does (``conv1``,
``bn1``, ``layer1.0.conv2``, ``layer1.0.downsample.0``), under ``backbone.`` in a detector
checkpoint, and puts a DCN layer (``dcn=dict(type='DCN' | 'DCNv2', deform_groups=G)`` with
``stage_with_dcn``) at every block's ``conv2`` of the chosen stages: mmcv's ``DeformConv2dPack``
(v1) or ``ModulatedDeformConv2dPack`` (v2), whose offset predictor is ``conv2.conv_offset``, the
key torchdcn uses too.

Offset and mask layout. mmcv's v2 layer runs ``conv_offset`` (``3 * G * K`` channels, ``K = kh *
kw``), splits the result in three equal chunks ``o1, o2, m``, concatenates ``(o1, o2)`` back as
the offset and takes ``sigmoid(m)`` as the mask. Concatenating the first two chunks restores the
first ``2GK`` channels in their order, so the offset is channels ``[0, 2GK)`` unchanged and the
mask channels ``[2GK, 3GK)``, as :class:`~torchdcn.nn.ModulatedDeformConv2dPack` splits them. mmcv's
kernels read channel ``g*2K + 2k`` as the vertical offset (``dy``) of tap ``k`` of group ``g`` and
``g*2K + 2k + 1`` as the horizontal one (``dx``), mask channel ``g*K + k``: SPEC section 1's
layout. So the tensors load unchanged; the converter only renames keys and checks what it cannot
map. v1 (``DeformConv2dPack``, ``2GK`` channels, no mask) likewise.

Renamed here: the pre-mmcv key of the predictor, ``layer1.0.conv2_offset.*`` (mmdetection 1.x,
which mmcv itself still upgrades on load), becomes ``layer1.0.conv2.conv_offset.*``. Refused with a
clear error: deep-stem ResNets (``ResNetV1d``, ``stem.*`` keys), which torchdcn has no layer for.

Not visible in a state dict, so the caller must match it (see :func:`deform_from_mmdet` and
:func:`torchdcn.models.backbones.stride_in_1x1`): which stages are deformable, v1 or v2, the offset
groups, and ``style='caffe'`` (stride in the 1x1 conv, the ``*_caffe`` configs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from .deform_config import DeformConfig

_LEGACY_OFFSET = re.compile(r"^(.*layer\d+\.\d+\.conv2)_offset\.(weight|bias)$")
_DEEP_STEM = re.compile(r"^(backbone\.)?stem\.\d+\.")


def mmdet_to_torchdcn(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An mmdetection / mmcv ResNet state dict with torchdcn's keys; tensors are not copied.

    Args:
        state: ``{key: tensor}`` of an mmdetection ResNet or detector (``backbone.*`` and heads,
            which :func:`torchdcn.models.load_pretrained` then separates).

    Returns:
        The same tensors; ``*.conv2_offset.{weight,bias}`` renamed ``*.conv2.conv_offset.*``,
        every other key unchanged (offset channels need no reordering: see the module docstring).

    Raises:
        ValueError: the checkpoint is a deep-stem ResNet (``ResNetV1c``/``ResNetV1d``: ``stem.*``
            keys), which torchdcn's ResNet does not build.
    """
    deep_stem = sorted(k for k in state if _DEEP_STEM.match(k))
    if deep_stem:
        raise ValueError(
            f"this mmdetection checkpoint has a deep stem ({', '.join(deep_stem[:3])}, ...: "
            "ResNetV1c/ResNetV1d), which torchdcn's ResNet (a single 7x7 conv1) does not build; "
            "only mmdetection's plain ResNet (style 'pytorch' or 'caffe') loads"
        )
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        legacy = _LEGACY_OFFSET.match(key)
        new_key = f"{legacy.group(1)}.conv_offset.{legacy.group(2)}" if legacy else key
        if new_key in out:
            raise ValueError(f"checkpoint has both {key!r} and the key it maps to, {new_key!r}")
        out[new_key] = value
    return out


def deform_from_mmdet(
    dcn: Mapping[str, Any] | None, stage_with_dcn: Sequence[bool]
) -> tuple[DeformConfig, ...]:
    """The ``deform=`` argument of a torchdcn ResNet equal to an mmdetection backbone config.

    Args:
        dcn: the config's ``dcn`` dict, e.g. ``dict(type='DCNv2', deform_groups=1,
            fallback_on_stride=False)``; ``type`` ``'DCN'`` (``DeformConv2dPack``, v1) or
            ``'DCNv2'`` (``ModulatedDeformConv2dPack``); ``deform_groups`` (or the older
            ``deformable_groups``) defaults to 1. ``None`` for no DCN.
        stage_with_dcn: four booleans for ``layer1``-``layer4`` (conv2-conv5), e.g.
            ``(False, True, True, True)``.

    Returns:
        A tuple of :class:`DeformConfig` (empty without DCN): every 3x3 conv of the chosen
        stages, as mmdetection puts a DCN layer in every block of such a stage.

    Raises:
        ValueError: an unknown ``type``, ``fallback_on_stride=True`` (not translated: build the
            :class:`DeformConfig` by hand), or not four stage flags.

    Example:
        >>> deform_from_mmdet(dict(type="DCNv2", deform_groups=1), (False, True, True, True))
        (DeformConfig(stages=(3, 4, 5), last_n=None, modulated=True, offset_groups=1, ...),)
    """
    flags = tuple(bool(f) for f in stage_with_dcn)
    if len(flags) != 4:
        raise ValueError(f"stage_with_dcn must have 4 flags (layer1-layer4), got {stage_with_dcn}")
    if dcn is None or not any(flags):
        return ()
    kind = dcn.get("type", "DCN")
    if kind not in ("DCN", "DCNv2"):
        raise ValueError(
            f"dcn type must be 'DCN' (mmcv DeformConv2dPack) or 'DCNv2' "
            f"(ModulatedDeformConv2dPack), got {kind!r}"
        )
    if dcn.get("fallback_on_stride", False):
        raise ValueError(
            "dcn fallback_on_stride=True is not translated; pass deform=DeformConfig(...) "
            "matching the layers that carry conv2.conv_offset in the checkpoint"
        )
    groups = int(dcn.get("deform_groups", dcn.get("deformable_groups", 1)))
    stages = tuple(stage for stage, on in zip((2, 3, 4, 5), flags) if on)
    return (DeformConfig(stages=stages, modulated=kind == "DCNv2", offset_groups=groups),)
