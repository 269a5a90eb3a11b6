"""Which 3x3 convolutions of a ResNet are deformable: a small dataclass and the paper presets.

Stages are numbered as in the papers: ``conv2`` ... ``conv5`` are torchvision's ``layer1`` ...
``layer4`` (``conv1`` is the 7x7 stem and is never deformable).

- DCN v1 (SPEC section 5): the last three 3x3 convs of conv5, deformable (:data:`DCN_V1`).
- DCN v2 (SPEC section 6): every 3x3 conv of conv3, conv4 and conv5, modulated (:data:`DCN_V2`).
  In ResNet-50 that is ``4 + 6 + 3 = 13`` layers (the v2 paper says 12, but its own rule, "all the
  3x3 conv layers in stages conv3, conv4 and conv5", gives 13, as mmdetection's
  ``stage_with_dcn=(False, True, True, True)`` does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

STAGES = (2, 3, 4, 5)


@dataclass(frozen=True)
class DeformConfig:
    """Deformable 3x3 convolutions for some stages of a ResNet.

    Attributes:
        stages: the stages concerned, among 2, 3, 4, 5 (``conv2`` ... ``conv5``).
        last_n: how many 3x3 convs, counted back from the last one of the last stage listed and
            staying within ``stages``; ``None`` takes all of them. v1's ablation "last 6 layers"
            of ResNet-101 is ``DeformConfig(stages=(4, 5), last_n=6)``.
        modulated: modulated deformable conv (v2, :class:`~torchdcn.nn.ModulatedDeformConv2dPack`)
            instead of v1 (:class:`~torchdcn.nn.DeformConv2dPack`).
        offset_groups: offset groups ``G`` of every such layer (divides its input channels).
        offset_lr_mult: learning-rate multiplier of the offset predictors; ``None`` takes the
            layer's default (1.0 for v1, 0.1 for v2).

    Several configs with disjoint stages give a per-stage configuration, e.g.
    ``(DeformConfig(stages=(4,), modulated=True), DeformConfig(stages=(5,), offset_groups=4))``.
    """

    stages: tuple[int, ...] = (5,)
    last_n: int | None = None
    modulated: bool = False
    offset_groups: int = 1
    offset_lr_mult: float | None = None

    def __post_init__(self) -> None:
        stages = tuple(self.stages)
        if not stages or any(s not in STAGES for s in stages) or len(set(stages)) != len(stages):
            raise ValueError(f"stages must be distinct values among {STAGES}, got {self.stages}")
        object.__setattr__(self, "stages", tuple(sorted(stages)))
        if self.last_n is not None and self.last_n < 1:
            raise ValueError(f"last_n must be None or >= 1, got {self.last_n}")
        if self.offset_groups < 1:
            raise ValueError(f"offset_groups must be >= 1, got {self.offset_groups}")
        if self.offset_lr_mult is not None and self.offset_lr_mult < 0:
            raise ValueError(f"offset_lr_mult must be >= 0, got {self.offset_lr_mult}")

    def select(self, convs_per_stage: Mapping[int, Sequence[str]]) -> list[str]:
        """The names of the chosen convs, given every stage's 3x3 conv names in forward order."""
        names = [name for stage in self.stages for name in convs_per_stage[stage]]
        if self.last_n is None:
            return names
        if self.last_n > len(names):
            raise ValueError(
                f"DeformConfig asks for the last {self.last_n} 3x3 convs of stages {self.stages}, "
                f"but this network has only {len(names)} there"
            )
        return names[len(names) - self.last_n :]


DCN_V1 = DeformConfig(stages=(5,), last_n=3)
"""The v1 paper's default: the last three 3x3 convs of conv5 (SPEC section 5, v1 Table 1)."""

DCN_V2 = DeformConfig(stages=(3, 4, 5), modulated=True)
"""The v2 paper's choice: every 3x3 conv of conv3-conv5, modulated (SPEC section 6)."""

DeformPreset = Literal["v1", "v2"]
"""The paper presets by name: ``"v1"`` (:data:`DCN_V1`) and ``"v2"`` (:data:`DCN_V2`). Models
with no per-stage choice (the MNIST CNN) take ``DeformPreset | None``."""

Deform = DeformPreset | DeformConfig | Sequence[DeformConfig] | bool | None
"""What a backbone's ``deform=`` accepts: ``None`` (or ``False``), ``"v1"``, ``"v2"``, a config,
or configs per stage. ``True`` raises a ``TypeError`` asking for ``"v1"`` or ``"v2"``."""

PAPER_OUTPUT_STRIDE = 16
"""conv5 runs at stride 16 (stride 1, dilation 2) in both papers' networks (SPEC sections 5-6)."""


def resolve_deform(deform: Deform) -> tuple[DeformConfig, ...]:
    """``deform`` as a tuple of configs with disjoint stages (empty for ``None`` and ``False``).

    ``True`` is refused: the two presets differ (v1: three deformable convs; v2: thirteen
    modulated ones in ResNet-50), so the caller must say which.
    """
    if deform is None or deform is False:
        return ()
    if deform is True:
        raise TypeError(
            "deform=True is ambiguous: pass deform='v1' (the v1 paper's last three 3x3 convs of "
            "conv5) or deform='v2' (every 3x3 conv of conv3-conv5, modulated); None or False "
            "for a plain network"
        )
    if isinstance(deform, str):
        if deform == "v1":
            return (DCN_V1,)
        if deform == "v2":
            return (DCN_V2,)
        raise ValueError(f"deform preset must be 'v1' or 'v2', got {deform!r}")
    if isinstance(deform, DeformConfig):
        configs: tuple[DeformConfig, ...] = (deform,)
    elif isinstance(deform, Sequence):
        configs = tuple(deform)
    else:
        raise TypeError(
            f"deform must be None, 'v1', 'v2', a DeformConfig or a sequence of them, got "
            f"{type(deform).__name__} {deform!r}"
        )
    for config in configs:
        if not isinstance(config, DeformConfig):
            raise TypeError(
                f"deform must be None, 'v1', 'v2', a DeformConfig or a sequence of them, "
                f"got an element of type {type(config).__name__}"
            )
    seen: set[int] = set()
    for config in configs:
        if seen & set(config.stages):
            raise ValueError(
                f"deform configs must cover disjoint stages; stage(s) "
                f"{sorted(seen & set(config.stages))} appear twice"
            )
        seen |= set(config.stages)
    return configs


def default_output_stride(deform: Deform) -> int:
    """16 for the paper presets ``"v1"`` and ``"v2"`` (SPEC sections 5-6), else 32 (torchvision)."""
    return PAPER_OUTPUT_STRIDE if deform in ("v1", "v2") else 32
