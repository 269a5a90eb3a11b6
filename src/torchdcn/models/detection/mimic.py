"""R-CNN feature mimicking (v2 section 3.3, SPEC section 7): a training-only branch of Faster
R-CNN and Mask R-CNN.

For each image, up to ``rois_per_image`` (32) RoIs ``b`` are drawn at random into ``Omega`` from
the RPN's proposals plus the ground-truth boxes (the candidates the RoI head samples from),
labelled by the RoI head's own matcher (IoU >= 0.5 with a ground truth: foreground, its class;
below: background): ``rois="positive"`` (the paper's choice) draws among the foreground,
``"negative"`` among the background, ``"all"`` among both (v2 Table 3). Then:

- ``f_RCNN(b)``: the image patch of ``b`` is cut from the **normalised** input batch and resized
  to ``patch_size x patch_size`` (224 in the paper) with aligned bilinear RoIAlign (adaptive
  sampling, so large boxes are averaged, not aliased); the detector's own backbone (and neck)
  runs on the patches, its own RoI pooler pools each whole patch (box ``(0, 0, S, S)``: a
  14 x 14 map at stride 16 for 224) and its own 2fc head gives ``[|Omega|, D]``;
- ``f_FRCNN(b)``: the same pooler and 2fc head on the detector's feature maps at box ``b``. It is
  computed again for the boxes of ``Omega`` rather than read from the RoI head's batch: pooling
  and the 2fc head are deterministic, so this is the same function of the same maps for the same
  box, and the RoI head keeps its interface (Mask R-CNN's included);
- ``loss_mimic = mimic_weight * sum_{b in Omega} (1 - cos(f_RCNN(b), f_FRCNN(b)))`` with
  ``reduction="sum"`` (SPEC section 7 exactly: a sum over the RoIs of the batch, no normaliser);
  ``reduction="mean"`` divides by ``|Omega|`` instead. Gradients flow into both features (every
  module is shared; the paper stops none);
- ``loss_mimic_cls = cls_weight * CE(classifier(f_RCNN), labels)``, averaged over ``Omega``, with
  an unshared ``(C + 1)``-way linear classifier (:attr:`MimicBranch.classifier`, the branch's only
  parameters); ``cls_weight=0`` leaves it out (and the classifier unused).

Both weights are 0.1 (SPEC: "0.1 of the original ones"). Nothing of the branch runs at inference:
:class:`~.faster_rcnn.FasterRCNN` calls it only in training mode, after the losses of the
detector itself. A batch with no RoI to mimic gives zero losses that still reach the classifier
(DDP sees every parameter used).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import box_iou, roi_align
from .image_list import ImageList, batch_images
from .matcher import Matcher

MIMIC_ROIS = ("positive", "all", "negative")
MIMIC_REDUCTIONS = ("sum", "mean")


def mimic_cosine_loss(f_rcnn: Tensor, f_frcnn: Tensor, reduction: str = "sum") -> Tensor:
    """``sum_b (1 - cos(f_rcnn[b], f_frcnn[b]))`` (``"sum"``) or its mean over ``b`` (``"mean"``).

    Args:
        f_rcnn, f_frcnn (Tensor[K, D]): the two features of each of ``K`` RoIs.

    Returns:
        scalar Tensor (0 for ``K = 0``). ``cos`` uses ``eps = 1e-8`` on each norm (a zero vector
        has cosine 0 with anything, i.e. loss 1).
    """
    if f_rcnn.shape != f_frcnn.shape or f_rcnn.dim() != 2:
        raise ValueError(
            f"f_rcnn and f_frcnn must both be [K, D], got {list(f_rcnn.shape)} and "
            f"{list(f_frcnn.shape)}"
        )
    if reduction not in MIMIC_REDUCTIONS:
        raise ValueError(f"reduction must be one of {MIMIC_REDUCTIONS}, got {reduction!r}")
    cos = F.cosine_similarity(f_rcnn, f_frcnn, dim=1, eps=1e-8)
    loss = (1.0 - cos).sum()
    return loss / max(len(cos), 1) if reduction == "mean" else loss


class MimicBranch(nn.Module):
    """The R-CNN feature-mimicking branch (see the module docstring).

    Args:
        num_classes: classes of the unshared classifier including the background, ``C + 1``.
        representation_size: width ``D`` of the detector's 2fc features (1024).
        rois: ``"positive"`` (default, the paper's), ``"all"`` or ``"negative"``.
        rois_per_image: size of ``Omega`` per image (at most; 32).
        patch_size: side ``S`` of the resized patches (224 in the paper).
        mimic_weight, cls_weight: loss weights (0.1 each); ``cls_weight=0`` drops the
            classification loss.
        reduction: ``"sum"`` (SPEC) or ``"mean"`` of the cosine loss over ``Omega``.
        append_gt_boxes: also draw from the ground-truth boxes, as the RoI head does (True).
        generator: randomness of the draw (``None``: the global generator).

    Call ``branch(detector, batch, features, proposals, targets)`` in training: ``detector`` a
    :class:`~.faster_rcnn.FasterRCNN` (its ``features``, ``roi_heads.pooler``,
    ``roi_heads.head`` and ``roi_heads.matcher`` are used), ``batch`` the normalised
    :class:`~.image_list.ImageList` ``[N, 3, H, W]``, ``features`` its maps, ``proposals`` one
    ``[P_i, 4]`` per image, ``targets`` one dict per image (``boxes`` ``[G_i, 4]``, ``labels``
    ``[G_i]`` in ``1..C``). Returns ``{"loss_mimic"}`` and, unless ``cls_weight == 0``,
    ``{"loss_mimic_cls"}`` (scalars).
    """

    def __init__(
        self,
        num_classes: int,
        representation_size: int = 1024,
        rois: str = "positive",
        rois_per_image: int = 32,
        patch_size: int = 224,
        mimic_weight: float = 0.1,
        cls_weight: float = 0.1,
        reduction: str = "sum",
        append_gt_boxes: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if rois not in MIMIC_ROIS:
            raise ValueError(f"rois must be one of {MIMIC_ROIS}, got {rois!r}")
        if reduction not in MIMIC_REDUCTIONS:
            raise ValueError(f"reduction must be one of {MIMIC_REDUCTIONS}, got {reduction!r}")
        for name, value in (
            ("num_classes", num_classes),
            ("representation_size", representation_size),
            ("rois_per_image", rois_per_image),
            ("patch_size", patch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_classes < 2:
            raise ValueError(
                f"num_classes counts the background and must be >= 2, got {num_classes}"
            )
        if mimic_weight < 0 or cls_weight < 0:
            raise ValueError(
                f"mimic_weight and cls_weight must be >= 0, got {mimic_weight} and {cls_weight}"
            )
        self.rois, self.rois_per_image, self.patch_size = rois, rois_per_image, patch_size
        self.mimic_weight, self.cls_weight = float(mimic_weight), float(cls_weight)
        self.reduction, self.append_gt_boxes = reduction, append_gt_boxes
        self.generator = generator
        self.classifier = nn.Linear(representation_size, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    @torch.no_grad()
    def select(
        self,
        proposals: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        matcher: Matcher,
    ) -> tuple[list[Tensor], Tensor]:
        """``Omega``: per image ``[K_i, 4]`` boxes (``K_i <= rois_per_image``, drawn without
        replacement) and their labels ``[sum K_i]`` int64 (0 background, ``1..C``). Boxes under
        one pixel wide or tall are never drawn (no patch to cut)."""
        if len(targets) != len(proposals):
            raise ValueError(
                f"targets must hold one dict per image ({len(proposals)}), got {len(targets)}"
            )
        boxes_out, labels_out = [], []
        for i, (props, target) in enumerate(zip(proposals, targets)):
            if "boxes" not in target or "labels" not in target:
                raise ValueError(f"targets[{i}] must have 'boxes' and 'labels', got {list(target)}")
            gt = target["boxes"].to(props.dtype)
            cands = torch.cat([props.detach(), gt]) if self.append_gt_boxes else props.detach()
            if gt.shape[0]:
                matches = matcher(box_iou(gt, cands))
                labels = target["labels"].to(torch.int64)[matches.clamp(min=0)]
                labels = torch.where(matches >= 0, labels, torch.zeros_like(labels))
            else:
                matches = torch.full(
                    (len(cands),), Matcher.BELOW_LOW_THRESHOLD, device=cands.device
                )
                labels = torch.zeros(len(cands), dtype=torch.int64, device=cands.device)
            fg, bg = matches >= 0, matches == Matcher.BELOW_LOW_THRESHOLD
            ok = {"positive": fg, "negative": bg, "all": fg | bg}[self.rois]
            ok = ok & ((cands[:, 2:] - cands[:, :2]) >= 1).all(dim=1)
            index = torch.nonzero(ok).squeeze(1)
            order = torch.randperm(len(index), generator=self.generator).to(index.device)
            index = index[order[: self.rois_per_image]]
            boxes_out.append(cands[index])
            labels_out.append(labels[index])
        return boxes_out, torch.cat(labels_out)

    def crop_patches(self, batch: ImageList, boxes: Sequence[Tensor]) -> Tensor:
        """The patches of ``boxes`` (one ``[K_i, 4]`` per image, input pixels) cut from the
        normalised ``batch.tensors`` and resized: ``[sum K_i, 3, S, S]``, no gradient."""
        s = self.patch_size
        with torch.no_grad():
            return roi_align(
                batch.tensors, [b.to(batch.tensors.dtype) for b in boxes], (s, s),
                spatial_scale=1.0, sampling_ratio=0, aligned=True,
            )  # fmt: skip

    def rcnn_features(self, detector: Any, patches: Tensor) -> Tensor:
        """``f_RCNN``: the detector's backbone (+ neck), RoI pooler and 2fc head on whole patches
        ``[K, 3, S, S]`` -> ``[K, D]``."""
        s = self.patch_size
        padded = batch_images(list(patches), int(getattr(detector, "size_divisibility", 1)))
        maps = detector.features(padded)
        whole = patches.new_tensor([[0.0, 0.0, float(s), float(s)]])
        pooled = detector.roi_heads.pooler(maps, [whole] * len(patches))
        return detector.roi_heads.head(pooled)

    def forward(
        self,
        detector: Any,
        batch: ImageList,
        features: Mapping[str, Tensor],
        proposals: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]],
    ) -> dict[str, Tensor]:
        """``{"loss_mimic", "loss_mimic_cls"}``; see the class docstring."""
        boxes, labels = self.select(proposals, targets, detector.roi_heads.matcher)
        losses: dict[str, Tensor] = {}
        if labels.numel() == 0:
            zero = self.classifier.weight.sum() * 0.0
            losses["loss_mimic"] = zero
            if self.cls_weight > 0:
                losses["loss_mimic_cls"] = zero.clone()
            return losses
        heads = detector.roi_heads
        f_frcnn = heads.head(heads.pooler(features, boxes))
        f_rcnn = self.rcnn_features(detector, self.crop_patches(batch, boxes))
        f_rcnn, f_frcnn = f_rcnn.float(), f_frcnn.float()
        cosine = mimic_cosine_loss(f_rcnn, f_frcnn, self.reduction)
        losses["loss_mimic"] = self.mimic_weight * cosine
        if self.cls_weight > 0:
            logits = self.classifier(f_rcnn)
            losses["loss_mimic_cls"] = self.cls_weight * F.cross_entropy(logits.float(), labels)
        else:  # the classifier stays in the graph with weight 0 (DDP: no unused parameter)
            losses["loss_mimic"] = losses["loss_mimic"] + self.classifier.weight.sum() * 0.0
        return losses

    def extra_repr(self) -> str:
        return (
            f"rois={self.rois!r}, rois_per_image={self.rois_per_image}, "
            f"patch_size={self.patch_size}, mimic_weight={self.mimic_weight}, "
            f"cls_weight={self.cls_weight}, reduction={self.reduction!r}"
        )


def strip_mimic(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A detector state dict without the ``mimic.*`` entries: what a model built without the
    branch (e.g. for deployment) loads with ``strict=True``."""
    return {k: v for k, v in state_dict.items() if not k.startswith("mimic.")}
