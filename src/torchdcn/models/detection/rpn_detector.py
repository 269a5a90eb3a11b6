"""The class-aware RPN used as a detector on its own (v1 paper section 2.3 / Table 1 "class-aware
RPN": the RPN's 2-way objectness becomes (C+1)-way and its boxes class-specific).

Every anchor is a candidate detection: its softmax gives a score per class and its class-specific
deltas a box per class. The ``pre_nms_top_n["testing"]`` anchors of highest objectness
(``1 - p(background)``) per image are kept, and :func:`.postprocess.select_detections` does the
rest as for the Fast R-CNN head (score threshold, clip, per-class NMS, top detections, mapping
back to the original image size).

Training matches anchors as a one-stage detector (SSD, of which the paper calls this model a
simplified version), not as a proposal generator: :func:`detector_matcher` labels every anchor
(IoU >= 0.5 with a ground truth: its class; below: background; plus each ground truth's best
anchors), where the RPN's ``Matcher(0.7, 0.3)`` leaves the anchors between 0.3 and 0.7 out of
the loss. Faster R-CNN's second stage re-classifies whatever such anchors propose, but here they
are the detections: left untrained, they came out with confident scores of arbitrary classes
and boxes (on 8 overfit COCO128 images every false positive ranked above a true positive came
from one of them, and AP50 stalled at 0.82-0.89 with a training loss of 0.001).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .image_list import IMAGENET_MEAN, IMAGENET_STD, ImageList, normalize_and_batch
from .inputs import check_orig_sizes, check_target_list, check_targets, targets_checked
from .matcher import Matcher
from .postprocess import check_postprocess_args, select_detections
from .rpn import RegionProposalNetwork

DETECTOR_IOU_THRESHOLD = 0.5


def detector_matcher(iou_threshold: float = DETECTOR_IOU_THRESHOLD) -> Matcher:
    """The anchor matcher of a class-aware RPN trained as a detector: positive at IoU
    ``>= iou_threshold``, background below it (no ignored band), each ground truth's best anchors
    positive too (so that every box has one, however small or odd).

    Example:
        >>> detector_matcher()(torch.tensor([[0.8, 0.55, 0.45, 0.1], [0.0, 0.0, 0.2, 0.3]]))
        tensor([ 0,  0, -1,  1])
    """
    return Matcher(iou_threshold, iou_threshold, allow_low_quality_matches=True)


def class_aware_detections(
    rpn: RegionProposalNetwork,
    images: ImageList,
    features: Mapping[str, Tensor],
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    orig_sizes: Sequence[tuple[int, int]] | None = None,
    min_size: float = 1e-2,
) -> list[dict[str, Tensor]]:
    """Detections of a class-aware RPN.

    Args:
        rpn (RegionProposalNetwork): with ``class_aware=True`` (``C`` foreground classes).
        images (ImageList): the padded batch ``[N, 3, H, W]`` and its image sizes.
        features (dict[str, Tensor[N, C_in, H_l, W_l]]): the backbone maps the RPN reads.
        score_thresh, nms_thresh, detections_per_img, min_size: as for the box head
            (:func:`.postprocess.select_detections`).
        orig_sizes (list[tuple[int, int]], optional): ``(h, w)`` of each original image; the
            boxes are mapped back to it. ``None``: boxes stay in input pixels.

    Returns:
        list[dict]: per image ``{"boxes": Tensor[D, 4], "labels": Tensor[D] int64 in [1, C],
        "scores": Tensor[D]}``, by decreasing score, ``D <= detections_per_img``.
    """
    if not isinstance(rpn, RegionProposalNetwork) or not rpn.class_aware:
        raise ValueError("rpn must be a RegionProposalNetwork built with class_aware=True")
    if orig_sizes is not None and len(orig_sizes) != len(images):
        raise ValueError(
            f"orig_sizes must give one (h, w) per image ({len(images)}), got {len(orig_sizes)}"
        )
    anchors, logits, deltas, _ = rpn.predict(images, features)
    top_n = rpn.pre_nms_top_n["testing"]
    num_classes = rpn.num_classes
    results = []
    for i, size in enumerate(images.image_sizes):
        probs = torch.softmax(logits[i].float(), dim=1)  # [T, C + 1]
        k = min(top_n, probs.shape[0])
        idx = (1.0 - probs[:, 0]).topk(k).indices
        boxes = rpn.box_coder.decode(deltas[i, idx].float(), anchors[idx].float())
        results.append(
            select_detections(
                boxes.view(k, num_classes, 4),
                probs[idx, 1:],
                size,
                score_thresh=score_thresh,
                nms_thresh=nms_thresh,
                detections_per_img=detections_per_img,
                min_size=min_size,
                orig_size=None if orig_sizes is None else orig_sizes[i],
            )
        )
    return results


class RPNDetector(nn.Module):
    """Backbone + class-aware RPN, with the same call contract as the Faster R-CNN model.

    Args:
        backbone (nn.Module): ``[N, 3, H, W] -> dict[str, Tensor]`` with ``feature_info`` and
            ``size_divisibility`` (e.g. ``resnet50(features_only=True, output_stride=16)``).
        rpn (RegionProposalNetwork): ``class_aware=True``; its ``in_features`` must be maps of
            the backbone (or of the neck). Train it with ``matcher=detector_matcher()`` (the
            ``rpn_detector`` preset does), see the module docstring.
        neck (nn.Module, optional): ``dict[str, Tensor] -> dict[str, Tensor]`` applied to the
            backbone's maps, with its own ``feature_info`` (e.g. :class:`~.conv_reduce.
            ConvReduce`: v1's 1x1 conv reducing conv5 to 1024 channels).
        score_thresh, nms_thresh, detections_per_img: post-processing (see
            :func:`class_aware_detections`): thresholds in ``[0, 1]``, a positive int.
        pixel_mean, pixel_std (tuple[float, float, float]): normalisation of ``[0, 1]`` inputs.
    """

    def __init__(
        self,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        neck: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(rpn, RegionProposalNetwork) or not rpn.class_aware:
            raise ValueError("rpn must be a RegionProposalNetwork built with class_aware=True")
        source = backbone if neck is None else neck
        names = [info.name for info in getattr(source, "feature_info", [])]
        missing = [name for name in rpn.in_features if name not in names]
        if missing:
            raise ValueError(
                f"the RPN reads {list(rpn.in_features)} but the "
                f"{'backbone' if neck is None else 'neck'}'s feature_info names {names}"
            )
        if len(pixel_mean) != 3 or len(pixel_std) != 3 or min(pixel_std) <= 0:
            raise ValueError(
                f"pixel_mean and pixel_std must be 3 numbers (std > 0), got {pixel_mean!r} and "
                f"{pixel_std!r}"
            )
        self.backbone = backbone
        self.neck = neck
        self.rpn = rpn
        self.score_thresh, self.nms_thresh, self.detections_per_img = check_postprocess_args(
            score_thresh, nms_thresh, detections_per_img
        )
        self.size_divisibility = int(getattr(backbone, "size_divisibility", 1))
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        """Foreground classes ``C``."""
        return self.rpn.num_classes

    def preprocess(self, images: Sequence[Tensor]) -> ImageList:
        """Normalise ``[0, 1]`` images ``[3, H_i, W_i]`` and pad them into an :class:`ImageList`."""
        return normalize_and_batch(images, self.pixel_mean, self.pixel_std, self.size_divisibility)

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]] | None = None,
        orig_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training, detections in eval.

        Args:
            images (list[Tensor[3, H_i, W_i]]): RGB in ``[0, 1]``, already resized (a list:
                :func:`~torchdcn.data.collate.list_collate` batches them so).
            targets (list[dict], training): ``"boxes"`` Tensor[G_i, 4] float in input pixels and
                ``"labels"`` Tensor[G_i] integer in ``[1, C]``, checked by
                :func:`~.inputs.check_targets` as for every detector.
            orig_sizes (list[tuple[int, int]], eval, optional): original ``(h, w)`` per image.

        Returns:
            training: ``{"loss_rpn_cls": Tensor[], "loss_rpn_box": Tensor[]}``; eval: one dict
            per image ``{"boxes": [D, 4], "labels": [D] int64 in 1..C, "scores": [D]}``.
        """
        if self.training and targets is None:
            raise ValueError("targets must be given in training mode (one dict per image)")
        batch = self.preprocess(images)
        if targets is not None:
            check_target_list(targets, len(batch))
        if self.training:
            check_targets(targets, batch.image_sizes, self.num_classes)
        orig_sizes = check_orig_sizes(orig_sizes, len(batch))
        features = self.backbone(batch.tensors)
        if self.neck is not None:
            features = self.neck(features)
        if self.training:
            # No proposals are needed: the losses alone (skips the top-k and NMS).
            anchors, logits, deltas, _ = self.rpn.predict(batch, features)
            with targets_checked():  # compute_losses skips its own check of the targets
                return self.rpn.compute_losses(anchors, logits, deltas, targets, batch.image_sizes)
        return class_aware_detections(
            self.rpn,
            batch,
            features,
            score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img,
            orig_sizes=orig_sizes,
        )
