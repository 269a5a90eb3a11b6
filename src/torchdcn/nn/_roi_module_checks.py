"""Constructor checks of the deformable RoI pooling modules, against calls written for mmcv.

mmcv orders these modules' arguments differently: ``DeformRoIPool(output_size, spatial_scale,
sampling_ratio, gamma)`` (offsets given in ``forward``) and ``DeformRoIPoolPack(output_size,
output_channels, deform_fc_channels, spatial_scale, ...)``, while torchdcn's modules own their
offset branch and take ``(in_channels, output_size, spatial_scale, ...)``. An mmcv-ordered call
``DeformRoIPool(7, 256)`` used to build a fc for 256 x 256 bins of 7 channels (240 GB). These
checks turn every such call into a ``TypeError``/``ValueError`` that says which order applies.
"""

from __future__ import annotations

import numbers

from ..ops import IntPair, pair, real_scalar

MAX_OUTPUT_SIZE = 64
"""Bins per side a deformable RoI pooling module accepts (7 and 14 in the papers): more is an
argument in the wrong place, not a pooling size."""

AMBIGUOUS_OUTPUT_SIZE = 14
"""Above this many bins per side (14: the papers' mask pooling), an ``output_size`` larger than
the channel count reads as mmcv's ``(output_size, output_channels)`` order and is refused
(``DeformRoIPool(7, 64)``: mmcv's 7x7 bins of 64 channels, not 7 channels in 64x64 bins)."""

MAX_BRANCH_PARAMETERS = 2**30
"""Parameters of an offset branch above which construction is refused (4 GiB in float32)."""


def _order_hint(module: str, channels_name: str) -> str:
    return (
        f"{module} takes ({channels_name}, output_size, spatial_scale, sampling_ratio, ...), "
        f"not mmcv's (output_size, spatial_scale, ...) or (output_size, output_channels, ...) "
        f"order; e.g. {module}(256, output_size=7, spatial_scale=1 / 16)"
    )


def channels_alias(in_channels: object, output_channels: object, module: str) -> int:
    """``in_channels``, or mmcv's keyword ``output_channels`` for it (the same number: these
    modules pool every channel)."""
    if output_channels is not None:
        if in_channels is not None and in_channels != output_channels:
            raise ValueError(
                f"in_channels={in_channels!r} and output_channels={output_channels!r} (mmcv's "
                f"name for it) differ"
            )
        in_channels = output_channels
    if in_channels is None:
        raise TypeError(f"{module} needs in_channels; {_order_hint(module, 'in_channels')}")
    return in_channels  # type: ignore[return-value]


def check_roi_module_args(
    module: str, channels_name: str, channels: object, output_size: object, spatial_scale: object
) -> tuple[int, int]:
    """Check the leading arguments of a deformable RoI pooling module; returns ``output_size``
    as ``(ph, pw)``. ``TypeError``/``ValueError`` naming the argument and the expected order."""
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral):
        raise TypeError(
            f"{channels_name} must be an int (feature channels), got {channels!r}; "
            + _order_hint(module, channels_name)
        )
    if channels <= 0:
        raise ValueError(f"{channels_name} must be positive, got {channels}")
    if output_size is None:
        raise TypeError(f"{module} needs output_size; {_order_hint(module, channels_name)}")
    try:
        size = pair(output_size, "output_size")  # type: ignore[arg-type]
    except TypeError as err:
        raise TypeError(f"{err}; {_order_hint(module, channels_name)}") from None
    if min(size) <= 0:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    if max(size) > MAX_OUTPUT_SIZE:
        raise ValueError(
            f"output_size={size} is more than {MAX_OUTPUT_SIZE} bins per side (7 or 14 in the "
            f"papers): {module} got {channels_name}={channels}, output_size={output_size!r}; "
            + _order_hint(module, channels_name)
        )
    if max(size) > AMBIGUOUS_OUTPUT_SIZE and max(size) > channels:
        raise ValueError(
            f"{module}({channels_name}={channels}, output_size={output_size!r}): more bins per "
            f"side than feature channels, above {AMBIGUOUS_OUTPUT_SIZE}, reads as mmcv's "
            "(output_size, output_channels) order; " + _order_hint(module, channels_name)
        )
    spatial_scale = real_scalar(spatial_scale, "spatial_scale")  # finite, as the ops take it
    if not spatial_scale > 0:
        raise ValueError(
            f"spatial_scale must be positive (1/16 for stride 16), got {spatial_scale}"
        )
    return size


def check_branch_size(module: str, parameters: int, output_size: IntPair) -> None:
    """Refuse an offset branch of more than :data:`MAX_BRANCH_PARAMETERS` parameters before
    allocating it."""
    if parameters > MAX_BRANCH_PARAMETERS:
        raise ValueError(
            f"{module}'s offset branch would hold {parameters:,} parameters "
            f"({parameters * 4 / 2**30:.1f} GiB in float32) for output_size={output_size}; "
            "check in_channels and output_size (at most "
            f"{MAX_BRANCH_PARAMETERS:,} parameters are allowed)"
        )
