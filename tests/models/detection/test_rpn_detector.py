"""Class-aware RPN as a detector: output format, hand-computed detections, training step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchdcn.models import FeatureInfo, resnet18
from torchdcn.models.detection.anchors import AnchorGenerator
from torchdcn.models.detection.faster_rcnn import rpn_detector
from torchdcn.models.detection.image_list import batch_images
from torchdcn.models.detection.matcher import Matcher
from torchdcn.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchdcn.models.detection.rpn_detector import (
    RPNDetector,
    class_aware_detections,
    detector_matcher,
)
from torchdcn.ops import box_iou


class TinyBackbone(nn.Module):
    """[N, 3, H, W] -> {"c": [N, 4, H / 8, W / 8]}, with the backbone contract."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.feature_info = [FeatureInfo("c", 4, 8)]
        self.size_divisibility = 8

    def forward(self, x):
        return {"c": torch.relu(self.conv(x))}


def _detector(num_classes=3, backbone=None, in_feature="c", channels=4, stride=8, **kw):
    gen = AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),), (stride,))
    head = RPNHead(channels, 6, num_classes + 1)
    rpn = RegionProposalNetwork(
        gen, head, class_aware=True, in_features=(in_feature,),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    return RPNDetector(backbone or TinyBackbone(), rpn, **kw)


def _check_format(dets, num_images, num_classes, max_dets, sizes):
    assert isinstance(dets, list) and len(dets) == num_images
    for d, (h, w) in zip(dets, sizes):
        assert set(d) == {"boxes", "labels", "scores"}
        n = d["boxes"].shape[0]
        assert (
            d["boxes"].shape == (n, 4) and d["labels"].shape == (n,) and d["scores"].shape == (n,)
        )
        assert n <= max_dets
        assert d["labels"].dtype == torch.int64 and d["boxes"].is_floating_point()
        assert torch.all((d["labels"] >= 1) & (d["labels"] <= num_classes))
        assert torch.all(d["scores"][:-1] >= d["scores"][1:])
        assert torch.isfinite(d["boxes"]).all()
        assert torch.all(d["boxes"][:, 0::2] >= 0) and torch.all(d["boxes"][:, 0::2] <= w)
        assert torch.all(d["boxes"][:, 1::2] >= 0) and torch.all(d["boxes"][:, 1::2] <= h)


def test_eval_gives_detections_in_the_documented_format():
    torch.manual_seed(0)
    model = _detector(detections_per_img=7, score_thresh=0.0).eval()
    with torch.no_grad():
        model.rpn.head.cls_logits.bias.normal_(std=2.0)
    images = [torch.rand(3, 40, 56), torch.rand(3, 64, 32)]
    dets = model(images)
    _check_format(dets, 2, 3, 7, [(40, 56), (64, 32)])
    assert all(d["boxes"].shape[0] == 7 for d in dets)
    orig = [(80, 28), (128, 96)]
    scaled = model(images, orig_sizes=orig)
    _check_format(scaled, 2, 3, 7, orig)
    for d, s, (h, w), (oh, ow) in zip(dets, scaled, [(40, 56), (64, 32)], orig):
        factor = torch.tensor([ow / w, oh / h, ow / w, oh / h])
        torch.testing.assert_close(s["boxes"], d["boxes"] * factor)
        torch.testing.assert_close(s["scores"], d["scores"])
        assert torch.equal(s["labels"], d["labels"])


def test_detections_by_hand():
    # zero head but logits [0, 0, 3, 0] and zero deltas: every anchor is a class-2 box with
    # p = e^3 / (3 + e^3); classes 1 and 3 have 1 / (3 + e^3) = 0.04 < score_thresh 0.05.
    model = _detector(nms_thresh=0.5, detections_per_img=100).eval()
    head = model.rpn.head
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.cls_logits.bias.view(6, 4)[:, 2] = 3.0
    images = batch_images([torch.zeros(3, 32, 32)], 8)
    dets = class_aware_detections(model.rpn, images, {"c": torch.zeros(1, 4, 4, 4)})
    (d,) = dets
    p = math.exp(3) / (3 + math.exp(3))
    assert d["labels"].tolist() == [2] * d["labels"].numel()
    torch.testing.assert_close(d["scores"], torch.full_like(d["scores"], p))
    # the boxes are clipped anchors, no two of which overlap by more than 0.5
    anchors = model.rpn.anchor_generator([(4, 4)], "cpu", torch.float32)[0].clamp(0, 32)
    distance = (d["boxes"][:, None] - anchors[None]).abs().amax(dim=2).min(dim=1).values
    assert torch.all(distance < 1e-4)
    overlaps = box_iou(d["boxes"], d["boxes"]).nan_to_num(0.0).fill_diagonal_(0.0)
    assert torch.all(overlaps <= 0.5)
    assert 0 < d["boxes"].shape[0] < anchors.shape[0]


def test_training_step_gives_finite_losses_and_reaches_the_backbone():
    torch.manual_seed(0)
    model = _detector().train()
    images = [torch.rand(3, 40, 48), torch.rand(3, 32, 32)]
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 20.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.tensor([[0.0, 8.0, 16.0, 30.0]]), "labels": torch.tensor([1])},
    ]
    losses = model(images, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    torch.testing.assert_close(
        losses["loss_rpn_cls"], torch.tensor(math.log(4.0)), atol=0.05, rtol=0
    )
    sum(losses.values()).backward()
    assert model.backbone.conv.weight.grad.abs().sum() > 0
    assert model.rpn.head.bbox_pred.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="targets must be given"):
        model(images)


