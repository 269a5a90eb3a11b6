"""ResNet and ResNeXt backbones with deformable 3x3 convolutions where a config says so.

The layout and the state-dict keys are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ``fc``; bottlenecks stride in their 3x3 conv, "ResNet v1.5"), so a
torchvision or timm checkpoint loads with :func:`torchdcn.models.load_pretrained`. A deformable conv
keeps its weight at the plain conv's key (``layer4.0.conv2.weight``) and adds its offset predictor
at ``layer4.0.conv2.conv_offset.*``.

``output_stride`` 16 or 8 replaces the stride 2 of conv5 (and conv4) by stride 1 and dilates every
3x3 conv of those stages by 2 (and 4), as SPEC section 5 describes for conv5. Unlike torchvision's
``replace_stride_with_dilation``, the first block of a dilated stage is dilated too.

Every network is built plain, initialised, and then the chosen 3x3 convs are converted with
:func:`torchdcn.nn.convert_to_deformable`, so under the same seed ``resnet50(deform="v1")`` and
``resnet50(deform=None, output_stride=16)`` start from the same weights and compute the same
function (SPEC section 2: zero-initialised offsets).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ...nn import DeformConv2d, convert_to_deformable
from .deform_config import STAGES, Deform, default_output_stride, resolve_deform
from .feature_info import FeatureInfo

NormLayer = Callable[[int], nn.Module]


class BasicBlock(nn.Module):
    """Two 3x3 convs and a shortcut (ResNet-18/34). ``[N, C_in, H, W] -> [N, planes, H/s, W/s]``."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64")
        self.conv1 = _conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, grouped for ResNeXt), 1x1 expand, shortcut (ResNet-50 and up).

    ``[N, C_in, H, W] -> [N, 4 * planes, H/s, W/s]``; the 3x3 conv has
    ``planes * width_per_group / 64 * groups`` channels.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv3x3(width, width, stride, dilation, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _conv3x3(c_in: int, c_out: int, stride: int, dilation: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        c_in, c_out, 3, stride, padding=dilation, dilation=dilation, groups=groups, bias=False
    )


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """A ResNet/ResNeXt: 7x7 stem, four stages ``conv2``-``conv5``, optional classifier.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage conv2-conv5, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        groups, width_per_group: ResNeXt cardinality and width (``32, 4`` for 32x4d).
        deform: which 3x3 convs are deformable: ``None`` (or ``False``), ``"v1"`` (last three
            of conv5), ``"v2"`` (all of conv3-conv5, modulated), a :class:`DeformConfig` or a
            sequence of them with disjoint stages. It changes nothing else. ``True`` raises a
            ``TypeError``: say ``"v1"`` or ``"v2"``.
        output_stride: 32, 16 or 8: the stride of conv5 relative to the input. ``None`` gives 16
            for the presets ``"v1"``/``"v2"`` (the papers' networks) and 32 otherwise.
        features_only: ``forward`` returns the four stage outputs, no classifier.
        num_classes: outputs of the ``fc`` classifier (after global average pooling); ``None``
            for no classifier, so ``forward`` returns the conv5 map. Ignored when
            ``features_only``.
        norm_layer: builds each normalisation layer from a channel count (default
            ``nn.BatchNorm2d``; :class:`torchdcn.nn.FrozenBatchNorm2d` for detection).
        zero_init_residual: start each block's last norm at scale 0 (the block is an identity).
        in_channels: image channels.
        base_channels: width of the stem and of conv2's blocks; the four stages have
            ``base_channels * (1, 2, 4, 8)`` planes (64: the published networks, so
            torchvision/timm checkpoints fit; e.g. 16 gives a ResNet-18 with 16/32/64/128
            channels, for training from scratch on a small CPU). A positive int; for ResNeXt
            ``base_channels * width_per_group`` must be a multiple of 64 (whole channels per
            group in the grouped 3x3 convs).

    Shape:
        ``x``: ``[N, in_channels, H, W]`` (float, ImageNet-normalised for pretrained weights) ->
        logits ``[N, num_classes]``; or the conv5 map ``[N, C5, ceil(H / os), ceil(W / os)]``
        when ``num_classes`` is ``None``; or with ``features_only`` an ordered dict
        ``{"conv2": [N, C2, H/4, W/4], "conv3": ..., "conv4": ..., "conv5": ...}`` (sizes
        rounded up, e.g. a 64 x 64 input gives conv2 16 x 16). With ``B = base_channels``,
        ``C2 ... C5`` are ``B, 2B, 4B, 8B`` (basic blocks: 64, ..., 512 for ResNet-18/34) or
        ``4B, 8B, 16B, 32B`` (bottlenecks: 256, ..., 2048 for ResNet-50 and up).

    Backbone contract (what detectors and segmenters read, never hard-coded numbers):

    - :attr:`feature_info`: one :class:`FeatureInfo` ``(name, channels, stride)`` per map of
      :meth:`forward_features`, in output order (conv2 ... conv5). With ``features_only`` these
      are exactly ``forward``'s outputs; with ``num_classes=None`` the output is the last one.
    - :attr:`size_divisibility`: pad input sizes to a multiple of this (the stride of the
      coarsest output, i.e. ``output_stride``: 32, 16 or 8). Then every map is exactly
      ``H / stride x W / stride``, so a coarser map upsampled by the stride ratio lines up cell
      for cell with a finer one (FPN, DeepLab decoders) and ``spatial_scale = 1 / stride`` maps
      image boxes onto cells exactly. A dilated stage keeps its input's stride and does not
      downsample, so a stride-16 network needs multiples of 16, not 32.

    :attr:`feature_channels`, :attr:`feature_strides` and :attr:`feature_dilations` are the same
    facts (plus each stage's dilation) keyed by name.
    """

    def __init__(
        self,
        block: Block,
        layers: tuple[int, int, int, int],
        *,
        groups: int = 1,
        width_per_group: int = 64,
        deform: Deform = None,
        output_stride: int | None = None,
        features_only: bool = False,
        num_classes: int | None = 1000,
        norm_layer: NormLayer | None = None,
        zero_init_residual: bool = False,
        in_channels: int = 3,
        base_channels: int = 64,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be 4 positive block counts, got {layers}")
        check_base_channels(base_channels, block, groups, width_per_group)
        configs = resolve_deform(deform)
        if output_stride is None:
            output_stride = default_output_stride(deform)
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        norm_layer = nn.BatchNorm2d if norm_layer is None else norm_layer
        self.features_only = features_only
        self.output_stride = output_stride

        self.base_channels = base_channels
        self.conv1 = nn.Conv2d(in_channels, base_channels, 7, 2, 3, bias=False)
        self.bn1 = norm_layer(base_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)

        # Stage by stage: stride 2 where the map may still shrink, dilation once it may not.
        channels, stride_so_far, dilation = base_channels, 4, 1
        self.feature_info: list[FeatureInfo] = []
        self.feature_dilations: dict[str, int] = {}
        stages = []
        stage_planes = tuple(base_channels * m for m in (1, 2, 4, 8))
        for stage, planes, n_blocks in zip(STAGES, stage_planes, layers):
            stride = 1 if stage == 2 else 2
            if stride_so_far * stride > output_stride:
                stride, dilation = 1, dilation * 2
            stride_so_far *= stride
            stages.append(
                _make_stage(
                    block,
                    channels,
                    planes,
                    n_blocks,
                    stride,
                    dilation,
                    groups,
                    width_per_group,
                    norm_layer,
                )
            )
            channels = planes * block.expansion
            self.feature_info.append(FeatureInfo(f"conv{stage}", channels, stride_so_far))
            self.feature_dilations[f"conv{stage}"] = dilation
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.size_divisibility: int = max(info.stride for info in self.feature_info)

        has_head = not features_only and num_classes is not None
        self.avgpool = nn.AdaptiveAvgPool2d(1) if has_head else None
        self.fc = nn.Linear(channels, num_classes) if has_head else None

        self._init_weights(zero_init_residual)
        for config in configs:
            convert_to_deformable(
                self,
                config.select(self.conv3x3_names()),
                modulated=config.modulated,
                offset_groups=config.offset_groups,
                offset_lr_mult=config.offset_lr_mult,
            )

    @property
    def feature_channels(self) -> dict[str, int]:
        """``{"conv2": C2, ..., "conv5": C5}``, from :attr:`feature_info`."""
        return {info.name: info.channels for info in self.feature_info}

    @property
    def feature_strides(self) -> dict[str, int]:
        """``{"conv2": 4, ..., "conv5": output_stride}``, from :attr:`feature_info`."""
        return {info.name: info.stride for info in self.feature_info}

    def _init_weights(self, zero_init_residual: bool) -> None:
        # Norm layers and the classifier keep PyTorch's defaults (scale 1, shift 0).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if zero_init_residual and isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            if zero_init_residual and isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def conv3x3_names(self) -> dict[int, list[str]]:
        """Qualified names of the 3x3 convs (plain or deformable) of stages 2-5, in forward order;
        e.g. ``{5: ["layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"], ...}`` in ResNet-50."""
        names: dict[int, list[str]] = {}
        for stage in STAGES:
            layer_name = f"layer{stage - 1}"
            names[stage] = [
                f"{layer_name}.{name}"
                for name, m in getattr(self, layer_name).named_modules()
                if isinstance(m, (nn.Conv2d, DeformConv2d))
                and m.kernel_size == (3, 3)
                and not name.endswith("conv_offset")
            ]
        return names

    def deformable_layers(self) -> dict[str, DeformConv2d]:
        """The deformable convs (v1 and v2) by qualified name, in forward order."""
        return {n: m for n, m in self.named_modules() if isinstance(m, DeformConv2d)}

    def forward_features(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """``x [N, C, H, W]`` -> ``{"conv2": ..., "conv5": ...}``, see the class docstring."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return OrderedDict(conv2=c2, conv3=c3, conv4=c4, conv5=c5)

    def forward(self, x: Tensor) -> Tensor | OrderedDict[str, Tensor]:
        """Logits ``[N, num_classes]``, the conv5 map, or all four maps; see the class docstring."""
        features = self.forward_features(x)
        if self.features_only:
            return features
        if self.fc is None:
            return features["conv5"]
        return self.fc(torch.flatten(self.avgpool(features["conv5"]), 1))


def check_base_channels(
    base_channels: int, block: Block, groups: int, width_per_group: int
) -> None:
    """``ValueError`` naming ``base_channels`` unless it is a positive int that gives the grouped
    3x3 convs of a bottleneck whole channels per group (``base * width_per_group / 64``)."""
    if isinstance(base_channels, bool) or not isinstance(base_channels, int) or base_channels < 1:
        raise ValueError(
            f"base_channels must be a positive int (64: the published ResNets), got "
            f"{base_channels!r}"
        )
    if block is Bottleneck and (base_channels * width_per_group) % 64:
        step = 64 // math.gcd(64, width_per_group)
        raise ValueError(
            f"base_channels must be a multiple of {step} for bottlenecks with "
            f"width_per_group={width_per_group} (groups={groups}): the grouped 3x3 conv has "
            f"base_channels * width_per_group / 64 channels per group, got base_channels="
            f"{base_channels}"
        )


def _make_stage(
    block: Block,
    in_channels: int,
    planes: int,
    n_blocks: int,
    stride: int,
    dilation: int,
    groups: int,
    width_per_group: int,
    norm_layer: NormLayer,
) -> nn.Sequential:
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), norm_layer(out_channels)
        )
    common = {"groups": groups, "width_per_group": width_per_group, "norm_layer": norm_layer}
    blocks = [block(in_channels, planes, stride, dilation, downsample, **common)]
    blocks += [block(out_channels, planes, 1, dilation, **common) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


class ResNetArch(NamedTuple):
    """One row of :data:`ARCHITECTURES`: the :class:`ResNet` arguments that name a network."""

    block: Block
    layers: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64


ARCHITECTURES: Mapping[str, ResNetArch] = MappingProxyType(
    {
        "resnet18": ResNetArch(BasicBlock, (2, 2, 2, 2)),
        "resnet34": ResNetArch(BasicBlock, (3, 4, 6, 3)),
        "resnet50": ResNetArch(Bottleneck, (3, 4, 6, 3)),
        "resnet101": ResNetArch(Bottleneck, (3, 4, 23, 3)),
        "resnet152": ResNetArch(Bottleneck, (3, 8, 36, 3)),
        "resnext50_32x4d": ResNetArch(Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4),
        "resnext101_32x4d": ResNetArch(Bottleneck, (3, 4, 23, 3), groups=32, width_per_group=4),
        "resnext101_32x8d": ResNetArch(Bottleneck, (3, 4, 23, 3), groups=32, width_per_group=8),
    }
)
"""Every named ResNet/ResNeXt: name -> (block, blocks per stage, groups, width per group). A new
network is one row here plus its public constructor below."""


def _create(name: str, **kwargs: Any) -> ResNet:
    """The network ``name`` of :data:`ARCHITECTURES`; ``kwargs`` go to :class:`ResNet`."""
    if name not in ARCHITECTURES:
        raise ValueError(f"name must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    block, layers, groups, width_per_group = ARCHITECTURES[name]
    return ResNet(block, layers, groups=groups, width_per_group=width_per_group, **kwargs)


# Constructors. Each takes ``deform``, ``output_stride``, ``features_only`` and the remaining
# :class:`ResNet` keyword arguments (``num_classes``, ``norm_layer``, ``base_channels``, ...).


def resnet18(
    deform: Deform = None, output_stride: int | None = None, features_only: bool = False, **kw: Any
) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2), 11.7 M parameters with the 1000-class head."""
    return _create(
        "resnet18", deform=deform, output_stride=output_stride, features_only=features_only, **kw
    )


def resnet34(
    deform: Deform = None, output_stride: int | None = None, features_only: bool = False, **kw: Any
) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3), 21.8 M parameters with the 1000-class head."""
    return _create(
        "resnet34", deform=deform, output_stride=output_stride, features_only=features_only, **kw
    )


def resnet50(
    deform: Deform = None, output_stride: int | None = None, features_only: bool = False, **kw: Any
) -> ResNet:
    """ResNet-50: bottlenecks (3, 4, 6, 3), 25.6 M parameters with the 1000-class head."""
    return _create(
        "resnet50", deform=deform, output_stride=output_stride, features_only=features_only, **kw
    )


def resnet101(
    deform: Deform = None, output_stride: int | None = None, features_only: bool = False, **kw: Any
) -> ResNet:
    """ResNet-101: bottlenecks (3, 4, 23, 3), 44.5 M parameters with the 1000-class head."""
    return _create(
        "resnet101", deform=deform, output_stride=output_stride, features_only=features_only, **kw
    )


def resnet152(
    deform: Deform = None, output_stride: int | None = None, features_only: bool = False, **kw: Any
) -> ResNet:
    """ResNet-152: bottlenecks (3, 8, 36, 3), 60.2 M parameters with the 1000-class head."""
    return _create(
        "resnet152", deform=deform, output_stride=output_stride, features_only=features_only, **kw
    )


def resnext50_32x4d(
    deform: Deform = None, output_stride: int | None = None, features_only: bool = False, **kw: Any
) -> ResNet:
    """ResNeXt-50 32x4d: bottlenecks (3, 4, 6, 3), 32 groups of width 4, 25.0 M parameters."""
    return _create(
        "resnext50_32x4d",
        deform=deform,
        output_stride=output_stride,
        features_only=features_only,
        **kw,
    )


def resnext101_32x4d(
    deform: Deform = None, output_stride: int | None = None, features_only: bool = False, **kw: Any
) -> ResNet:
    """ResNeXt-101 32x4d: bottlenecks (3, 4, 23, 3), 32 groups of width 4, 44.2 M parameters."""
    return _create(
        "resnext101_32x4d",
        deform=deform,
        output_stride=output_stride,
        features_only=features_only,
        **kw,
    )


def resnext101_32x8d(
    deform: Deform = None, output_stride: int | None = None, features_only: bool = False, **kw: Any
) -> ResNet:
    """ResNeXt-101 32x8d: bottlenecks (3, 4, 23, 3), 32 groups of width 8, 88.8 M parameters."""
    return _create(
        "resnext101_32x8d",
        deform=deform,
        output_stride=output_stride,
        features_only=features_only,
        **kw,
    )
