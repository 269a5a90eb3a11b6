"""The backbone a detector or segmenter builds: a ResNet by name, features only, frozen
BatchNorm and frozen early stages as in Detectron, ImageNet weights from a file.

Detection and segmentation presets both call :func:`task_backbone` (task packages never import
each other, so the shared builder lives here).
"""

from __future__ import annotations

from typing import Any

from ...nn import FrozenBatchNorm2d
from .pretrained import load_pretrained
from .resnet import ARCHITECTURES, ResNet


def task_backbone(
    name: str,
    deform: Any,
    output_stride: int,
    frozen_bn: bool = True,
    freeze_at: int = 2,
    pretrained: str | None = None,
    base_channels: int = 64,
) -> ResNet:
    """A ResNet ``name`` (a key of ``ARCHITECTURES``) with ``features_only``.

    Args:
        deform: the ResNet's ``deform`` (``None``, ``"v1"``, ``"v2"`` or per-stage configs).
        output_stride: 32, 16 or 8 (the last stages dilated).
        frozen_bn: :class:`~torchdcn.nn.FrozenBatchNorm2d` instead of trainable BatchNorm.
        freeze_at: stages whose parameters get ``requires_grad=False``: 0 nothing, 1 the stem,
            2 the stem and conv2 (Detectron's default), up to 5.
        pretrained: a weights file for :func:`~.pretrained.load_pretrained` (loaded before
            freezing). Its tensors must fit exactly: ImageNet checkpoints are 64 wide, so one
            loaded into a network of another ``base_channels`` raises ``ValueError``.
        base_channels: width of the stem and conv2 (the stages have ``base_channels * (1, 2,
            4, 8)`` planes); 64 is the published network, e.g. 16 a small one to train from
            scratch. The heads read the resulting widths from ``feature_info``.

    Raises ``ValueError`` naming ``backbone``, ``freeze_at`` or ``base_channels`` for values
    outside those, or a ``pretrained`` file that does not fit the network.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"backbone must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    if isinstance(freeze_at, bool) or freeze_at not in range(6):
        raise ValueError(f"freeze_at must be 0..5 (stages frozen up to it), got {freeze_at!r}")
    block, layers, groups, width = ARCHITECTURES[name]
    body = ResNet(
        block, layers, groups=groups, width_per_group=width, deform=deform,
        output_stride=output_stride, features_only=True,
        norm_layer=FrozenBatchNorm2d if frozen_bn else None, base_channels=base_channels,
    )  # fmt: skip
    if pretrained is not None:
        try:
            load_pretrained(body, pretrained)
        except ValueError as err:
            if base_channels == 64:
                raise
            raise ValueError(
                f"pretrained={str(pretrained)!r} does not fit {name} with base_channels="
                f"{base_channels} (ImageNet weights are for base_channels=64): {err}"
            ) from err
    frozen = [body.conv1, body.bn1][: 2 if freeze_at >= 1 else 0]
    frozen += [getattr(body, f"layer{i}") for i in range(1, freeze_at)]
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    return body
