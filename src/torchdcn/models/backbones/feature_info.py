"""What a backbone tells the heads built on it: one :class:`FeatureInfo` per output map.

Detectors and segmenters size their heads from ``backbone.feature_info`` (channels, and
``spatial_scale = 1 / stride`` for RoI pooling) and pad their image batches to a multiple of
``backbone.size_divisibility``; they never hard-code a backbone's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureInfo:
    """One output map of a backbone.

    Attributes:
        name: its key in the backbone's output dict (``"conv2"`` ... ``"conv5"`` for a ResNet).
        channels: its channel count ``C``.
        stride: input pixels per map cell along each axis; an ``[N, 3, H, W]`` input gives
            ``[N, C, ceil(H / stride), ceil(W / stride)]``, exactly ``H / stride`` when ``H`` is a
            multiple of the backbone's ``size_divisibility``.
    """

    name: str
    channels: int
    stride: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty str, got {self.name!r}")
        for field in ("channels", "stride"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive int, got {value!r}")
