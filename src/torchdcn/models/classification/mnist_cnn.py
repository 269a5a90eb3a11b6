"""A small CNN for distorted digits, plain or with deformable convolutions (v1 or v2).

Reads top to bottom: a stem of two 3x3 convs of stride 2 takes the canvas to 1/4 of its size; a
body of three stacked 3x3 convs at that resolution is where the deformable layers go (plain
``nn.Conv2d``, v1 :class:`~torchdcn.nn.DeformConv2dPack` or v2
:class:`~torchdcn.nn.ModulatedDeformConv2dPack`); global average pooling and one linear layer
classify. By default all three body layers are deformable; ``deform_layers`` keeps only the last
``k`` of them deformable (the first ``3 - k`` plain), ``offset_lr_mult`` overrides the predictors'
learning-rate multiplier (v1 1.0, v2 0.1 by default) and ``mask_init`` the v2 masks' initial value
(0.5 by default, SPEC section 3).
Three stacked 3x3 deformable layers sample ``9 ** 3 = 729`` points per activation (v1 Fig. 5), which
:mod:`torchdcn.analysis.sampling` draws. GroupNorm keeps every sample independent of the rest of
its batch, so a run split over processes computes what one process computes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch import Tensor, nn

from ...nn import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack
from ..backbones.deform_config import DeformPreset


@dataclass(frozen=True)
class MnistCNNConfig:
    """Settings of :class:`MnistCNN`.

    Attributes:
        deform: ``None`` (plain convs), ``"v1"`` or ``"v2"`` for the three body layers.
        width: channels of the body (the stem's first layer has half).
        num_classes: outputs of the classifier.
        in_channels: image channels.
        norm_groups: GroupNorm groups (divides ``width // 2``).
        deform_layers: how many body layers, counted from the last, are deformable (1-3; the
            others are plain ``nn.Conv2d``); ignored when ``deform`` is None.
        offset_lr_mult: learning-rate multiplier of the offset (and mask) predictors (``None``:
            the modules' default, 1.0 for v1 and 0.1 for v2).
        mask_init: initial value of every v2 mask, in (0, 1): the predictor's mask bias starts
            at ``logit(mask_init)`` (0.5: the zero initialisation of SPEC section 3). v2 only.
    """

    deform: DeformPreset | None = None
    width: int = 32
    num_classes: int = 10
    in_channels: int = 1
    norm_groups: int = 4
    deform_layers: int = 3
    offset_lr_mult: float | None = None
    mask_init: float = 0.5

    def __post_init__(self) -> None:
        if self.deform not in (None, "v1", "v2"):
            raise ValueError(f"deform must be None, 'v1' or 'v2', got {self.deform!r}")
        if self.deform_layers not in (1, 2, 3):
            raise ValueError(f"deform_layers must be 1, 2 or 3, got {self.deform_layers!r}")
        if self.offset_lr_mult is not None and not self.offset_lr_mult >= 0:
            raise ValueError(f"offset_lr_mult must be None or >= 0, got {self.offset_lr_mult!r}")
        if not 0 < self.mask_init < 1:
            raise ValueError(f"mask_init must be in (0, 1), got {self.mask_init!r}")
        if self.mask_init != 0.5 and self.deform != "v2":
            raise ValueError(f"mask_init applies to deform='v2' only, got deform={self.deform!r}")
        if self.width < 2 or (self.width // 2) % self.norm_groups:
            raise ValueError(
                f"norm_groups={self.norm_groups} must divide width // 2 = {self.width // 2}"
            )


def _norm_act(channels: int, groups: int) -> list[nn.Module]:
    return [nn.GroupNorm(groups, channels), nn.ReLU(inplace=True)]


class MnistCNN(nn.Module):
    """See the module docstring. ``forward(x [N, C, H, W]) -> logits [N, num_classes]``.

    The body works at stride :attr:`feature_stride` (4): body cell ``(i, j)`` is centred on image
    pixel ``(4 i, 4 j)`` (pixel centres at integers), see :meth:`cell_to_pixel`.
    """

    feature_stride = 4

    def __init__(self, config: MnistCNNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MnistCNNConfig()
        w, g = config.width, config.norm_groups
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, w // 2, 3, stride=2, padding=1, bias=False),
            *_norm_act(w // 2, g),
            nn.Conv2d(w // 2, w, 3, stride=2, padding=1, bias=False),
            *_norm_act(w, g),
        )
        self.body = nn.ModuleList(self._body_conv(i) for i in range(3))
        self.body_norms = nn.ModuleList(nn.Sequential(*_norm_act(w, g)) for _ in range(3))
        self.fc = nn.Linear(w, config.num_classes)

    def _body_conv(self, index: int) -> nn.Module:
        """Body layer ``index`` (0-2): plain, or deformable as the config says."""
        cfg, w = self.config, self.config.width
        if cfg.deform is None or index < 3 - cfg.deform_layers:
            return nn.Conv2d(w, w, 3, padding=1, bias=False)
        pack = {"v1": DeformConv2dPack, "v2": ModulatedDeformConv2dPack}[cfg.deform]
        conv = pack(w, w, 3, padding=1, bias=False, offset_lr_mult=cfg.offset_lr_mult)
        if cfg.mask_init != 0.5:
            n_off = 2 * conv.offset_groups * 9
            logit = math.log(cfg.mask_init / (1 - cfg.mask_init))
            nn.init.constant_(conv.conv_offset.bias[n_off:], logit)
        return conv

    def features(self, x: Tensor) -> Tensor:
        """Input of the first body layer: ``[N, C, H, W] -> [N, width, ceil(H/4), ceil(W/4)]``."""
        return self.stem(x)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[N, in_channels, H, W]`` -> logits ``[N, num_classes]``."""
        x = self.features(x)
        for conv, norm in zip(self.body, self.body_norms):
            x = norm(conv(x))
        return self.fc(x.mean((2, 3)))

    def body_layers(self) -> list[nn.Module]:
        """The three body convs, first to last (plain ``nn.Conv2d`` when ``deform`` is None);
        their inputs are :meth:`body_inputs`."""
        return list(self.body)

    def deformable_layers(self) -> dict[str, DeformConv2d]:
        """The deformable convs (v1 and v2) by qualified name, in forward order (empty when
        ``deform`` is None), as :meth:`torchdcn.models.ResNet.deformable_layers`."""
        return {n: m for n, m in self.named_modules() if isinstance(m, DeformConv2d)}

    def body_inputs(self, x: Tensor) -> list[Tensor]:
        """Inputs of the three body layers, ``[N, width, H/4, W/4]`` each, first to last."""
        x = self.features(x)
        inputs = []
        for conv, norm in zip(self.body, self.body_norms):
            inputs.append(x)
            x = norm(conv(x))
        return inputs

    @classmethod
    def cell_to_pixel(cls, coords: Tensor) -> Tensor:
        """Body-cell coordinates (any shape, real-valued) to image pixel coordinates."""
        return coords * cls.feature_stride


def mnist_cnn(deform: DeformPreset | None = None, **kwargs) -> MnistCNN:
    """The demo CNN: ``mnist_cnn()``, ``mnist_cnn("v1")``, ``mnist_cnn("v2", width=48)``; keyword
    arguments are :class:`MnistCNNConfig` fields."""
    return MnistCNN(MnistCNNConfig(deform=deform, **kwargs))


def mnist_cnn_config_dict(model: MnistCNN) -> dict:
    """The model's settings as a plain dict (stored in checkpoints to rebuild it)."""
    return asdict(model.config)
