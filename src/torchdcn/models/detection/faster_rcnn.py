"""Faster R-CNN (plain, v1 and v2 deformable) and the class-aware RPN detector, with presets.

The papers' layout is the default (SPEC sections 5-6): a ResNet at output stride 16 (conv5 has
stride 1 and dilation 2), the RPN on conv4 (one stride-16 level, 5 scales x 3 aspect ratios), a
randomly initialised 1x1 conv + ReLU reducing conv5 to 256 channels (:mod:`.conv_reduce`), RoI
pooling on it at stride 16, 2 fc 1024, class scores and class-specific box deltas. ``fpn=True``
builds the backbone at output stride 32 and puts an FPN (:mod:`.fpn`) between it and the heads:
the RPN runs on P2-P6 (one anchor size per level) and RoIs are pooled from P2-P5 by size.

Image flow: ``list[Tensor[3, H_i, W_i]]`` in ``[0, 1]`` -> ImageNet normalisation -> padded batch
(``size_divisibility``) -> backbone (-> neck) -> RPN proposals -> RoI heads -> losses (training)
or detections (eval), boxes mapped back to the original image sizes when given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..backbones import DeformConfig, FeatureInfo, ResNet, task_backbone
from .anchors import AnchorGenerator
from .box_head import FastRCNNPredictor, RoIHeads, TwoFCHead
from .conv_reduce import ConvReduce
from .fpn import FPN
from .image_list import IMAGENET_MEAN, IMAGENET_STD, ImageList, normalize_and_batch
from .inputs import check_orig_sizes, check_target_list, check_targets, targets_checked
from .mimic import MimicBranch
from .poolers import POOLER_KINDS, RoIPooler
from .rpn import RegionProposalNetwork, RPNHead
from .rpn_detector import RPNDetector, detector_matcher

Targets = Sequence[Mapping[str, Tensor]]


class FasterRCNN(nn.Module):
    """Backbone (+ neck) + region proposal network + Fast R-CNN RoI heads.

    Args:
        backbone: ``[N, 3, H, W] -> dict[str, Tensor]`` with ``feature_info`` and
            ``size_divisibility`` (a :class:`~torchdcn.models.ResNet` with ``features_only``).
        rpn: a plain :class:`~.rpn.RegionProposalNetwork`; its ``in_features`` name maps of the
            backbone (or of the neck).
        roi_heads: :class:`~.box_head.RoIHeads`; its pooler's ``feature_names`` likewise.
        neck: optional ``dict -> dict`` module between backbone and heads (:class:`~.fpn.FPN`,
            :class:`~.conv_reduce.ConvReduce`).
        pixel_mean, pixel_std: normalisation of ``[0, 1]`` RGB inputs (ImageNet's).
        mimic: optional R-CNN feature-mimicking branch (:class:`~.mimic.MimicBranch`, v2 section
            3.3): training only, it adds ``"loss_mimic"`` (and ``"loss_mimic_cls"``).

    ``forward(images, targets=None, orig_sizes=None)``:

    - ``images``: ``list[Tensor[3, H_i, W_i]]``, RGB in ``[0, 1]``, already resized (a list,
      not a stacked ``Tensor[N, 3, H, W]``: build loaders with
      :func:`~torchdcn.data.collate.list_collate`);
    - ``targets`` (training): a list of one dict per image, ``"boxes"`` ``[G_i, 4]`` float
      ``(x1, y1, x2, y2)`` in input pixels and ``"labels"`` ``[G_i]`` integer in ``1..C``
      (checked by :func:`~.inputs.check_targets`, which names the bad ``targets[i]['key']``);
    - ``orig_sizes`` (eval, optional): ``(h, w)`` of each original image (ints or integer
      tensors).

    Returns in training ``{"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box_reg"}`` (scalar
    tensors), in eval one dict per image: ``"boxes"`` ``[K, 4]`` in original-image pixels if
    ``orig_sizes`` is given (else input pixels), inside the image; ``"labels"`` ``[K]`` int64 in
    ``1..C``; ``"scores"`` ``[K]`` decreasing; ``K <= roi_heads.detections_per_img``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        neck: nn.Module | None = None,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        mimic: MimicBranch | None = None,
    ) -> None:
        super().__init__()
        if rpn.class_aware:
            raise ValueError("rpn must be a plain RPN in Faster R-CNN (class_aware=False)")
        if len(pixel_mean) != 3 or len(pixel_std) != 3 or min(pixel_std) <= 0:
            raise ValueError(
                f"pixel_mean and pixel_std must be 3 numbers (std > 0), got {pixel_mean!r} and "
                f"{pixel_std!r}"
            )
        infos = getattr(neck if neck is not None else backbone, "feature_info", None)
        if infos is None:
            raise TypeError("the backbone (or the neck) must have a feature_info list")
        names = [i.name for i in infos]
        for what, wanted in (
            ("rpn", rpn.in_features),
            ("roi_heads", roi_heads.pooler.feature_names),
        ):
            if any(n not in names for n in wanted):
                raise ValueError(f"{what} reads {list(wanted)} but the features are {names}")
        self.backbone = backbone
        self.neck = neck
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.mimic = mimic  # training-only branch; never called in eval
        self.size_divisibility = int(getattr(backbone, "size_divisibility", 1))
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)

    @property
    def feature_info(self) -> list[FeatureInfo]:
        """The maps the heads can read (the neck's if any, else the backbone's)."""
        return list((self.neck if self.neck is not None else self.backbone).feature_info)

    @property
    def num_classes(self) -> int:
        """Foreground classes ``C``."""
        return self.roi_heads.num_classes - 1

    def preprocess(self, images: Sequence[Tensor]) -> ImageList:
        """Normalise ``[0, 1]`` images ``[3, H_i, W_i]`` and pad them into an :class:`ImageList`
        ``[N, 3, H, W]`` (multiples of ``size_divisibility``)."""
        return normalize_and_batch(images, self.pixel_mean, self.pixel_std, self.size_divisibility)

    def features(self, batch: ImageList) -> Mapping[str, Tensor]:
        """Backbone (+ neck) maps of a padded batch."""
        features = self.backbone(batch.tensors)
        return features if self.neck is None else self.neck(features)

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Targets | None = None,
        orig_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training, detections in eval; see the class docstring."""
        if self.training and targets is None:
            raise ValueError("targets must be given in training mode (one dict per image)")
        batch = self.preprocess(images)
        if targets is not None and not self.training:
            check_target_list(targets, len(batch))
        if self.training:  # (the list too)
            check_targets(
                targets,
                batch.image_sizes,
                self.num_classes,
                masks=bool(getattr(self.roi_heads, "needs_masks", False)),
            )
        orig_sizes = check_orig_sizes(orig_sizes, len(batch))
        features = self.features(batch)
        with targets_checked():  # the heads skip their own check of the targets checked above
            proposals, rpn_losses = self.rpn(batch, features, targets if self.training else None)
            detections, head_losses = self.roi_heads(
                features, proposals, batch.image_sizes, targets if self.training else None,
                orig_sizes,
            )  # fmt: skip
            if self.training:
                losses = {**rpn_losses, **head_losses}
                if self.mimic is not None:
                    losses.update(self.mimic(self, batch, features, proposals, targets))
                return losses
        return detections


# ---------------------------------------------------------------------------------------------
# Presets


def _backbone(
    name: str,
    deform: Any,
    output_stride: int,
    frozen_bn: bool | None,
    freeze_at: int | None,
    pretrained: str | None,
    base_channels: int = 64,
) -> ResNet:
    """The presets' ResNet (see :func:`~torchdcn.models.backbones.task_backbone`)."""
    return task_backbone(
        name, deform, output_stride, frozen_bn, freeze_at, pretrained, base_channels=base_channels
    )


