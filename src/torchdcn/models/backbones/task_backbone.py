"""The backbone a detector or segmenter builds: a ResNet by name, features only, ImageNet
weights from a file; with them, frozen BatchNorm and frozen early stages as in Detectron, and
without them everything trains (as torchvision's detection builders do).

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
    frozen_bn: bool | None = None,
    freeze_at: int | None = None,
    pretrained: str | None = None,
    base_channels: int = 64,
) -> ResNet:
    """A ResNet ``name`` (a key of ``ARCHITECTURES``) with ``features_only``.

    Args:
        deform: the ResNet's ``deform`` (``None``, ``"v1"``, ``"v2"`` or per-stage configs).
        output_stride: 32, 16 or 8 (the last stages dilated).
        frozen_bn: :class:`~torchdcn.nn.FrozenBatchNorm2d` instead of trainable BatchNorm;
            ``None``: frozen with ``pretrained`` weights (Detectron), trainable without them
            (frozen statistics of a random network would stay at mean 0, variance 1).
        freeze_at: stages whose parameters get ``requires_grad=False``: 0 nothing, 1 the stem,
            2 the stem and conv2 (Detectron's default), up to 5; ``None``: 2 with
            ``pretrained`` weights, 0 without (a random stem must train).
        pretrained: a weights file for :func:`~.pretrained.load_pretrained` (loaded before
            freezing). Its tensors must fit exactly: ImageNet checkpoints are 64 wide, so one
            loaded into a network of another ``base_channels`` raises ``ValueError``.
        base_channels: width of the stem and conv2 (the stages have ``base_channels * (1, 2,
            4, 8)`` planes); 64 is the published network, e.g. 16 a small one to train from
            scratch. The heads read the resulting widths from ``feature_info``.

    Raises ``ValueError`` naming ``backbone``, ``freeze_at`` or ``base_channels`` for values
    outside those, or a ``pretrained`` file that does not fit the network; ``TypeError`` for a
    ``frozen_bn`` that is not a bool.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"backbone must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    frozen_bn, freeze_at = backbone_training(frozen_bn, freeze_at, pretrained is not None)
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


def backbone_training(
    frozen_bn: bool | None, freeze_at: int | None, pretrained: bool
) -> tuple[bool, int]:
    """``(frozen_bn, freeze_at)`` with ``None`` resolved as :func:`task_backbone` does: with
    ``pretrained`` weights ``(True, 2)`` (Detectron), without them ``(False, 0)``."""
    if frozen_bn is None:
        frozen_bn = pretrained
    elif not isinstance(frozen_bn, bool):
        raise TypeError(f"frozen_bn must be a bool or None, got {frozen_bn!r}")
    if freeze_at is None:
        freeze_at = 2 if pretrained else 0
    if isinstance(freeze_at, bool) or not isinstance(freeze_at, int) or freeze_at not in range(6):
        raise ValueError(
            f"freeze_at must be an int 0..5 (stages frozen up to it), got {freeze_at!r}"
        )
    return frozen_bn, freeze_at
