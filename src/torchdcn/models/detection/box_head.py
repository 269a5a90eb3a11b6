"""The Fast R-CNN box head: RoI pooling -> 2 fc 1024 -> class scores and class-specific box deltas
(SPEC sections 5-6), its training targets and losses, and its detections.

- :class:`TwoFCHead`: ``[R, C, 7, 7]`` pooled features -> two ReLU fcs -> ``[R, 1024]``.
- :class:`FastRCNNPredictor`: ``[R, 1024]`` -> ``(C + 1)``-way logits and ``4 (C + 1)`` deltas.
- :class:`RoIHeads`: pooler + head + predictor. In training, ground-truth boxes join the
  proposals, each RoI is matched to a ground truth at IoU 0.5 (foreground: its class; below:
  background), 512 RoIs per image are sampled with at most 25 % foreground, and the losses are the
  cross-entropy over the sampled RoIs and a smooth-L1 (Detectron's ``beta = 1``) on the deltas of
  each foreground RoI's true class, encoded with weights ``(10, 10, 5, 5)``, divided by the number
  of sampled RoIs. In eval it decodes the boxes and post-processes them
  (:mod:`.postprocess`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import box_iou
from .box_coder import BoxCoder
from .inputs import check_target, checked_by_caller
from .losses import smooth_l1_loss
from .matcher import Matcher
from .poolers import RoIPooler
from .postprocess import check_postprocess_args, postprocess_detections
from .sampler import BalancedSampler


def _at_least_float32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class TwoFCHead(nn.Module):
    """Flatten, fc, ReLU, fc, ReLU: the papers' "2fc" RoI head.

    Args:
        in_channels: channels ``C`` of the pooled features.
        resolution (int or (int, int)): pooled size ``(ph, pw)`` (7).
        representation_size: width of both fcs (1024).

    Shape:
        ``x``: ``[R, C, ph, pw]`` -> ``[R, representation_size]``.
    """

    def __init__(
        self,
        in_channels: int,
        resolution: int | tuple[int, int] = 7,
        representation_size: int = 1024,
    ) -> None:
        super().__init__()
        ph, pw = (resolution, resolution) if isinstance(resolution, int) else resolution
        if in_channels <= 0 or representation_size <= 0 or ph <= 0 or pw <= 0:
            raise ValueError(
                f"in_channels, resolution and representation_size must be positive, got "
                f"{in_channels}, {(ph, pw)}, {representation_size}"
            )
        self.in_features = in_channels * ph * pw
        self.fc6 = nn.Linear(self.in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_channels = representation_size

    def forward(self, x: Tensor) -> Tensor:
        """``[R, C, ph, pw]`` -> ``[R, representation_size]``."""
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"x must flatten to [R, {self.in_features}], got {list(x.shape)}")
        return F.relu(self.fc7(F.relu(self.fc6(x))))


class FastRCNNPredictor(nn.Module):
    """Class scores and class-specific box deltas.

    Args:
        in_channels: width of the RoI representation (1024).
        num_classes: classes including the background, ``C + 1``.

    Shape:
        ``x``: ``[R, in_channels]`` -> ``(cls_score [R, C + 1], bbox_pred [R, 4 (C + 1)])``; column
        ``k`` of the scores and columns ``4k .. 4k + 3`` of the deltas belong to class ``k``
        (0 = background).

    Initialisation (Detectron): Gaussian weights of std 0.01 (scores) and 0.001 (deltas), zero
    biases.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                f"num_classes counts the background and must be >= 2, got {num_classes}"
            )
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[R, in_channels]`` -> ``([R, C + 1], [R, 4 (C + 1)])``."""
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """The Fast R-CNN half of Faster R-CNN: pooled RoIs -> losses or detections.

    Args:
        pooler: a :class:`~.poolers.RoIPooler` (its ``kind`` is the RoI pooling choice).
        head: :class:`TwoFCHead` (or any ``[R, C, ph, pw] -> [R, D]`` module).
        predictor: :class:`FastRCNNPredictor` (``num_classes`` including the background).
        matcher: RoI-to-ground-truth matching (IoU 0.5: foreground at or above, else background).
        sampler: RoIs per image and foreground fraction (512, 0.25).
        box_coder: delta weights ``(10, 10, 5, 5)``.
        score_thresh, nms_thresh, detections_per_img: post-processing (0.05, 0.5, 100):
            thresholds in ``[0, 1]``, a positive int (:func:`.postprocess.check_postprocess_args`).
        box_loss_beta: smooth-L1 transition point of the box loss (1.0, Detectron; 0 = L1).
        generator: randomness of the RoI sampling (``None``: the global generator).

    Shape:
        ``forward(features, proposals, image_sizes, targets=None, orig_sizes=None)``:
        ``features`` a mapping of ``[N, C, H_l, W_l]`` maps holding ``pooler.feature_names``;
        ``proposals`` one ``[P_i, 4]`` per image (input pixels); ``image_sizes`` ``(h, w)`` per
        image without padding; ``targets`` in training one dict per image with ``boxes``
        ``[G_i, 4]`` float and ``labels`` ``[G_i]`` integer in ``1..C`` (checked by
        :func:`.inputs.check_target`); ``orig_sizes`` optional
        ``(h, w)`` of the original images. Returns ``(detections, losses)``: in training ``[]``
        and ``{"loss_cls": [], "loss_box_reg": []}`` (scalars), in eval one dict per image
        (:mod:`.postprocess` format) and ``{}``.
    """

    #: whether training targets need ``"masks"`` (:class:`~.mask_rcnn.MaskRoIHeads`)
    needs_masks: bool = False

    def __init__(
        self,
        pooler: RoIPooler,
        head: nn.Module,
        predictor: FastRCNNPredictor,
        matcher: Matcher | None = None,
        sampler: BalancedSampler | None = None,
        box_coder: BoxCoder | None = None,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        box_loss_beta: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.pooler = pooler
        self.head = head
        self.predictor = predictor
        self.matcher = matcher if matcher is not None else Matcher(0.5, 0.5, False)
        self.sampler = sampler if sampler is not None else BalancedSampler(512, 0.25)
        self.box_coder = box_coder if box_coder is not None else BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.score_thresh, self.nms_thresh, self.detections_per_img = check_postprocess_args(
            score_thresh, nms_thresh, detections_per_img
        )
        self.box_loss_beta = box_loss_beta
        self.generator = generator

    @property
    def num_classes(self) -> int:
        """Classes including the background, ``C + 1``."""
        return self.predictor.num_classes

    @torch.no_grad()
    def select_training_samples(
        self, proposals: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Sampled RoIs per image ``[S_i, 4]``, their labels ``[S]`` int64 (0 = background) and
        regression targets ``[S, 4]`` (zeros for the background), ``S = sum S_i``."""
        if len(targets) != len(proposals):
            raise ValueError(
                f"targets must hold one dict per image ({len(proposals)}), got {len(targets)}"
            )
        rois, labels, matched_gt = [], [], []
        checked = checked_by_caller()  # by the detector, which calls this inside targets_checked()
        for i, (props, target) in enumerate(zip(proposals, targets)):
            if not checked:
                check_target(i, target, self.num_classes - 1)
            gt_boxes = target["boxes"].to(props.dtype)
            gt_labels = target["labels"].to(torch.int64)
            props = torch.cat([props.detach(), gt_boxes])
            matches = self.matcher(box_iou(gt_boxes, props))
            if gt_boxes.shape[0] == 0:
                lab = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                gt_of = torch.zeros_like(props)
            else:
                lab = gt_labels[matches.clamp(min=0)]
                gt_of = gt_boxes[matches.clamp(min=0)]
                lab[matches == Matcher.BELOW_LOW_THRESHOLD] = 0
                lab[matches == Matcher.BETWEEN_THRESHOLDS] = -1
            rois.append(props)
            labels.append(lab)
            matched_gt.append(gt_of)
        pos, neg = self.sampler(labels, self.generator)
        sampled_rois, sampled_labels, reg_targets = [], [], []
        for props, lab, gt_of, p, n in zip(rois, labels, matched_gt, pos, neg):
            keep = torch.nonzero(p | n).squeeze(1)
            props, lab, gt_of = props[keep], lab[keep], gt_of[keep]
            lab = torch.where(p[keep], lab, torch.zeros_like(lab))
            reg = torch.zeros_like(props)
            fg = lab > 0
            if fg.any():
                reg[fg] = self.box_coder.encode(gt_of[fg], props[fg])
            sampled_rois.append(props)
            sampled_labels.append(lab)
            reg_targets.append(reg)
        return sampled_rois, torch.cat(sampled_labels), torch.cat(reg_targets)

    def loss(
        self, class_logits: Tensor, box_deltas: Tensor, labels: Tensor, reg_targets: Tensor
    ) -> dict[str, Tensor]:
        """``{"loss_cls", "loss_box_reg"}`` from ``[S, C + 1]`` logits, ``[S, 4 (C + 1)]`` deltas,
        ``[S]`` labels and ``[S, 4]`` targets; both normalised by ``S`` (0 when ``S = 0``)."""
        count = max(labels.numel(), 1)
        loss_cls = F.cross_entropy(class_logits, labels, reduction="sum") / count
        fg = torch.nonzero(labels > 0).squeeze(1)
        deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[fg, labels[fg]]
        loss_box = smooth_l1_loss(deltas, reg_targets[fg], beta=self.box_loss_beta, reduction="sum")
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box / count}

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
            _, labels, reg_targets, class_logits, box_deltas = self.training_outputs(
                features, proposals, targets
            )
            return [], self.loss(class_logits, box_deltas, labels, reg_targets)
        return self.detect(features, proposals, image_sizes, orig_sizes), {}

    def check_inputs(
        self,
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[Mapping[str, Tensor]] | None,
        orig_sizes: Sequence[tuple[int, int]] | None,
    ) -> None:
        """``ValueError`` unless there is one proposal set (and ``orig_sizes`` entry) per image
        and, in training, targets."""
        if len(proposals) != len(image_sizes):
            raise ValueError(
                f"proposals and image_sizes must have one entry per image, got "
                f"{len(proposals)} and {len(image_sizes)}"
            )
        if orig_sizes is not None and len(orig_sizes) != len(image_sizes):
            raise ValueError(
                f"orig_sizes must have one (h, w) per image ({len(image_sizes)}), got "
                f"{len(orig_sizes)}"
            )
        if self.training and targets is None:
            raise ValueError("targets are required in training mode (got None)")

    def training_outputs(
        self,
        features: Mapping[str, Tensor],
        proposals: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]],
    ) -> tuple[list[Tensor], Tensor, Tensor, Tensor, Tensor]:
        """Sample the RoIs and run the head on them: ``(rois per image, labels [R],
        regression targets [R, 4], class_logits [R, C+1], box_deltas [R, 4(C+1)])``, the logits
        and deltas at least float32."""
        rois, labels, reg_targets = self.select_training_samples(proposals, targets)
        class_logits, box_deltas = self.predictor(self.head(self.pooler(features, rois)))
        # losses, decoding and NMS in float32 even under autocast (boxes need the precision)
        class_logits, box_deltas = _at_least_float32(class_logits), _at_least_float32(box_deltas)
        return rois, labels, reg_targets, class_logits, box_deltas

    def detect(
        self,
        features: Mapping[str, Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        orig_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Scored, decoded, NMS-ed detections of ``proposals`` (in ``orig_sizes`` pixels when
        given, else input pixels)."""
        class_logits, box_deltas = self.predictor(self.head(self.pooler(features, proposals)))
        class_logits, box_deltas = _at_least_float32(class_logits), _at_least_float32(box_deltas)
        boxes = self.box_coder.decode(box_deltas, torch.cat(list(proposals)))
        return postprocess_detections(
            class_logits, boxes, [len(p) for p in proposals], image_sizes, self.score_thresh,
            self.nms_thresh, self.detections_per_img, orig_sizes,
        )  # fmt: skip