def _rpn(
    infos: Sequence[FeatureInfo],
    in_features: Sequence[str],
    anchor_sizes: Sequence[Sequence[float]],
    aspect_ratios: Sequence[float],
    num_classes: int,
    class_aware: bool,
    **kw: Any,
) -> RegionProposalNetwork:
    by_name = {i.name: i for i in infos}
    strides = [by_name[n].stride for n in in_features]
    generator = AnchorGenerator(anchor_sizes, (tuple(aspect_ratios),), strides)
    (a,) = set(generator.num_anchors_per_location())
    head = RPNHead(by_name[in_features[0]].channels, a, num_classes + 1 if class_aware else 1)
    return RegionProposalNetwork(
        generator, head, class_aware=class_aware, in_features=tuple(in_features), **kw
    )


def faster_rcnn(
    backbone: str = "resnet50",
    deform: str | DeformConfig | Sequence[DeformConfig] | None = None,
    roi_pool: str | None = None,
    num_classes: int = 80,
    fpn: bool = False,
    pretrained_backbone: str | None = None,
    *,
    frozen_bn: bool | None = None,
    freeze_at: int | None = None,
    base_channels: int = 64,
    reduce_channels: int | None = 256,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    deform_hidden: int = 1024,
    anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_kwargs: Mapping[str, Any] | None = None,
    roi_heads_kwargs: Mapping[str, Any] | None = None,
    mimic: bool | Mapping[str, Any] = False,
) -> FasterRCNN:
    """Faster R-CNN in the papers' layout (or with FPN), plain or deformable.

    Args:
        backbone: a ResNet/ResNeXt name of :data:`torchdcn.models.backbones.resnet.ARCHITECTURES`.
        deform: ``None``, ``"v1"`` (deformable last three 3x3 convs of conv5), ``"v2"``
            (modulated convs in conv3-conv5) or :class:`~torchdcn.models.DeformConfig` (s).
        roi_pool: ``"roi_pool"``, ``"roi_align"``, ``"deform"`` (v1 deformable RoI pooling) or
            ``"mdeform"`` (v2 modulated); ``None``: ``"mdeform"`` for ``deform="v2"`` (the v2
            paper's network), else ``"roi_align"``.
        num_classes: foreground classes ``C`` (80 for COCO), the background not counted:
            target and output labels are ``1..C``, 0 is the background; the classifier has
            ``C + 1`` outputs. (torchvision counts the background: its COCO 91 is 90 here with
            its category ids as labels; detectron2 and mmdet use labels ``0..C-1``: add 1.)
            See ``docs/migration.md``, "Detectors: targets and labels".
        fpn: P2-P6 FPN neck, backbone at output stride 32 (default: papers' stride-16 layout).
        pretrained_backbone: a torchvision/timm ResNet checkpoint file for
            :func:`~torchdcn.models.load_pretrained` (nothing is downloaded).
        frozen_bn: :class:`~torchdcn.nn.FrozenBatchNorm2d` in the backbone (Detectron);
            ``None``: frozen with ``pretrained_backbone``, trainable BatchNorm without it.
        freeze_at: stages whose parameters do not train: 2 = stem and conv2 (Detectron);
            ``None``: 2 with ``pretrained_backbone``, 0 without it (a random backbone trains
            whole, as in torchvision's builders without weights).
        base_channels: backbone width: its stages have ``base_channels * (1, 2, 4, 8)`` planes
            (64: the published ResNets; e.g. 16 for a small detector trained from scratch).
            The heads read the backbone's widths from its ``feature_info``.
        reduce_channels: width of the 1x1 conv on conv5 (papers' layout only, see
            :mod:`.conv_reduce`); ``None``/0 pools conv5 directly.
        fpn_channels: FPN width. representation_size: width of the 2 fcs (1024).
        deform_hidden: hidden width of the ``"mdeform"`` offset branch (1024).
        anchor_sizes, aspect_ratios: anchors; with FPN one size per level P2-P6.
        rpn_kwargs, roi_heads_kwargs: more arguments of :class:`~.rpn.RegionProposalNetwork`
            (``pre_nms_top_n``, ``post_nms_top_n``, ``sampler``...) and :class:`~.RoIHeads`
            (``sampler``, ``score_thresh``, ``detections_per_img``...).
        mimic: R-CNN feature mimicking in training (v2 section 3.3): ``True`` for the paper's
            settings (32 positive RoIs per image, 224 px patches, weights 0.1), or a dict of
            :class:`~.mimic.MimicBranch` options (``rois="all"``, ``patch_size=64``...).

    The defaults are the v2 paper's (Detectron) for every ``deform``: 512 RoIs sampled 1:3, conv5
    reduced to 256 channels. The v1 paper's network: ``faster_rcnn("resnet101", deform="v1",
    reduce_channels=1024, roi_heads_kwargs={"sampler": BalancedSampler(256, 0.25)})``.

    The offset predictors of deformable convs and RoI pooling keep their learning-rate
    multipliers: use ``torchdcn.nn.param_groups(model, lr)`` for the optimizer.

    Example:
        >>> model = faster_rcnn("resnet50", deform="v2", num_classes=80)  # mdeform pooling
        >>> opt = torch.optim.SGD(param_groups(model, 0.02, 1e-4), lr=0.02, momentum=0.9)
        >>> losses = model.train()([torch.rand(3, 600, 800)], [{"boxes": torch.tensor(
        ...     [[10.0, 20.0, 300.0, 400.0]]), "labels": torch.tensor([1])}])
        >>> sorted(losses)
        ['loss_box_reg', 'loss_cls', 'loss_rpn_box', 'loss_rpn_cls']
    """
    if roi_pool is None:
        roi_pool = "mdeform" if deform == "v2" else "roi_align"
    if roi_pool not in POOLER_KINDS:
        raise ValueError(f"roi_pool must be one of {POOLER_KINDS} or None, got {roi_pool!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive int (foreground classes), got {num_classes!r}"
        )
    body = _backbone(
        backbone, deform, 32 if fpn else 16, frozen_bn, freeze_at, pretrained_backbone,
        base_channels,
    )  # fmt: skip
    if fpn:
        neck: nn.Module | None = FPN(body.feature_info, fpn_channels)
        levels = [i.name for i in neck.feature_info]
        rpn_features, pool_features = levels, levels[:-1]
        if len(anchor_sizes) != len(levels):
            raise ValueError(
                f"with fpn=True anchor_sizes must give one size per level {levels}, got "
                f"{tuple(anchor_sizes)}"
            )
        sizes = tuple((s,) for s in anchor_sizes)
    else:
        neck = ConvReduce(body.feature_info, "conv5", reduce_channels) if reduce_channels else None
        rpn_features = ["conv4"]
        pool_features = [neck.out_name if neck is not None else "conv5"]
        sizes = (tuple(anchor_sizes),)
    infos = {i.name: i for i in (neck if neck is not None else body).feature_info}
    rpn = _rpn(
        list(infos.values()), rpn_features, sizes, aspect_ratios, num_classes, False,
        **dict(rpn_kwargs or {}),
    )  # fmt: skip
    channels = infos[pool_features[0]].channels
    pooler = RoIPooler(
        roi_pool, pool_features, [infos[n].stride for n in pool_features], channels,
        output_size=7, sampling_ratio=2, deform_hidden=deform_hidden,
    )  # fmt: skip
    roi_heads = RoIHeads(
        pooler,
        TwoFCHead(channels, 7, representation_size),
        FastRCNNPredictor(representation_size, num_classes + 1),
        **dict(roi_heads_kwargs or {}),
    )
    if not isinstance(mimic, bool | Mapping):
        raise TypeError(f"mimic must be a bool or a dict of MimicBranch options, got {mimic!r}")
    branch = None
    if mimic is not False:
        options = {} if mimic is True else dict(mimic)
        branch = MimicBranch(num_classes + 1, representation_size, **options)
    return FasterRCNN(body, rpn, roi_heads, neck, mimic=branch)


