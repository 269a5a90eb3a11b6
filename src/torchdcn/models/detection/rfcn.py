"""R-FCN (plain, v1 and v2 deformable backbones; PS or deformable PS RoI pooling), with a preset.

The v1 paper's R-FCN (section 2.3, SPEC sections 4-5): a ResNet at output stride 16 (conv5 with
stride 1 and dilation 2), the shared RPN on conv4 (as Faster R-CNN), a randomly initialised 1x1
conv + ReLU reducing conv5 to 1024 channels (:class:`~.conv_reduce.ConvReduce`), then the
position-sensitive head (:class:`~.ps_head.PSScoreHead`): ``k*k*(C+1)`` class and ``k*k*4``
box score maps (``k = 7``), PS or deformable PS RoI pooling, voting by average. Training samples
128 RoIs per image (25 % foreground) or, with ``ohem=True``, mines the 128 hardest of all
proposals (:mod:`.ohem`). It is a :class:`~.faster_rcnn.FasterRCNN` (same normalisation,
batching, RPN, forward contract) whose RoI heads are :class:`RFCNHeads`, a
:class:`~.box_head.RoIHeads` with the PS head in place of pooler + 2fc + predictor (same
matching, targets, losses and post-processing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..backbones import DeformConfig
from .box_head import RoIHeads
from .conv_reduce import ConvReduce
from .faster_rcnn import FasterRCNN, _backbone, _rpn
from .ohem import KeepAllSampler, per_roi_losses, select_hard_examples
from .ps_head import PS_POOL_KINDS, PSScoreHead
from .sampler import BalancedSampler


class PSBoxDeltas(nn.Module):
    """Pass the voted class logits through and lay class-agnostic box deltas out per class, so
    :class:`~.box_head.RoIHeads`' losses and decoding read them as a Fast R-CNN predictor's.

    Shape:
        ``((class_logits [R, C + 1], box_deltas [R, 4B]))`` -> ``([R, C + 1], [R, 4 (C + 1)])``:
        ``B = 1`` repeats the 4 deltas for every class, ``B = C + 1`` returns them unchanged.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, voted: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        class_logits, box_deltas = voted
        if box_deltas.shape[1] == 4:
            box_deltas = box_deltas.repeat(1, self.num_classes)
        if class_logits.shape[1] != self.num_classes or box_deltas.shape[1] != 4 * self.num_classes:
            raise ValueError(
                f"expected [R, {self.num_classes}] logits and [R, 4] or [R, {4 * self.num_classes}]"
                f" deltas, got {list(class_logits.shape)} and {list(voted[1].shape)}"
            )
        return class_logits, box_deltas


