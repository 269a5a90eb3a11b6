"""DeepLab (v1 paper, sections 2.3 and 4): per-pixel classification on a dilated ResNet.

The image (``[0, 1]`` RGB) is normalised with the ImageNet mean and std, padded at the bottom and
right to a multiple of the backbone's ``size_divisibility``, and run through the backbone; its
stride-16 (or 8) ``conv5`` map goes through a head (the paper's randomly initialised 1x1 conv to
1024 channels + ReLU, or :class:`~.aspp.ASPP`) and a 1x1 classifier to ``C + 1`` maps (class 0 is
the background). The scores are upsampled bilinearly by the output stride to the padded input
size and cropped to the images. Training minimises the per-pixel cross-entropy, skipping pixels
labelled ``ignore_index`` (255).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import DeformConfig, task_backbone
from .aspp import ASPP, default_aspp_rates
from .reduce_head import ReduceHead

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the label of pixels that count for nothing (VOC's object borders, COCO crowds)
IGNORE_INDEX = 255
HEADS = ("deeplab", "aspp")


class DeepLab(nn.Module):
    """Backbone -> head -> 1x1 classifier -> bilinear upsampling.

    Args:
        backbone: a :class:`~torchdcn.models.backbones.ResNet` with ``features_only`` (any module
            with ``feature_info`` and ``size_divisibility`` returning a dict of maps).
        head: ``[N, C_in, h, w] -> [N, head.out_channels, h, w]`` on the map ``in_feature``
            (:class:`~.reduce_head.ReduceHead` or :class:`~.aspp.ASPP`).
        num_classes: ``C``, the object classes; the classifier predicts ``C + 1`` (0: background).
        in_feature: the backbone map the head reads (``"conv5"``).
        ignore_index: label of pixels left out of the loss.

    Forward:
        ``images``: float ``Tensor[N, 3, H, W]`` or a list of ``Tensor[3, H_i, W_i]``, RGB in
        ``[0, 1]`` (the model normalises).

        ``targets`` (training): ``Tensor[N, H, W]`` of labels, or a list of dicts holding
        ``"semantic"``: int ``Tensor[H_i, W_i]``, labels ``0..C`` or ``ignore_index``, the
        size of image ``i``.

        Returns in training ``{"loss_seg": scalar}``, the mean cross-entropy over the labelled
        pixels (0 when there is none); in eval the scores (logits) ``Tensor[N, C + 1, H, W]``
        with ``H, W`` the largest image height and width of the batch: image ``i``'s scores are
        ``[i, :, :H_i, :W_i]`` (for a tensor input, exactly the input's size); the class is
        their ``argmax(1)``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        num_classes: int,
        in_feature: str = "conv5",
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        infos = {i.name: i for i in backbone.feature_info}
        if in_feature not in infos:
            raise ValueError(f"in_feature must be one of {list(infos)}, got {in_feature!r}")
        if not 0 <= ignore_index or ignore_index <= num_classes:
            raise ValueError(
                f"ignore_index must be a label above the classes 0..{num_classes}, got "
                f"{ignore_index}"
            )
        self.backbone, self.head = backbone, head
        self.num_classes, self.in_feature, self.ignore_index = num_classes, in_feature, ignore_index
        self.stride = infos[in_feature].stride
        self.size_divisibility = int(backbone.size_divisibility)
        self.classifier = nn.Conv2d(head.out_channels, num_classes + 1, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    def _batch(self, images: Tensor | Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalised images padded (with 0, the mean colour) to ``[N, 3, H_p, W_p]``, multiples
        of ``size_divisibility``, and the ``(H_i, W_i)`` of each image."""
        if isinstance(images, Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"images must be a Tensor[N, 3, H, W], got {tuple(images.shape)}")
            images = list(images)
        elif not isinstance(images, Sequence) or not images:
            raise TypeError(
                "images must be a Tensor[N, 3, H, W] or a non-empty list of Tensor[3, H, W], "
                f"got {type(images).__name__}"
            )
        for i, image in enumerate(images):
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
                got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f"images[{i}] must be a Tensor[3, H, W], got {got}")
            if not image.is_floating_point():
                raise TypeError(
                    f"images[{i}] must be a floating-point Tensor with values in [0, 1] (the "
                    f"model normalises it), got {image.dtype}; e.g. image.float() / 255"
                )
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        d = self.size_divisibility
        height = -(-max(h for h, _ in sizes) // d) * d
        width = -(-max(w for _, w in sizes) // d) * d
        first = images[0]
        # in the model's dtype (that of its mean/std buffers): float64 or half images work too
        batch = first.new_zeros((len(images), 3, height, width), dtype=self.mean.dtype)
        mean, std = self.mean.to(first.device), self.std.to(first.device)
        for slot, image, (h, w) in zip(batch, images, sizes):
            slot[:, :h, :w] = (image.to(batch.dtype) - mean) / std
        return batch, sizes

    def forward(
        self, images: Tensor | Sequence[Tensor], targets: Any = None
    ) -> Tensor | dict[str, Tensor]:
        batch, sizes = self._batch(images)
        features = self.backbone(batch)[self.in_feature]
        scores = self.classifier(self.head(features))  # [N, C + 1, H_p / s, W_p / s]
        scores = F.interpolate(scores, size=batch.shape[-2:], mode="bilinear", align_corners=False)
        height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
        scores = scores[:, :, :height, :width]
        if not self.training:
            return scores
        if targets is None:
            raise ValueError("targets are required in training mode (model.eval() to predict)")
        labels = self._labels(targets, sizes, scores.device)
        total = F.cross_entropy(
            scores.float(), labels, ignore_index=self.ignore_index, reduction="sum"
        )
        count = (labels != self.ignore_index).sum().clamp(min=1)
        return {"loss_seg": total / count}

    def _labels(self, targets: Any, sizes: list[tuple[int, int]], device: torch.device) -> Tensor:
        """``[N, H, W]`` int64 labels, ``ignore_index`` outside each image."""
        if isinstance(targets, Tensor):
            maps = list(targets) if targets.dim() == 3 else None
        elif isinstance(targets, Sequence):
            maps = [t.get("semantic") if isinstance(t, dict) else t for t in targets]
        else:
            maps = None
        if maps is None or len(maps) != len(sizes):
            raise ValueError(
                f"targets must be a Tensor[N, H, W] of labels or a list of {len(sizes)} dicts with "
                f"'semantic' [H_i, W_i], got {type(targets).__name__}"
            )
        height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
        labels = torch.full((len(sizes), height, width), self.ignore_index, device=device)
        for i, (label, size) in enumerate(zip(maps, sizes)):
            if not isinstance(label, Tensor) or tuple(label.shape) != size:
                got = tuple(label.shape) if isinstance(label, Tensor) else type(label).__name__
                raise ValueError(
                    f"targets[{i}]['semantic'] must be [{size[0]}, {size[1]}], got {got}"
                )
            if label.is_floating_point():
                raise TypeError(
                    f"targets[{i}]['semantic'] must hold integer labels, got {label.dtype}"
                )
            bad = (label > self.num_classes) & (label != self.ignore_index) | (label < 0)
            if bool(bad.any()):
                raise ValueError(
                    f"targets[{i}]['semantic'] holds labels outside 0..{self.num_classes} and "
                    f"{self.ignore_index}: {sorted(set(label[bad].tolist()))[:5]}"
                )
            labels[i, : size[0], : size[1]] = label
        return labels


def deeplab(
    backbone: str = "resnet50",
    deform: str | DeformConfig | Sequence[DeformConfig] | None = None,
    num_classes: int = 20,
    output_stride: int = 16,
    head: str = "deeplab",
    pretrained_backbone: str | None = None,
    *,
    frozen_bn: bool | None = None,
    freeze_at: int | None = None,
    base_channels: int = 64,
    head_channels: int | None = None,
    aspp_rates: Sequence[int] | None = None,
) -> DeepLab:
    """DeepLab in the papers' layout: a ResNet at ``output_stride`` 16 (v1 section 2.3), head,
    classifier to ``num_classes + 1`` maps.

    Args:
        backbone: resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x4d/32x8d.
        deform: ``None`` (plain, dilated conv5), ``"v1"`` (last three 3x3 convs of conv5
            deformable: the paper's DeepLab), ``"v2"`` (conv3-conv5 modulated) or a
            :class:`~torchdcn.models.backbones.DeformConfig`.
        num_classes: ``C`` object classes (20 for VOC); the output has ``C + 1`` maps.
        output_stride: 16 (papers) or 8 (conv4 dilated by 2 too, conv5 by 4).
        head: ``"deeplab"`` (1x1 conv to ``head_channels`` = 1024, ReLU) or ``"aspp"``
            (:class:`~.aspp.ASPP` with ``head_channels`` = 256 and ``aspp_rates``, default
            :func:`~.aspp.default_aspp_rates` of the output stride).
        pretrained_backbone: ImageNet weights file (torchvision/timm layout) for the backbone.
        frozen_bn: :class:`~torchdcn.nn.FrozenBatchNorm2d` in the backbone (a few images per
            batch; the released DCN DeepLab fixes BN). ``False`` trains BatchNorm; ``None``:
            frozen with ``pretrained_backbone``, trainable without it (from scratch).
        freeze_at: stages frozen up to it (0 none, 1 the stem, 2 the stem and conv2);
            ``None``: 2 with ``pretrained_backbone``, 0 without it.
        base_channels: backbone width, its stages ``base_channels * (1, 2, 4, 8)`` planes (64:
            the published ResNets; e.g. 16 for a small network trained from scratch).
    """
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 16 or 8, got {output_stride!r}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    body = task_backbone(
        backbone, deform, output_stride, frozen_bn, freeze_at, pretrained_backbone,
        base_channels=base_channels,
    )  # fmt: skip
    in_channels = body.feature_info[-1].channels
    if head == "deeplab":
        if aspp_rates is not None:
            raise ValueError("aspp_rates apply to head='aspp' only")
        module: nn.Module = ReduceHead(in_channels, head_channels or 1024)
    else:
        rates = default_aspp_rates(output_stride) if aspp_rates is None else aspp_rates
        module = ASPP(in_channels, head_channels or 256, rates)
    return DeepLab(body, module, num_classes)