def test_with_a_real_resnet_backbone_on_conv4():
    torch.manual_seed(0)
    backbone = resnet18(features_only=True, output_stride=16)
    info = {i.name: i for i in backbone.feature_info}["conv4"]
    model = _detector(
        num_classes=2, backbone=backbone, in_feature="conv4", channels=info.channels,
        stride=info.stride, score_thresh=0.0, detections_per_img=5,
    )  # fmt: skip
    images = [torch.rand(3, 64, 48)]
    losses = model.train()(
        images, [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([2])}]
    )
    assert all(torch.isfinite(v) for v in losses.values())
    dets = model.eval()(images)
    _check_format(dets, 1, 2, 5, [(64, 48)])


def test_bad_configuration():
    gen = AnchorGenerator(((16,),), ((1.0,),), (8,))
    plain = RegionProposalNetwork(gen, RPNHead(4, 1), in_features=("c",))
    with pytest.raises(ValueError, match="class_aware=True"):
        RPNDetector(TinyBackbone(), plain)
    aware = RegionProposalNetwork(gen, RPNHead(4, 1, 3), class_aware=True, in_features=("conv4",))
    with pytest.raises(ValueError, match="feature_info names"):
        RPNDetector(TinyBackbone(), aware)
    with pytest.raises(ValueError, match=r"images\[0\] must be a Tensor\[3, H, W\]"):
        _detector().eval()([torch.rand(1, 16, 16)])
    # post-processing as the box head's (.postprocess.check_postprocess_args)
    with pytest.raises(ValueError, match=r"nms_thresh must be in \[0, 1\]"):
        _detector(nms_thresh=70)
    with pytest.raises(TypeError, match="score_thresh must be a number"):
        _detector(score_thresh="0.5")
    with pytest.raises(TypeError, match="detections_per_img must be a positive int"):
        _detector(detections_per_img=10.0)


