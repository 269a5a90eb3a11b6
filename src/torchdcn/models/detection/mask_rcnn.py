"""Mask R-CNN (plain and with Deformable ConvNets v1/v2): Faster R-CNN plus a mask branch.

- :class:`MaskRoIHeads` extends :class:`~.box_head.RoIHeads` with the mask branch: its own RoI
  pooler (14 x 14), :class:`~.mask_head.MaskHead` (4 conv + deconv -> 28 x 28) and
  :class:`~.mask_head.MaskPredictor` (one logit map per class). Training: the foreground RoIs of
  the box head's sample (same sample, same matching) get the ground-truth mask of the box they
  are matched to (the highest-IoU ground truth, as :class:`~.matcher.Matcher` assigns it),
  cropped to the RoI and resized to 28 x 28 (:mod:`.mask_targets`), and ``loss_mask`` is the
  binary cross-entropy on the map of their own class (:func:`~.mask_head.mask_loss`). Eval:
  the detections' boxes (input pixels) are pooled again, the map of each detection's class goes
  through a sigmoid and is pasted into the image (:mod:`.paste_masks`): ``"masks"``
  ``[K, 1, H, W]`` float in ``[0, 1]``, in the original image when ``orig_sizes`` is given.
- :class:`MaskRCNN`: :class:`~.faster_rcnn.FasterRCNN` with a :class:`MaskRoIHeads`; same
  forward contract, plus ``"loss_mask"`` in training and ``"masks"`` in eval.
- :func:`mask_rcnn`: the preset. As the v2 paper (section 4.1), with ``deform="v2"`` both the
  box head's 7 x 7 and the mask head's 14 x 14 RoI poolings are modulated deformable RoI
  poolings (``"mdeform"``), RoIAlign otherwise; both can be chosen explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...ops import box_iou, clip_boxes_to_image
from ..backbones import DeformConfig
from .box_head import FastRCNNPredictor, RoIHeads, _at_least_float32
from .faster_rcnn import FasterRCNN, faster_rcnn
from .inputs import check_target, checked_by_caller
from .mask_head import MaskHead, MaskPredictor, mask_loss, select_class_masks
from .mask_targets import mask_targets
from .paste_masks import paste_masks_in_image
from .poolers import POOLER_KINDS, RoIPooler
from .postprocess import rescale_boxes


class MaskRoIHeads(RoIHeads):
    """:class:`~.box_head.RoIHeads` with a mask branch (module docstring).

    Args:
        pooler, head, predictor: the box branch, as :class:`~.box_head.RoIHeads`.
        mask_pooler: a :class:`~.poolers.RoIPooler` with ``output_size`` ``S`` (14).
        mask_head: :class:`~.mask_head.MaskHead`: ``[R, C_in, S, S] -> [R, D, M, M]``.
        mask_predictor: :class:`~.mask_head.MaskPredictor`: ``-> [R, C, M, M]``, ``C`` the
            foreground classes (``predictor.num_classes - 1``).
        **kwargs: ``matcher``, ``sampler``, ``box_coder``, ``score_thresh``... of
            :class:`~.box_head.RoIHeads`.

    Shape:
        As :class:`~.box_head.RoIHeads`; in training each target dict also needs ``"masks"``
        ``[G_i, H_i, W_i]`` (0/1, one per box, ``(H_i, W_i) = image_sizes[i]``: the size of the
        image as given to the model, in whose pixels the boxes are) and the losses add
        ``"loss_mask"``; in eval each detection dict adds ``"masks"`` ``[K, 1, H, W]`` float in
        ``[0, 1]`` (``(H, W)`` = ``orig_sizes[i]`` if given, else ``image_sizes[i]``).
    """

    needs_masks = True

    def __init__(
        self,
        pooler: RoIPooler,
        head: nn.Module,
        predictor: FastRCNNPredictor,
        mask_pooler: RoIPooler,
        mask_head: MaskHead,
        mask_predictor: MaskPredictor,
        **kwargs: Any,
    ) -> None:
        super().__init__(pooler, head, predictor, **kwargs)
        ph, pw = mask_pooler.output_size
        if ph != pw:
            raise ValueError(f"mask_pooler must pool square RoI features, got {(ph, pw)}")
        if mask_predictor.num_classes != predictor.num_classes - 1:
            raise ValueError(
                f"mask_predictor must have one map per foreground class "
                f"({predictor.num_classes - 1}), got {mask_predictor.num_classes}"
            )
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor

    def mask_logits(self, features: Mapping[str, Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """``[sum R_i, C, M, M]`` mask logits of the boxes ``[R_i, 4]`` (input pixels)."""
        pooled = self.mask_pooler(features, boxes)
        return _at_least_float32(self.mask_predictor(self.mask_head(pooled)))

    def _mask_training_loss(
        self,
        features: Mapping[str, Tensor],
        rois: Sequence[Tensor],
        labels: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]],
    ) -> Tensor:
        boxes, gt_masks, gt_index, fg_labels = [], [], [], []
        checked = checked_by_caller()  # by the detector, which calls this inside targets_checked()
        for i, (props, lab, target) in enumerate(
            zip(rois, labels.split([len(r) for r in rois]), targets)
        ):
            if not checked:
                check_target(i, target, self.num_classes - 1, tuple(image_sizes[i]))
            gt_boxes, masks = target["boxes"], target["masks"]
            fg = torch.nonzero(lab > 0).squeeze(1)
            pos = props[fg]
            match = (
                box_iou(gt_boxes.to(pos.dtype), pos).argmax(dim=0)
                if len(pos)
                else torch.zeros(0, dtype=torch.int64, device=pos.device)
            )
            boxes.append(pos)
            gt_masks.append(masks)
            gt_index.append(match)
            fg_labels.append(lab[fg])
        if sum(len(b) for b in boxes) == 0:  # no foreground: a zero that keeps the graph
            return sum(p.sum() for p in self.mask_predictor.parameters()) * 0.0
        target = mask_targets(boxes, gt_masks, gt_index, self.mask_size)
        logits = self.mask_logits(features, boxes)
        return mask_loss(logits, torch.cat(fg_labels), target)

    @property
    def mask_size(self) -> int:
        """``M`` of the mask logits: twice the (square) pooled size (2x2 stride-2 deconv)."""
        return 2 * self.mask_pooler.output_size[0]

    def forward(
        self,
        features: Mapping[str, Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[Mapping[str, Tensor]] | None = None,
        orig_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """``(detections, losses)``; see the class docstring."""
        self.check_inputs(proposals, image_sizes, targets, orig_sizes)
        if self.training:
            rois, labels, reg_targets, class_logits, box_deltas = self.training_outputs(
                features, proposals, targets
            )
            losses = self.loss(class_logits, box_deltas, labels, reg_targets)
            losses["loss_mask"] = self._mask_training_loss(
                features, rois, labels, targets, image_sizes
            )
            return [], losses
        # boxes in input pixels first: the masks are computed there, then boxes and masks are
        # rescaled / pasted at orig_sizes together
        detections = self.detect(features, proposals, image_sizes, None)
        self._add_masks(features, detections, image_sizes, orig_sizes)
        return detections, {}

    def _add_masks(
        self,
        features: Mapping[str, Tensor],
        detections: list[dict[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]],
        orig_sizes: Sequence[tuple[int, int]] | None,
    ) -> None:
        """Add ``"masks"`` to each detection dict (boxes in input pixels) and move the boxes to
        the original size when given (as :func:`~.postprocess.select_detections` does)."""
        boxes = [d["boxes"] for d in detections]
        counts = [len(b) for b in boxes]
        if sum(counts):
            logits = self.mask_logits(features, boxes)
            labels = torch.cat([d["labels"] for d in detections])
            probs = select_class_masks(logits, labels).sigmoid().split(counts)
        else:
            m = self.mask_size
            probs = [boxes[0].new_zeros((0, m, m)) for _ in detections]
        for i, (d, p) in enumerate(zip(detections, probs)):
            size = tuple(image_sizes[i])
            if orig_sizes is not None:
                orig = tuple(orig_sizes[i])
                d["boxes"] = clip_boxes_to_image(rescale_boxes(d["boxes"], size, orig), orig)
                size = orig
            d["masks"] = paste_masks_in_image(p, d["boxes"], size)


class MaskRCNN(FasterRCNN):
    """Backbone (+ neck) + RPN + box and mask heads (:class:`MaskRoIHeads`).

    Arguments and ``forward(images, targets=None, orig_sizes=None)`` as
    :class:`~.faster_rcnn.FasterRCNN`, with: ``targets`` (training) also holding ``"masks"``
    ``[G_i, H_i, W_i]`` uint8 0/1, ``(H_i, W_i)`` the size of ``images[i]`` as given to the model
    (:class:`~torchdcn.data.CocoDetection` with ``masks=True`` resizes them with the image; a
    ``TypeError`` / ``ValueError`` names ``targets[i]['masks']`` otherwise); training returns
    ``{"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box_reg", "loss_mask"}``; eval adds
    ``"masks"`` ``[K, 1, H, W]`` float in ``[0, 1]`` to each detection dict, ``(H, W)`` the
    original image size if ``orig_sizes`` is given, else the input image's (binarise at 0.5 for
    a COCO mask).
    """

    def __init__(self, backbone: nn.Module, rpn: Any, roi_heads: MaskRoIHeads, *args, **kwargs):
        if not isinstance(roi_heads, MaskRoIHeads):
            raise TypeError(
                f"roi_heads must be a MaskRoIHeads (box and mask branches), got "
                f"{type(roi_heads).__name__}"
            )
        super().__init__(backbone, rpn, roi_heads, *args, **kwargs)
        names = [i.name for i in self.feature_info]
        if any(n not in names for n in roi_heads.mask_pooler.feature_names):
            raise ValueError(
                f"the mask pooler reads {list(roi_heads.mask_pooler.feature_names)} but the "
                f"features are {names}"
            )


def mask_rcnn(
    backbone: str = "resnet50",
    deform: str | DeformConfig | Sequence[DeformConfig] | None = None,
    roi_pool: str | None = None,
    mask_pool: str | None = None,
    num_classes: int = 80,
    fpn: bool = False,
    pretrained_backbone: str | None = None,
    *,
    base_channels: int = 64,
    mask_resolution: int = 14,
    mask_channels: int = 256,
    mask_convs: int = 4,
    deform_hidden: int = 1024,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN in the papers' layout (or with FPN), plain or deformable.

    Args:
        backbone, deform, num_classes, fpn, pretrained_backbone, base_channels, deform_hidden:
            as :func:`~.faster_rcnn.faster_rcnn` (``num_classes``: foreground classes ``C``,
            labels ``1..C``, 0 the background, one mask map per class; ``base_channels``:
            backbone width, 64 the published ResNets; the box and mask heads read the widths
            from ``feature_info``).
        roi_pool: the box head's 7 x 7 pooling (``"roi_pool"``, ``"roi_align"``, ``"deform"``,
            ``"mdeform"``); ``None``: ``"mdeform"`` for ``deform="v2"``, else ``"roi_align"``.
        mask_pool: the mask head's 14 x 14 pooling, same choices and default (v2 section 4.1:
            both are modulated deformable RoI poolings in the v2 network).
        mask_resolution: pooled size ``S`` of the mask branch (14; masks are ``2 S``).
        mask_channels, mask_convs: width and number of 3x3 convs of the mask head (256, 4).
        **kwargs: the other keyword arguments of :func:`~.faster_rcnn.faster_rcnn`
            (``frozen_bn``, ``reduce_channels``, ``rpn_kwargs``, ``roi_heads_kwargs``...).

    The mask pooler reads the box pooler's maps (``conv5`` reduced in the papers' layout,
    P2-P5 with FPN); a deformable mask pooler has its own offset branch.

    Example:
        >>> model = mask_rcnn("resnet50", deform="v2", num_classes=80)  # both poolings mdeform
        >>> model.roi_heads.pooler.kind, model.roi_heads.mask_pooler.kind
        ('mdeform', 'mdeform')
    """
    default = "mdeform" if deform == "v2" else "roi_align"
    roi_pool = default if roi_pool is None else roi_pool
    mask_pool = default if mask_pool is None else mask_pool
    for name, value in (("roi_pool", roi_pool), ("mask_pool", mask_pool)):
        if value not in POOLER_KINDS:
            raise ValueError(f"{name} must be one of {POOLER_KINDS} or None, got {value!r}")
    if (
        isinstance(mask_resolution, bool)
        or not isinstance(mask_resolution, int)
        or (mask_resolution < 1)
    ):
        raise ValueError(f"mask_resolution must be a positive int, got {mask_resolution!r}")
    base = faster_rcnn(
        backbone, deform, roi_pool, num_classes, fpn, pretrained_backbone,
        base_channels=base_channels, deform_hidden=deform_hidden, **kwargs,
    )  # fmt: skip
    box = base.roi_heads
    mask_pooler = RoIPooler(
        mask_pool, box.pooler.feature_names, box.pooler.strides, box.pooler.channels,
        output_size=mask_resolution, sampling_ratio=box.pooler.sampling_ratio,
        aligned=box.pooler.aligned, canonical_scale=box.pooler.canonical_scale,
        canonical_level=box.pooler.canonical_level, deform_hidden=deform_hidden,
    )  # fmt: skip
    head = MaskHead(box.pooler.channels, mask_channels, mask_convs)
    heads = MaskRoIHeads(
        box.pooler, box.head, box.predictor, mask_pooler, head,
        MaskPredictor(head.out_channels, num_classes),
        matcher=box.matcher, sampler=box.sampler, box_coder=box.box_coder,
        score_thresh=box.score_thresh, nms_thresh=box.nms_thresh,
        detections_per_img=box.detections_per_img, box_loss_beta=box.box_loss_beta,
        generator=box.generator,
    )  # fmt: skip
    model = MaskRCNN(
        base.backbone, base.rpn, heads, base.neck,
        pixel_mean=base.pixel_mean.flatten().tolist(), pixel_std=base.pixel_std.flatten().tolist(),
    )  # fmt: skip
    # keep whatever else the Faster R-CNN preset attached (e.g. a feature-mimicking branch)
    for name, child in base.named_children():
        if name != "roi_heads" and getattr(model, name, None) is None:
            setattr(model, name, child)
    return model
