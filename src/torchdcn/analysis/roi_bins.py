"""Sampling locations of deformable RoI pooling bins (v1 Fig. 7) and effective bin locations (v2).

A RoI ``(x1, y1, x2, y2)`` (image pixels) is split into ``ph x pw`` bins; with
:func:`torchdcn.ops.deform_roi_pool`'s conventions (``aligned``: the scaled RoI shifted by -0.5
cell) bin ``(i, j)`` spans, in feature cells, ``[y1' + i * h / ph, y1' + (i + 1) * h / ph]`` by
``[x1' + j * w / pw, ...]`` shifted by ``(gamma * dy * h, gamma * dx * w)`` (normalised offsets, x
first). Mapped back to pixels (``(cell + shift) / spatial_scale``) these are the deformed bins
drawn on the image. The offsets come from the module's own ``predict`` on the feature map the
module saw in the model's forward pass (recorded by a hook), for any boxes (e.g. the detections).
For position-sensitive pooling each class has its own offsets (``group``, see
:func:`offset_group`), predicted from the map passed as ``feature=`` when the module has one
(R-FCN's offset convs read the 1024-channel features, not the score maps).

*Effective bin locations* weight every bin by the gradient of a score of the pooled features
(e.g. the detection's class score) with respect to the bin's location, ``|d score / d offset|``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..nn import DeformPSRoIPool, DeformRoIPool
from ..ops import deform_ps_roi_pool, deform_roi_pool
from .probe import check_boxes

#: the module kinds whose bins move
DEFORMABLE_ROI_MODULES = (DeformRoIPool, DeformPSRoIPool)


@dataclass
class RoIBins:
    """Bins of ``R`` RoIs, in image pixels.

    Attributes:
        regular: ``Tensor[R, ph, pw, 4]`` ``(x1, y1, x2, y2)`` of the undeformed bins.
        deformed: ``Tensor[R, ph, pw, 4]`` the bins moved by their offsets.
        mask: ``Tensor[R, ph, pw]`` modulation (v2) or ``None``.
        weights: ``Tensor[R, ph, pw]`` effective bin weights (``|d score / d offset|``) or ``None``.
    """

    regular: Tensor
    deformed: Tensor
    mask: Tensor | None = None
    weights: Tensor | None = None

    @property
    def centres(self) -> Tensor:
        """``Tensor[R, ph, pw, 2]`` ``(y, x)`` centres of the deformed bins."""
        d = self.deformed
        return torch.stack([(d[..., 1] + d[..., 3]) / 2, (d[..., 0] + d[..., 2]) / 2], -1)


def bin_boxes(
    rois: Tensor,
    offset: Tensor | None,
    output_size: tuple[int, int],
    spatial_scale: float,
    gamma: float = 0.1,
    aligned: bool = True,
    group: int = 0,
) -> tuple[Tensor, Tensor]:
    """Regular and deformed bins ``(Tensor[R, ph, pw, 4], Tensor[R, ph, pw, 4])`` in pixels.

    Args:
        rois: ``Tensor[R, 4]`` ``(x1, y1, x2, y2)`` image pixels (``[R, 5]`` RoIs with a batch
            index are a ``ValueError``).
        offset: ``Tensor[R, 2 * G, ph, pw]`` normalised offsets (x then y per group) or ``None``.
        output_size, spatial_scale, gamma, aligned: the pooling's.
        group: which ``(x, y)`` pair (a class of position-sensitive pooling).
    """
    rois = check_boxes(rois, "rois").float()
    ph, pw = output_size
    shift = 0.5 if aligned else 0.0
    box = rois * spatial_scale - shift
    x1, y1 = box[:, 0], box[:, 1]
    w, h = box[:, 2] - x1, box[:, 3] - y1
    if not aligned:
        w, h = w.clamp_min(1.0), h.clamp_min(1.0)
    j = torch.arange(pw, dtype=torch.float32, device=rois.device)
    i = torch.arange(ph, dtype=torch.float32, device=rois.device)
    bx1 = x1[:, None, None] + (j / pw)[None, None, :] * w[:, None, None]
    by1 = y1[:, None, None] + (i / ph)[None, :, None] * h[:, None, None]
    bx1, by1 = torch.broadcast_tensors(bx1, by1)
    bw, bh = (w / pw)[:, None, None], (h / ph)[:, None, None]
    regular = torch.stack([bx1, by1, bx1 + bw, by1 + bh], -1)
    deformed = regular.clone()
    if offset is not None:
        if offset.shape[1] < 2 * (group + 1):
            raise ValueError(f"group {group} needs offset with > {2 * group + 1} channels")
        dx = gamma * offset[:, 2 * group].float() * w[:, None, None]
        dy = gamma * offset[:, 2 * group + 1].float() * h[:, None, None]
        deformed = deformed + torch.stack([dx, dy, dx, dy], -1)
    to_pixels = lambda t: (t + shift) / spatial_scale  # noqa: E731
    return to_pixels(regular), to_pixels(deformed)


class RoICall(tuple):
    """The positional arguments of one call of a RoI pooling module (a tuple: ``call[0]`` is the
    pooled map ``[N, C, H, W]``, ``call[1]`` the RoIs), with its keyword arguments in
    ``kwargs``. Tensors are detached."""

    kwargs: dict[str, Any]

    def __new__(cls, args: tuple, kwargs: dict[str, Any] | None = None) -> RoICall:
        call = super().__new__(cls, tuple(_detached(a) for a in args))
        call.kwargs = {k: _detached(v) for k, v in (kwargs or {}).items()}
        return call

    @property
    def features(self) -> Tensor:
        """``Tensor[N, C, H, W]`` the map the module pooled."""
        return self[0]

    @property
    def feature(self) -> Tensor | None:
        """The offset branch's own input (``feature=`` of :class:`~torchdcn.nn.DeformPSRoIPool`,
        keyword or third positional argument), or ``None``."""
        if "feature" in self.kwargs:
            return self.kwargs["feature"]
        return self[2] if len(self) > 2 and isinstance(self[2], Tensor) else None


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


def offset_group(module: nn.Module, channel: int) -> int:
    """The offset class (``group`` of :func:`bin_boxes`) whose offsets move the bins of output
    channel ``channel`` of ``module`` (a class label of R-FCN's class score pooling): with ``C'``
    offset pairs for ``C_out`` outputs, channel ``c`` uses pair ``c // (C_out / C')`` (0 for
    class-agnostic and non position-sensitive modules)."""
    if not isinstance(module, DeformPSRoIPool):
        return 0
    if not 0 <= channel < module.out_channels:
        raise ValueError(
            f"channel must be in [0, {module.out_channels}) (the module's outputs), got {channel}"
        )
    bins = module.output_size[0] * module.output_size[1]
    pairs = module.conv_offset.out_channels // (2 * bins)
    return channel // (module.out_channels // pairs)


@contextmanager
def record_roi_inputs(model: nn.Module) -> Iterator[dict[str, RoICall]]:
    """Record the arguments of every deformable RoI pooling module during forward passes in the
    block: ``{name: RoICall}`` (last call; positional ``(input, rois, ...)`` plus ``kwargs``,
    e.g. R-FCN's ``feature=``), in the order the modules were first called."""
    found = {n: m for n, m in model.named_modules() if isinstance(m, DEFORMABLE_ROI_MODULES)}
    if not found:
        raise ValueError(
            "roi bins need a model with deformable RoI pooling (DeformRoIPool, "
            f"ModulatedDeformRoIPool or DeformPSRoIPool), but {type(model).__name__} has none"
        )
    out: dict[str, RoICall] = {}
    handles = []

    def make(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            out[name] = RoICall(args, kwargs)

        return hook

    try:
        for name, module in found.items():
            handles.append(module.register_forward_pre_hook(make(name), with_kwargs=True))
        yield out
    finally:
        for h in handles:
            h.remove()


def deformed_bins(
    module: nn.Module,
    features: Tensor,
    boxes: Tensor,
    image_index: int = 0,
    group: int = 0,
    score_fn: Callable[[Tensor], Tensor] | None = None,
    feature: Tensor | None = None,
) -> RoIBins:
    """The bins ``module`` (a deformable RoI pooling module) would use for ``boxes``.

    Args:
        module: :class:`~torchdcn.nn.DeformRoIPool`, :class:`~torchdcn.nn.ModulatedDeformRoIPool`
            or :class:`~torchdcn.nn.DeformPSRoIPool` (its weights are only read).
        features: ``Tensor[N, C, H, W]`` the map the module pools.
        boxes: ``Tensor[R, 4]`` image pixels, all in image ``image_index`` (``[R, 5]`` RoIs with
            a batch index are a ``ValueError``).
        group: offsets of this class (position-sensitive pooling; :func:`offset_group` maps
            an output channel, e.g. a class label, to it).
        score_fn: ``pooled [R, C', ph, pw] -> scores [R]``: when given, the bins' effective
            weights ``|d score / d offset|`` are computed.
        feature: the offset conv's input of a PS module that reads another map.

    Returns:
        :class:`RoIBins`.
    """
    if not isinstance(module, DEFORMABLE_ROI_MODULES):
        raise TypeError(
            f"module must be a deformable RoI pooling module, got {type(module).__name__}"
        )
    boxes = check_boxes(boxes).to(features.dtype)
    index = torch.full((len(boxes), 1), float(image_index), dtype=boxes.dtype, device=boxes.device)
    rois = torch.cat([index, boxes], 1)
    ps = isinstance(module, DeformPSRoIPool)
    with torch.enable_grad():
        features = features.detach()
        if ps:
            if feature is None and module.offset_in_channels != module.in_channels:
                raise ValueError(
                    f"feature is required: {type(module).__name__}'s offset conv reads a "
                    f"[N, {module.offset_in_channels}, H, W] map, not the pooled one (pass "
                    "the call's feature=, e.g. RoICall.feature of record_roi_inputs)"
                )
            feature = None if feature is None else feature.detach()
            offset, mask = module.predict(features, rois, feature), None
        else:
            offset, mask = module.predict(features, rois)
        offset = offset.detach().requires_grad_(score_fn is not None)
        weights = None
        if score_fn is not None:
            # each RoI is pooled twice: the CPU backward of a single modulated RoI returns
            # aliased offset/mask gradients, which torch refuses (a copy per RoI keeps the
            # gradient of each the same: the rows do not interact)
            rois2, off2 = torch.cat([rois, rois]), torch.cat([offset, offset])
            if ps:
                pooled = deform_ps_roi_pool(
                    features, rois2, off2, module.output_size, module.spatial_scale,
                    module.sampling_ratio, module.gamma, module.aligned,
                )  # fmt: skip
            else:
                mask2 = None if mask is None else torch.cat([mask, mask]).detach()
                pooled = deform_roi_pool(
                    features, rois2, off2, module.output_size, module.spatial_scale,
                    module.sampling_ratio, module.gamma, mask2, module.aligned,
                )  # fmt: skip
            score = score_fn(pooled[: len(rois)]).sum()
            (grad,) = torch.autograd.grad(score, offset, allow_unused=True)
            if grad is None:
                grad = torch.zeros_like(offset)
            weights = grad[:, 2 * group : 2 * group + 2].norm(dim=1).detach()
    regular, deformed = bin_boxes(
        boxes, offset.detach(), module.output_size, module.spatial_scale, module.gamma,
        module.aligned, group,
    )  # fmt: skip
    return RoIBins(regular, deformed, None if mask is None else mask[:, 0].detach(), weights)