def test_degenerate_and_non_finite_boxes_are_refused():
    # the RPN of the detector used to train on them silently (no IoU with any anchor)
    model = _detector().train()
    for box in ([10.0, 10.0, 10.0, 30.0], [30.0, 30.0, 10.0, 10.0], [10.0, float("nan"), 20, 30]):
        target = {"boxes": torch.tensor([box]), "labels": torch.tensor([1])}
        with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\] must be finite"):
            model([torch.rand(3, 32, 32)], [target])
    # the RPN on its own too (the same check)
    anchors, logits, deltas, _ = model.rpn.predict(
        batch_images([torch.rand(3, 32, 32)], 8), model.backbone(torch.rand(1, 3, 32, 32))
    )
    target = {"boxes": torch.tensor([[10.0, 10.0, 10.0, 30.0]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\] must be finite"):
        model.rpn.compute_losses(anchors, logits, deltas, [target])


def test_preset_matches_anchors_as_a_detector_leaving_none_out():
    # Every anchor is scored at test time, so every anchor must get a training label: class of
    # its best ground truth at IoU >= 0.5 (or as some ground truth's best anchor), else
    # background. The RPN's proposal matcher (0.7 / 0.3) would leave the anchors in between out.
    rpn = rpn_detector("resnet18", num_classes=3, anchor_sizes=(16, 32, 64)).rpn
    anchors = rpn.anchor_generator([(6, 8)], "cpu", torch.float32)[0]
    gt = torch.tensor([[10.0, 12.0, 50.0, 44.0], [70.0, 40.0, 84.0, 62.0], [0.0, 60.0, 9.0, 70.0]])
    gt_labels = torch.tensor([3, 1, 2])
    labels, matched = rpn._anchor_labels(anchors, {"boxes": gt, "labels": gt_labels})

    iou = box_iou(gt, anchors)  # independent reference
    best_iou, best_gt = iou.max(dim=0)
    is_best = (iou == iou.max(dim=1, keepdim=True).values).any(dim=0)
    expected = torch.where((best_iou >= 0.5) | is_best, gt_labels[best_gt], 0)
    assert (labels >= 0).all()
    assert torch.equal(labels, expected)
    pos = labels > 0
    torch.testing.assert_close(matched[pos], gt[best_gt[pos]])
    # the three boxes have positives, and the middle band (0.3 <= IoU < 0.5) is background
    assert set(labels[pos].tolist()) == {1, 2, 3}
    band = (best_iou >= 0.3) & (best_iou < 0.5) & ~is_best
    assert band.any() and (labels[band] == 0).all()
    # an explicit matcher still wins
    proposal_like = rpn_detector(
        "resnet18", num_classes=3, rpn_kwargs={"matcher": Matcher(0.7, 0.3, True)}
    ).rpn
    assert proposal_like.matcher.high_threshold == 0.7


def test_detector_matcher_thresholds():
    iou = torch.tensor([[0.8, 0.5, 0.49, 0.1, 0.0], [0.0, 0.0, 0.2, 0.3, 0.0]])
    assert detector_matcher()(iou).tolist() == [0, 0, -1, 1, -1]
    assert detector_matcher(0.6)(iou).tolist() == [0, -1, -1, 1, -1]


def _scene_batch():
    images = [torch.rand(3, 64, 48), torch.rand(3, 48, 64)]
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[4.0, 10.0, 30.0, 44.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


@pytest.mark.parametrize("reduce_channels", [16, None])
def test_preset_reads_conv5_so_its_deformable_layers_count(reduce_channels):
    """v1 Table 1's class-aware RPN sits on the feature extraction network (conv5, reduced): the
    deformable conv5 layers change its detections, and every parameter gets a gradient (an
    unused conv5 made DDP fail and the "last n" rows differ by initialisation only)."""
    torch.manual_seed(0)
    model = rpn_detector(
        "resnet18", "v1", num_classes=2, base_channels=8, reduce_channels=reduce_channels,
        score_thresh=0.0,
    )  # fmt: skip
    assert model.rpn.in_features == (("conv5_reduced",) if reduce_channels else ("conv5",))
    images, targets = _scene_batch()
    sum(model.train()(images, targets).values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    model.eval()
    before = model(images)
    with torch.no_grad():
        for name, module in model.backbone.named_modules():
            if name.startswith("layer4") and hasattr(module, "conv_offset"):
                module.conv_offset.weight.normal_()
    after = model(images)
    assert not all(torch.equal(a["scores"], b["scores"]) for a, b in zip(before, after))


def test_conv4_layout_of_earlier_checkpoints():
    torch.manual_seed(0)
    old = rpn_detector("resnet18", num_classes=2, base_channels=8, rpn_feature="conv4",
                       reduce_channels=None)  # fmt: skip
    assert old.rpn.in_features == ("conv4",) and old.neck is None
    with pytest.raises(ValueError, match=r"rpn_feature='conv4' .* has no reduce conv"):
        rpn_detector("resnet18", num_classes=2, base_channels=8, rpn_feature="conv4")
    with pytest.raises(ValueError, match="rpn_feature must be one of"):
        rpn_detector("resnet18", num_classes=2, base_channels=8, rpn_feature="conv3")
    with pytest.raises(TypeError, match="reduce_channels must be an int or None"):
        rpn_detector("resnet18", num_classes=2, base_channels=8, reduce_channels=16.0)