#: where the class-aware RPN reads its features: ``"conv5"`` (v1 Table 1: on top of the feature
#: extraction network, conv5 and its 1x1 reduce conv, so every deformable conv5 layer counts) or
#: ``"conv4"`` (the layout of torchdcn before 2026-12-02, kept to load its checkpoints: conv5 is
#: built but unused, so its layers, deformable or not, never change the output)
RPN_FEATURES = ("conv5", "conv4")


def rpn_detector(
    backbone: str = "resnet50",
    deform: str | DeformConfig | Sequence[DeformConfig] | None = None,
    num_classes: int = 80,
    class_aware: bool = True,
    pretrained_backbone: str | None = None,
    *,
    frozen_bn: bool | None = None,
    freeze_at: int | None = None,
    base_channels: int = 64,
    reduce_channels: int | None = 1024,
    rpn_feature: str = "conv5",
    anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_kwargs: Mapping[str, Any] | None = None,
    **detector_kwargs: Any,
) -> RPNDetector:
    """The class-aware RPN of v1 (section 2.3) as a detector: a ResNet at output stride 16 (conv5
    dilated), the feature extraction network's 1x1 conv reducing conv5 to ``reduce_channels``
    (1024), and a (C+1)-way RPN with class-specific boxes on it
    (:class:`~.rpn_detector.RPNDetector`). Deformable convs in conv5 (v1 Table 1: the last 1, 2,
    3 or 6 3x3 convs) change what the RPN sees.

    Args:
        backbone, deform, num_classes, pretrained_backbone, frozen_bn, freeze_at,
            base_channels, anchor_sizes, aspect_ratios, rpn_kwargs: as :func:`faster_rcnn`
            (``num_classes``: foreground classes ``C``, labels ``1..C``, the RPN ``C + 1``-way); the
            anchors are matched by :func:`~.rpn_detector.detector_matcher` (IoU 0.5, no ignored
            band) unless ``rpn_kwargs`` gives a ``matcher``.
        class_aware: must be ``True`` (a plain RPN proposes, it does not detect; use
            :func:`faster_rcnn`).
        reduce_channels: width of the 1x1 conv + ReLU on conv5 (v1: 1024); ``None`` or 0: the
            RPN reads conv5 itself.
        rpn_feature: ``"conv5"`` (default) or ``"conv4"``, the layout of checkpoints written
            before 2026-12-02 (``reduce_channels`` must then be ``None``; conv5 is built but
            unused, see :data:`RPN_FEATURES`).
        detector_kwargs: ``score_thresh``, ``nms_thresh``, ``detections_per_img`` of
            :class:`~.rpn_detector.RPNDetector`.
    """
    if not class_aware:
        raise ValueError(
            "rpn_detector needs class_aware=True: a plain RPN only proposes class-agnostic "
            "boxes (use faster_rcnn for a detector on top of it)"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive int (foreground classes), got {num_classes!r}"
        )
    if rpn_feature not in RPN_FEATURES:
        raise ValueError(f"rpn_feature must be one of {RPN_FEATURES}, got {rpn_feature!r}")
    if reduce_channels is not None and (
        isinstance(reduce_channels, bool) or not isinstance(reduce_channels, int)
    ):
        raise TypeError(f"reduce_channels must be an int or None, got {reduce_channels!r}")
    if reduce_channels is not None and reduce_channels < 0:
        raise ValueError(f"reduce_channels must be positive, 0 or None, got {reduce_channels}")
    if rpn_feature == "conv4" and reduce_channels:
        raise ValueError(
            f"rpn_feature='conv4' (the earlier layout) has no reduce conv: pass "
            f"reduce_channels=None, got {reduce_channels}"
        )
    body = _backbone(backbone, deform, 16, frozen_bn, freeze_at, pretrained_backbone, base_channels)
    neck = ConvReduce(body.feature_info, "conv5", reduce_channels) if reduce_channels else None
    infos = body.feature_info if neck is None else neck.feature_info
    feature = rpn_feature if neck is None else neck.out_name
    rpn = _rpn(
        infos, [feature], (tuple(anchor_sizes),), aspect_ratios, num_classes, True,
        **{"matcher": detector_matcher(), **dict(rpn_kwargs or {})},
    )  # fmt: skip
    return RPNDetector(body, rpn, neck=neck, **detector_kwargs)
