"""A small CNN for distorted digits, plain or with deformable convolutions (v1 or v2).

Reads top to bottom: a stem of two 3x3 convs of stride 2 takes the canvas to 1/4 of its size; a
body of three stacked 3x3 convs at that resolution is where the deformable layers go (plain
``nn.Conv2d``, v1 :class:`~torchdcn.nn.DeformConv2dPack` or v2
:class:`~torchdcn.nn.ModulatedDeformConv2dPack`); global average pooling and one linear layer
classify.
Three stacked 3x3 deformable layers sample ``9 ** 3 = 729`` points per activation (v1 Fig. 5), which
:mod:`torchdcn.analysis.sampling` draws. GroupNorm keeps every sample independent of the rest of
its batch, so a run split over processes computes what one process computes.
"""

from __future__ import annotations

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
    """

    deform: DeformPreset | None = None
    width: int = 32
    num_classes: int = 10
    in_channels: int = 1
    norm_groups: int = 4

    def __post_init__(self) -> None:
        if self.deform not in (None, "v1", "v2"):
            raise ValueError(f"deform must be None, 'v1' or 'v2', got {self.deform!r}")
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
        deform = {"v1": DeformConv2dPack, "v2": ModulatedDeformConv2dPack}
        conv = {None: nn.Conv2d, **deform}[config.deform]
        self.body = nn.ModuleList(conv(w, w, 3, padding=1, bias=False) for _ in range(3))
        self.body_norms = nn.ModuleList(nn.Sequential(*_norm_act(w, g)) for _ in range(3))
        self.fc = nn.Linear(w, config.num_classes)

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
