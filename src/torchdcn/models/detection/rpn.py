"""Region proposal network (Faster R-CNN), plain or class-aware (v1 paper section 2.3).

The head slides a 3x3 conv over each feature map and predicts, for every anchor of every cell,
``K`` classification logits and box deltas:

- plain RPN: ``K = 1`` objectness logit (sigmoid, binary cross-entropy) and one class-agnostic set
  of 4 deltas;
- class-aware RPN: ``K = C + 1`` logits (softmax over background + ``C`` classes, cross-entropy)
  and ``C`` class-specific sets of 4 deltas (background has none).

Proposals: per level, the ``pre_nms_top_n`` anchors of highest objectness (plain: the sigmoid;
class-aware: ``1 - p(background)``, boxed by the deltas of the most likely class) are decoded,
clipped to the image, empty, non-finite and ``min_size`` boxes dropped, NMS at ``nms_thresh``
(each level on its own), and the ``post_nms_top_n`` best kept, sorted by decreasing score.

Training: anchors are matched to the ground truth (IoU >= 0.7 positive, < 0.3 negative, plus each
ground truth's best anchors), 256 anchors per image are sampled at most 1:1, and the losses are
the classification loss and the smooth-L1 (``beta = 1/9``) box loss of the positives, both summed
and divided by the number of sampled anchors of the batch. Anchors crossing the image border are
kept by default (as torchvision and detectron2 do); ``straddle_thresh = 0`` ignores them in
training as the original Faster R-CNN and Detectron do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .image_list import ImageList
from .inputs import check_target, check_target_list, checked_by_caller
from .losses import select_class_deltas, smooth_l1_loss
from .matcher import Matcher
from .sampler import BalancedSampler


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then sibling 1x1 convs for logits and deltas, shared over levels.

    Args:
        in_channels (int): channels ``C_in`` of the feature maps.
        num_anchors (int): anchors per cell ``A`` (the same on every level).
        num_classes (int): logits per anchor ``K``: 1 for objectness, ``C + 1`` (background
            and ``C`` classes) for a class-aware RPN. Box sets per anchor ``B`` are 1 when
            ``K = 1`` and ``K - 1`` otherwise.

    Shapes:
        forward(list[Tensor[N, C_in, H_l, W_l]]) -> (list[Tensor[N, A * K, H_l, W_l]],
        list[Tensor[N, A * B * 4, H_l, W_l]]); logit channel ``a * K + k``, delta channel
        ``(a * B + b) * 4 + j`` for ``j`` in ``(dx, dy, dw, dh)``.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int = 1) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("num_anchors", num_anchors),
            ("num_classes", num_classes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.num_box_sets = 1 if num_classes == 1 else num_classes - 1
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * self.num_box_sets * 4, 1)
        for conv in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for x in features:
            if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
                got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(
                    f"features must be Tensor[N, {self.in_channels}, H, W] maps, got {got}"
                )
            t = F.relu(self.conv(x))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas

    def extra_repr(self) -> str:
        return f"num_anchors={self.num_anchors}, num_classes={self.num_classes}"


class RegionProposalNetwork(nn.Module):
    """Anchors + head + proposal selection + training losses.

    Args:
        anchor_generator (AnchorGenerator): one level per entry of ``in_features``.
        head (RPNHead): ``num_anchors`` must equal the generator's anchors per cell on every
            level; ``num_classes`` 1 for a plain RPN, ``C + 1 >= 2`` with ``class_aware``.
        matcher (Matcher): default ``Matcher(0.7, 0.3, allow_low_quality_matches=True)``.
        sampler (BalancedSampler): default ``BalancedSampler(256, 0.5)``.
        box_coder (BoxCoder): default ``BoxCoder((1, 1, 1, 1))``.
        pre_nms_top_n (dict): ``{"training": 12000, "testing": 6000}``, per level and image.
        post_nms_top_n (dict): ``{"training": 2000, "testing": 1000}``, per image.
        nms_thresh (float): IoU threshold of the proposals' NMS.
        min_size (float): proposals narrower or lower than this (pixels) are dropped.
        straddle_thresh (float, optional): in training, anchors reaching more than this many
            pixels outside their image are ignored (neither positive nor negative); ``None``
            keeps every anchor.
        class_aware (bool): (C+1)-way classification and class-specific boxes.
        in_features (tuple[str, ...]): keys of the feature dict the levels read, in level order.
        generator (torch.Generator, optional): randomness of the anchor sampling.

    Targets (training): one dict per image with ``"boxes"`` Tensor[G_i, 4] ``(x1, y1, x2, y2)``
    in input pixels and, for a class-aware RPN, ``"labels"`` Tensor[G_i] int64 in ``[1, C]``
    (checked by :func:`~.inputs.check_target`).
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: RPNHead,
        matcher: Matcher | None = None,
        sampler: BalancedSampler | None = None,
        box_coder: BoxCoder | None = None,
        pre_nms_top_n: Mapping[str, int] | None = None,
        post_nms_top_n: Mapping[str, int] | None = None,
        nms_thresh: float = 0.7,
        min_size: float = 0.0,
        straddle_thresh: float | None = None,
        class_aware: bool = False,
        in_features: Sequence[str] = ("conv4",),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(anchor_generator, AnchorGenerator):
            raise TypeError(
                "anchor_generator must be an AnchorGenerator, got "
                f"{type(anchor_generator).__name__}"
            )
        if not isinstance(head, RPNHead):
            raise TypeError(f"head must be an RPNHead, got {type(head).__name__}")
        in_features = (in_features,) if isinstance(in_features, str) else tuple(in_features)
        if len(in_features) != anchor_generator.num_levels:
            raise ValueError(
                f"in_features must name one feature map per anchor level: the generator has "
                f"{anchor_generator.num_levels} levels, got in_features={in_features}"
            )
        per_cell = anchor_generator.num_anchors_per_location()
        if any(a != head.num_anchors for a in per_cell):
            raise ValueError(
                f"head.num_anchors is {head.num_anchors} but the anchor generator makes "
                f"{per_cell} anchors per cell on its levels"
            )
        if class_aware and head.num_classes < 2:
            raise ValueError(
                f"a class-aware RPN needs head.num_classes = C + 1 >= 2, got {head.num_classes}"
            )
        if not class_aware and head.num_classes != 1:
            raise ValueError(
                f"a plain RPN needs head.num_classes = 1 (objectness), got {head.num_classes}; "
                "pass class_aware=True for (C+1)-way classification"
            )
        if not 0.0 <= nms_thresh <= 1.0:
            raise ValueError(f"nms_thresh must be in [0, 1], got {nms_thresh}")
        if straddle_thresh is not None and not straddle_thresh >= 0:
            raise ValueError(f"straddle_thresh must be None or >= 0, got {straddle_thresh}")
        if not min_size >= 0:
            raise ValueError(f"min_size must be >= 0, got {min_size}")
        self.anchor_generator = anchor_generator
        self.head = head
        self.matcher = matcher if matcher is not None else Matcher(0.7, 0.3, True)
        self.sampler = sampler if sampler is not None else BalancedSampler(256, 0.5)
        self.box_coder = box_coder if box_coder is not None else BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.pre_nms_top_n = _top_n(pre_nms_top_n, {"training": 12000, "testing": 6000}, "pre")
        self.post_nms_top_n = _top_n(post_nms_top_n, {"training": 2000, "testing": 1000}, "post")
        self.nms_thresh = float(nms_thresh)
        self.min_size = float(min_size)
        self.straddle_thresh = None if straddle_thresh is None else float(straddle_thresh)
        self.class_aware = bool(class_aware)
        self.in_features = in_features
        self.generator = generator

    @property
    def num_classes(self) -> int:
        """Foreground classes ``C`` of a class-aware RPN (1 for a plain one)."""
        return self.head.num_box_sets

    def forward(
        self,
        images: ImageList,
        features: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals, and the losses in training mode.

        Args:
            images (ImageList): the padded batch ``[N, 3, H, W]`` and its image sizes.
            features (dict[str, Tensor[N, C_in, H_l, W_l]]): backbone maps; ``in_features`` read.
            targets (list[dict], optional): required in training (see the class docstring).

        Returns:
            (list[Tensor[P_i, 4]], dict[str, Tensor[]]): per image, proposals
            ``(x1, y1, x2, y2)`` in input pixels inside the image, sorted by decreasing score,
            ``P_i <= post_nms_top_n``, detached; losses ``{"loss_rpn_cls", "loss_rpn_box"}``
            in training, ``{}`` in eval.
        """
        anchors, logits, deltas, level_sizes = self.predict(images, features)
        boxes, _ = self.select_proposals(
            anchors, logits.detach(), deltas.detach(), level_sizes, images.image_sizes
        )
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets must be given in training mode (one dict per image)")
            losses = self.compute_losses(anchors, logits, deltas, targets, images.image_sizes)
        return boxes, losses

    def predict(
        self, images: ImageList, features: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """Run the head and flatten its outputs in anchor order.

        Returns:
            anchors (Tensor[T, 4]): all levels' anchors, ``T = sum_l H_l * W_l * A``.
            logits (Tensor[N, T, K]), deltas (Tensor[N, T, 4 * B]): per image and anchor.
            level_sizes (list[int]): ``H_l * W_l * A`` of each level.
        """
        if not isinstance(images, ImageList):
            raise TypeError(f"images must be an ImageList, got {type(images).__name__}")
        missing = [name for name in self.in_features if name not in features]
        if missing:
            raise ValueError(
                f"features lacks {missing}; the RPN reads {list(self.in_features)}, got keys "
                f"{list(features)}"
            )
        maps = [features[name] for name in self.in_features]
        for name, x in zip(self.in_features, maps):
            if isinstance(x, Tensor) and x.dim() == 4 and x.shape[0] != len(images):
                raise ValueError(
                    f"features[{name!r}] holds {x.shape[0]} images but images holds {len(images)}"
                )
        level_logits, level_deltas = self.head(maps)
        dtype = torch.float64 if maps[0].dtype == torch.float64 else torch.float32
        level_anchors = self.anchor_generator(
            [tuple(x.shape[-2:]) for x in maps], maps[0].device, dtype
        )
        k, b = self.head.num_classes, self.head.num_box_sets
        logits = torch.cat([_flatten(t, k) for t in level_logits], dim=1)
        deltas = torch.cat([_flatten(t, 4 * b) for t in level_deltas], dim=1)
        anchors = torch.cat(level_anchors, dim=0)
        return anchors, logits, deltas, [a.shape[0] for a in level_anchors]

    def objectness(self, logits: Tensor) -> Tensor:
        """Tensor[..., T]: probability that each anchor holds an object, from logits [..., T, K]."""
        if self.class_aware:
            return 1.0 - torch.softmax(logits.float(), dim=-1)[..., 0]
        return torch.sigmoid(logits.float()[..., 0])

    def select_proposals(
        self,
        anchors: Tensor,
        logits: Tensor,
        deltas: Tensor,
        level_sizes: Sequence[int],
        image_sizes: Sequence[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Top-k, decode, clip, filter, NMS and cap (see the module docstring).

        Args: as returned by :meth:`predict`, plus ``image_sizes`` ``[(h_i, w_i), ...]``.

        Returns:
            (list[Tensor[P_i, 4]], list[Tensor[P_i]]): proposals and their objectness, sorted by
            decreasing objectness.
        """
        mode = "training" if self.training else "testing"
        pre_n, post_n = self.pre_nms_top_n[mode], self.post_nms_top_n[mode]
        scores = self.objectness(logits)  # [N, T]
        # Per level, the pre_n best anchors of each image (indices into T).
        picked, level_of = [], []
        start = 0
        for level, size in enumerate(level_sizes):
            k = min(pre_n, size)
            idx = scores[:, start : start + size].topk(k, dim=1).indices + start
            picked.append(idx)
            level_of.append(torch.full((k,), level, dtype=torch.int64, device=scores.device))
            start += size
        picked_idx = torch.cat(picked, dim=1)  # [N, P]
        levels = torch.cat(level_of)
        boxes_out, scores_out = [], []
        for i, (h, w) in enumerate(image_sizes):
            idx = picked_idx[i]
            s = scores[i, idx]
            d = deltas[i, idx]
            if self.class_aware:
                best_class = logits[i, idx, 1:].argmax(dim=1) + 1
                d = select_class_deltas(d, best_class, first_label=1)
            boxes = self.box_coder.decode(d.float(), anchors[idx].float())
            boxes = clip_boxes_to_image(boxes, (h, w))
            # Non-finite and empty boxes (an anchor in the padding clips to zero width) never
            # make a proposal, whatever min_size.
            wh = boxes[:, 2:] - boxes[:, :2]
            keep = torch.isfinite(boxes).all(dim=1) & torch.isfinite(s) & (wh > 0).all(dim=1)
            keep_idx = torch.where(keep)[0]
            keep_idx = keep_idx[remove_small_boxes(boxes[keep_idx], self.min_size)]
            boxes, s, lv = boxes[keep_idx], s[keep_idx], levels[keep_idx]
            keep_idx = batched_nms(boxes, s, lv, self.nms_thresh)[:post_n]
            boxes_out.append(boxes[keep_idx])
            scores_out.append(s[keep_idx])
        return boxes_out, scores_out

    def compute_losses(
        self,
        anchors: Tensor,
        logits: Tensor,
        deltas: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor]:
        """``{"loss_rpn_cls": Tensor[], "loss_rpn_box": Tensor[]}`` (see the module docstring).

        Args: ``anchors`` [T, 4], ``logits`` [N, T, K], ``deltas`` [N, T, 4 * B] from
        :meth:`predict`; ``targets`` one dict per image; ``image_sizes`` ``[(h_i, w_i), ...]``
        (needed only with ``straddle_thresh``).
        """
        checked = checked_by_caller()  # by the detector, which calls this inside targets_checked()
        if not checked:
            check_target_list(targets, logits.shape[0])
        labels, matched = [], []
        for i, target in enumerate(targets):
            if not checked:  # boxes always; labels only where they are used (a class-aware RPN)
                check_target(i, target, self.num_classes if self.class_aware else None)
            lab, gt = self._anchor_labels(anchors, target)
            if self.straddle_thresh is not None:
                if image_sizes is None:
                    raise ValueError("image_sizes must be given when straddle_thresh is set")
                h, w = image_sizes[i]
                t = self.straddle_thresh
                outside = (
                    (anchors[:, 0] < -t)
                    | (anchors[:, 1] < -t)
                    | (anchors[:, 2] > w + t)
                    | (anchors[:, 3] > h + t)
                )
                lab = torch.where(outside, -1, lab)
            labels.append(lab)
            matched.append(gt)
        pos_masks, neg_masks = self.sampler(labels, self.generator)
        pos = torch.stack(pos_masks)  # [N, T]
        sampled = pos | torch.stack(neg_masks)
        label = torch.stack(labels)
        num_sampled = max(int(sampled.sum()), 1)

        if self.class_aware:
            cls_target = label[sampled].clamp(min=0)
            loss_cls = F.cross_entropy(logits[sampled].float(), cls_target, reduction="sum")
        else:
            cls_target = (label[sampled] > 0).to(torch.float32)
            loss_cls = F.binary_cross_entropy_with_logits(
                logits[sampled][:, 0].float(), cls_target, reduction="sum"
            )
        pred = deltas[pos].float()  # [P, 4 * B]
        if self.class_aware:
            pred = select_class_deltas(pred, label[pos], first_label=1)
        image_of_pos, anchor_of_pos = torch.where(pos)
        gt = torch.cat(matched)[image_of_pos * anchors.shape[0] + anchor_of_pos]
        target_deltas = self.box_coder.encode(gt.float(), anchors[anchor_of_pos].float())
        loss_box = smooth_l1_loss(pred, target_deltas, beta=1.0 / 9, reduction="sum")
        return {"loss_rpn_cls": loss_cls / num_sampled, "loss_rpn_box": loss_box / num_sampled}

    def _anchor_labels(
        self, anchors: Tensor, target: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Label per anchor [T] (>= 1 positive, 0 negative, -1 ignored) and matched gt [T, 4]."""
        gt = target["boxes"].to(device=anchors.device, dtype=anchors.dtype)
        num_anchors = anchors.shape[0]
        if self.class_aware:
            gt_labels = target["labels"].to(device=anchors.device, dtype=torch.int64)
        if gt.shape[0] == 0:
            labels = torch.zeros(num_anchors, dtype=torch.int64, device=anchors.device)
            return labels, anchors.new_zeros(num_anchors, 4)
        matches = self.matcher(box_iou(gt, anchors))
        safe = matches.clamp(min=0)
        if self.class_aware:
            labels = gt_labels[safe]
        else:
            labels = torch.ones(num_anchors, dtype=torch.int64, device=anchors.device)
        labels = torch.where(matches == Matcher.BELOW_LOW_THRESHOLD, 0, labels)
        labels = torch.where(matches == Matcher.BETWEEN_THRESHOLDS, -1, labels)
        return labels, gt[safe]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, class_aware={self.class_aware}, "
            f"pre_nms_top_n={self.pre_nms_top_n}, post_nms_top_n={self.post_nms_top_n}, "
            f"nms_thresh={self.nms_thresh}, min_size={self.min_size}"
        )


def _flatten(t: Tensor, per_anchor: int) -> Tensor:
    """[N, A * P, H, W] -> [N, H * W * A, P] in anchor order (position-major, then anchor)."""
    n, c, h, w = t.shape
    return (
        t.view(n, c // per_anchor, per_anchor, h, w)
        .permute(0, 3, 4, 1, 2)
        .reshape(n, -1, per_anchor)
    )


def _top_n(value: Mapping[str, int] | None, default: dict[str, int], which: str) -> dict[str, int]:
    if value is None:
        return dict(default)
    if not isinstance(value, Mapping) or set(value) != {"training", "testing"}:
        raise ValueError(
            f"{which}_nms_top_n must be a dict with keys 'training' and 'testing', got {value!r}"
        )
    for key, n in value.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{which}_nms_top_n[{key!r}] must be a positive int, got {n!r}")
    return dict(value)