class RFCNHeads(RoIHeads):
    """R-FCN's half after the RPN: PS score maps, pooling, voting -> losses or detections.

    Args:
        ps_head: the :class:`~.ps_head.PSScoreHead` (stored as ``pooler``; ``head`` is an
            identity and ``predictor`` a :class:`PSBoxDeltas`: R-FCN has no per-RoI layer).
        ohem: mine hard examples instead of sampling (``sampler`` must then be ``None``).
        ohem_batch_size: RoIs kept per image by OHEM (128).
        ohem_nms_thresh: NMS threshold over the RoIs by loss (0.7; ``None``: none).
        sampler: without OHEM, RoIs per image and foreground fraction (default 128, 0.25: the v1
            paper's 128 RoIs for R-FCN, R-FCN's 25 %).
        kwargs: ``matcher``, ``box_coder``, ``score_thresh``, ``nms_thresh``,
            ``detections_per_img``, ``box_loss_beta``, ``generator`` of
            :class:`~.box_head.RoIHeads` (same defaults).

    Shape: as :class:`~.box_head.RoIHeads` (``features`` must hold ``ps_head.feature_names``).
    Losses ``{"loss_cls", "loss_box_reg"}``, averaged over the sampled (or mined) RoIs.
    """

    def __init__(
        self,
        ps_head: PSScoreHead,
        *,
        ohem: bool = False,
        ohem_batch_size: int = 128,
        ohem_nms_thresh: float | None = 0.7,
        sampler: BalancedSampler | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(ps_head, PSScoreHead):
            raise TypeError(f"ps_head must be a PSScoreHead, got {type(ps_head).__name__}")
        if not isinstance(ohem, bool):
            raise TypeError(f"ohem must be True or False, got {ohem!r}")
        if ohem and sampler is not None:
            raise ValueError("sampler must be None with ohem=True (OHEM labels every proposal)")
        if isinstance(ohem_batch_size, bool) or not isinstance(ohem_batch_size, int):
            raise TypeError(f"ohem_batch_size must be an int, got {ohem_batch_size!r}")
        if ohem_batch_size < 1:
            raise ValueError(f"ohem_batch_size must be positive, got {ohem_batch_size}")
        if sampler is None:
            sampler = KeepAllSampler() if ohem else BalancedSampler(128, 0.25)
        super().__init__(
            ps_head, nn.Identity(), PSBoxDeltas(ps_head.num_classes), sampler=sampler, **kwargs
        )
        self.ohem = bool(ohem)
        self.ohem_batch_size = ohem_batch_size
        self.ohem_nms_thresh = ohem_nms_thresh

    def forward(
        self,
        features: Mapping[str, Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[Mapping[str, Tensor]] | None = None,
        orig_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """``(detections, losses)`` as :meth:`RoIHeads.forward`; OHEM in training if enabled."""
        if not (self.training and self.ohem):
            return super().forward(features, proposals, image_sizes, targets, orig_sizes)
        self.check_inputs(proposals, image_sizes, targets, orig_sizes)
        rois, labels, reg_targets, class_logits, box_deltas = self.training_outputs(
            features, proposals, targets
        )
        keep = self.mine(class_logits, box_deltas, labels, reg_targets, rois)
        return [], self.loss(class_logits[keep], box_deltas[keep], labels[keep], reg_targets[keep])

    @torch.no_grad()
    def mine(
        self,
        class_logits: Tensor,
        box_deltas: Tensor,
        labels: Tensor,
        reg_targets: Tensor,
        rois: Sequence[Tensor],
    ) -> Tensor:
        """Indices (into the concatenated RoIs) of the ``ohem_batch_size`` hardest RoIs of each
        image after NMS by loss. Shapes: ``[R, C + 1]``, ``[R, 4 (C + 1)]``, ``[R]``, ``[R, 4]``,
        one ``[R_i, 4]`` per image -> int64 ``[S]``."""
        losses = per_roi_losses(class_logits, box_deltas, labels, reg_targets, self.box_loss_beta)
        keep, start = [], 0
        for boxes in rois:
            n = boxes.shape[0]
            if n:
                idx = select_hard_examples(
                    losses[start : start + n], boxes, self.ohem_batch_size, self.ohem_nms_thresh
                )
                keep.append(idx + start)
            start += n
        if not keep:
            return torch.zeros(0, dtype=torch.int64, device=labels.device)
        return torch.cat(keep)


class RFCN(FasterRCNN):
    """R-FCN: a :class:`~.faster_rcnn.FasterRCNN` whose ``roi_heads`` are :class:`RFCNHeads`.

    Args and ``forward``: as :class:`~.faster_rcnn.FasterRCNN` (training: ``{"loss_rpn_cls",
    "loss_rpn_box", "loss_cls", "loss_box_reg"}``; eval: one dict of ``boxes [K, 4]``,
    ``labels [K]`` int64 in ``1..C``, ``scores [K]`` per image, in original-image pixels when
    ``orig_sizes`` is given).
    """

    def __init__(self, backbone: nn.Module, rpn: Any, roi_heads: RFCNHeads, *args, **kwargs):
        if not isinstance(roi_heads, RFCNHeads):
            raise TypeError(f"roi_heads must be RFCNHeads, got {type(roi_heads).__name__}")
        super().__init__(backbone, rpn, roi_heads, *args, **kwargs)


def rfcn(
    backbone: str = "resnet50",
    deform: str | DeformConfig | Sequence[DeformConfig] | None = None,
    ps_pool: str = "ps",
    num_classes: int = 80,
    pretrained_backbone: str | None = None,
    ohem: bool = False,
    *,
    frozen_bn: bool | None = None,
    freeze_at: int | None = None,
    base_channels: int = 64,
    reduce_channels: int = 1024,
    output_size: int = 7,
    class_agnostic_boxes: bool = True,
    offset_class_agnostic: bool = False,
    sampling_ratio: int = 2,
    anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_kwargs: Mapping[str, Any] | None = None,
    roi_heads_kwargs: Mapping[str, Any] | None = None,
) -> RFCN:
    """R-FCN in the v1 paper's layout, plain or deformable.

    Args:
        backbone, deform, num_classes, pretrained_backbone, frozen_bn, freeze_at,
            base_channels, anchor_sizes, aspect_ratios, rpn_kwargs: as
            :func:`~.faster_rcnn.faster_rcnn` (``num_classes``: foreground classes ``C``, labels
            ``1..C``, 0 the background; ``deform="v1"``:
            deformable last three 3x3 convs of conv5; ``"v2"``: modulated convs in conv3-conv5).
        ps_pool: ``"ps"`` (PS RoI pooling), ``"deform"`` (deformable PS RoI pooling) or
            ``"ps_align"`` (aligned PS pooling); see :mod:`.ps_head`.
        ohem: online hard example mining (128 hardest of all proposals after NMS 0.7) instead
            of 128 sampled RoIs.
        reduce_channels: width of the 1x1 conv on conv5 (1024).
        output_size: bins per side ``k`` (7).
        class_agnostic_boxes: ``k*k*4`` box maps (the papers); ``False``: ``k*k*4(C+1)``.
        offset_class_agnostic: ``"deform"``: one offset field pair for all classes instead of
            one per class (SPEC section 4).
        sampling_ratio: samples per bin and axis of ``"ps_align"`` / ``"deform"`` (2).
        roi_heads_kwargs: more arguments of :class:`RFCNHeads` (``sampler``,
            ``ohem_batch_size``, ``ohem_nms_thresh``, ``score_thresh``, ``detections_per_img``...).

    Example:
        >>> model = rfcn("resnet50", deform="v1", ps_pool="deform", num_classes=80)
        >>> opt = torch.optim.SGD(param_groups(model, 0.001, 1e-4), lr=0.001, momentum=0.9)
    """
    if ps_pool not in PS_POOL_KINDS:
        raise ValueError(f"ps_pool must be one of {PS_POOL_KINDS}, got {ps_pool!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive int (foreground classes), got {num_classes!r}"
        )
    if isinstance(reduce_channels, bool) or not isinstance(reduce_channels, int):
        raise TypeError(f"reduce_channels must be an int, got {reduce_channels!r}")
    if reduce_channels < 1:
        raise ValueError(f"reduce_channels must be positive (1024 in R-FCN), got {reduce_channels}")
    body = _backbone(backbone, deform, 16, frozen_bn, freeze_at, pretrained_backbone, base_channels)
    neck = ConvReduce(body.feature_info, "conv5", reduce_channels)
    infos = {i.name: i for i in neck.feature_info}
    rpn = _rpn(
        list(infos.values()), ["conv4"], (tuple(anchor_sizes),), aspect_ratios, num_classes,
        False, **dict(rpn_kwargs or {}),
    )  # fmt: skip
    head = PSScoreHead(
        reduce_channels, num_classes + 1, neck.out_name, infos[neck.out_name].stride,
        output_size, ps_pool, class_agnostic_boxes, offset_class_agnostic, sampling_ratio,
    )  # fmt: skip
    return RFCN(body, rpn, RFCNHeads(head, ohem=ohem, **dict(roi_heads_kwargs or {})), neck)
