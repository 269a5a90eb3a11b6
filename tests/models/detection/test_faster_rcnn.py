"""Faster R-CNN and the class-aware RPN detector: a train step of every preset / RoI pooling
choice gives finite named losses and gradients; an eval step gives detections in the documented
format; freezing, deformable layers and learning-rate groups are as the presets say."""

from __future__ import annotations

import pytest
import torch

from torchdcn.models import resnet18
from torchdcn.models.detection.faster_rcnn import FasterRCNN, faster_rcnn, rpn_detector
from torchdcn.models.detection.postprocess import rescale_boxes
from torchdcn.nn import (
    DeformConv2d,
    DeformRoIPool,
    FrozenBatchNorm2d,
    ModulatedDeformConv2dPack,
    ModulatedDeformRoIPool,
    param_groups,
)
from torchdcn.ops import clip_boxes_to_image

C = 3
TOP_N = {"training": 100, "testing": 100}
SMALL = {
    "num_classes": C,
    "representation_size": 32,
    "deform_hidden": 32,
    "reduce_channels": 16,
    "fpn_channels": 16,
    "rpn_kwargs": {"pre_nms_top_n": TOP_N, "post_nms_top_n": {"training": 40, "testing": 40}},
    "roi_heads_kwargs": {"detections_per_img": 6},
}


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 48, 64, generator=g)]
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0], [30.0, 5.0, 75.0, 40.0]]),
         "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([2])},
    ]  # fmt: skip
    return images, targets


def _check_detections(dets, sizes, cap):
    assert len(dets) == len(sizes)
    for d, (h, w) in zip(dets, sizes):
        assert set(d) == {"boxes", "labels", "scores"}
        k = d["boxes"].shape[0]
        assert (
            d["boxes"].shape == (k, 4) and d["labels"].shape == (k,) and d["scores"].shape == (k,)
        )
        assert 1 <= k <= cap
        assert d["labels"].dtype == torch.int64
        assert ((d["labels"] >= 1) & (d["labels"] <= C)).all()
        assert (d["scores"][:-1] >= d["scores"][1:]).all()
        boxes = d["boxes"]
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()


CONFIGS = {
    "plain-roi_align": {},
    "plain-roi_pool": {"roi_pool": "roi_pool"},
    "v1-deform": {"deform": "v1", "roi_pool": "deform"},
    "v2-mdeform": {"deform": "v2"},  # roi_pool=None -> mdeform
    "fpn-roi_align": {"fpn": True, "anchor_sizes": (16, 32, 64, 128, 256)},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_and_eval_step(name):
    torch.manual_seed(0)
    model = faster_rcnn("resnet18", **SMALL, **CONFIGS[name])
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box_reg"}
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    # a fresh classifier is near-uniform over C + 1 classes
    assert abs(losses["loss_cls"].item() - torch.log(torch.tensor(C + 1.0)).item()) < 0.1
    sum(losses.values()).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            assert torch.isfinite(p.grad).all(), pname
    grads = dict(model.named_parameters())
    for must in ("rpn.head.conv.weight", "roi_heads.predictor.bbox_pred.weight",
                 "roi_heads.head.fc6.weight", "backbone.layer4.1.conv2.weight"):  # fmt: skip
        key = next(k for k in grads if k.startswith(must.rsplit(".", 1)[0]))
        assert grads[key].grad is not None and grads[key].grad.abs().sum() > 0, key
    if model.neck is not None:
        assert all(p.grad is not None for p in model.neck.parameters())
    pooler = model.roi_heads.pooler
    if pooler.deformable:
        branch = pooler.pools[0].offset_fc
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in branch.parameters())

    model.eval()
    orig = [(128, 160), (24, 32)]
    with torch.no_grad():
        dets = model(images, orig_sizes=orig)
        dets_in = model(images)
    _check_detections(dets, orig, cap=6)
    _check_detections(dets_in, [(64, 80), (48, 64)], cap=6)
    # the original-size boxes are the input-size ones rescaled and clipped
    for d, d_in, size_in, size_orig in zip(dets, dets_in, [(64, 80), (48, 64)], orig):
        expected = clip_boxes_to_image(rescale_boxes(d_in["boxes"], size_in, size_orig), size_orig)
        torch.testing.assert_close(d["boxes"], expected)
        assert torch.equal(d["labels"], d_in["labels"])


def test_rpn_detector_train_and_eval_step():
    torch.manual_seed(0)
    model = rpn_detector(
        "resnet18", deform="v1", num_classes=C, rpn_kwargs={"pre_nms_top_n": TOP_N},
        detections_per_img=5,
    )  # fmt: skip
    images, targets = _batch()
    losses = model.train()(images, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.rpn.head.conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        dets = model.eval()(images, orig_sizes=[(32, 40), (96, 128)])
    _check_detections(dets, [(32, 40), (96, 128)], cap=5)
    with pytest.raises(ValueError, match="class_aware=True"):
        rpn_detector("resnet18", num_classes=C, class_aware=False)


def test_preset_structure_freezing_and_param_groups():
    v2 = faster_rcnn("resnet18", deform="v2", frozen_bn=True, freeze_at=2, **SMALL)
    assert isinstance(v2, FasterRCNN) and v2.roi_heads.pooler.kind == "mdeform"
    assert isinstance(v2.roi_heads.pooler.pools[0], ModulatedDeformRoIPool)
    body = v2.backbone
    assert body.feature_strides == {"conv2": 4, "conv3": 8, "conv4": 16, "conv5": 16}
    assert v2.rpn.in_features == ("conv4",)
    assert v2.roi_heads.pooler.feature_names == ("conv5_reduced",)
    assert v2.roi_heads.pooler.strides == (16,)
    # resnet18: 2 blocks x 2 3x3 convs in each of conv3-conv5, all modulated
    mods = [m for m in body.modules() if isinstance(m, ModulatedDeformConv2dPack)]
    assert len(mods) == 12
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    frozen = {n for n, p in v2.named_parameters() if not p.requires_grad}
    stem_and_conv2 = ("backbone.conv1.", "backbone.layer1.")
    assert frozen == {n for n, _ in v2.named_parameters() if n.startswith(stem_and_conv2)}
    assert frozen  # stem and conv2 are frozen
    groups = {g["lr_mult"]: g["params"] for g in param_groups(v2, lr=0.02)}
    offsets = [p for m in mods for p in m.offset_parameters()]
    assert {id(p) for p in groups[0.1]} == {id(p) for p in offsets}  # v2 convs: 0.1
    branch = {id(p) for p in v2.roi_heads.pooler.pools[0].offset_fc.parameters()}
    assert branch <= {id(p) for p in groups[1.0]}  # v2 RoI pooling: base rate
    assert sum(p.numel() for ps in groups.values() for p in ps) == sum(
        p.numel() for p in v2.parameters() if p.requires_grad
    )

    v1 = faster_rcnn("resnet18", deform="v1", roi_pool="deform", **SMALL)
    v1_convs = [m for m in v1.backbone.modules() if isinstance(m, DeformConv2d)]
    assert len(v1_convs) == 3 and not any(m.modulated for m in v1_convs)
    assert isinstance(v1.roi_heads.pooler.pools[0], DeformRoIPool)
    groups = {g["lr_mult"]: g["params"] for g in param_groups(v1, lr=0.02)}
    assert {id(p) for p in groups[0.01]} == {
        id(p) for p in v1.roi_heads.pooler.pools[0].offset_fc.parameters()
    }
    assert faster_rcnn("resnet18", deform="v1", **SMALL).roi_heads.pooler.kind == "roi_align"

    fpn = faster_rcnn("resnet18", fpn=True, **SMALL)
    assert fpn.backbone.size_divisibility == 32
    assert fpn.rpn.in_features == ("p2", "p3", "p4", "p5", "p6")
    assert fpn.roi_heads.pooler.feature_names == ("p2", "p3", "p4", "p5")
    unfrozen = faster_rcnn("resnet18", freeze_at=0, frozen_bn=False, **SMALL)
    assert all(p.requires_grad for p in unfrozen.parameters())
    # no pretrained_backbone: the random backbone trains whole, BatchNorm included
    scratch = faster_rcnn("resnet18", **SMALL)
    assert all(p.requires_grad for p in scratch.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in scratch.modules())


def test_pretrained_backbone_is_loaded(tmp_path):
    torch.manual_seed(1)
    source = resnet18()
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    model = faster_rcnn("resnet18", pretrained_backbone=str(path), **SMALL)
    torch.testing.assert_close(model.backbone.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    # with ImageNet weights: Detectron's frozen BatchNorm, stem and conv2
    assert isinstance(model.backbone.bn1, FrozenBatchNorm2d)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        n
        for n, _ in model.named_parameters()
        if n.startswith(("backbone.conv1.", "backbone.layer1."))
    }
    torch.testing.assert_close(model.backbone.bn1.running_var, source.bn1.running_var)


def test_bad_arguments():
    with pytest.raises(ValueError, match="roi_pool must be one of"):
        faster_rcnn("resnet18", roi_pool="psroi", **SMALL)
    with pytest.raises(ValueError, match="backbone must be one of"):
        faster_rcnn("vgg16", **SMALL)
    with pytest.raises(ValueError, match="one size per level"):
        faster_rcnn("resnet18", fpn=True, **{**SMALL, "anchor_sizes": (32, 64)})
    with pytest.raises(ValueError, match="num_classes"):
        faster_rcnn("resnet18", **{**SMALL, "num_classes": 0})
    model = faster_rcnn("resnet18", **SMALL).train()
    images, _ = _batch()
    with pytest.raises(ValueError, match="targets must be given"):
        model(images)
    with pytest.raises(ValueError, match=r"images\[0\] must be a Tensor\[3, H, W\]"):
        model([torch.rand(1, 32, 32)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])


def test_images_without_boxes_and_autocast():
    torch.manual_seed(0)
    model = faster_rcnn("resnet18", **SMALL).train()
    images, targets = _batch()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(images, [empty, targets[1]])
    assert all(torch.isfinite(v) for v in losses.values())
    losses = model(images, [empty, empty])
    # nothing to regress: both box losses are exactly zero, the classifiers still learn
    assert losses["loss_rpn_box"].item() == 0 and losses["loss_box_reg"].item() == 0
    assert losses["loss_cls"].item() > 0 and losses["loss_rpn_cls"].item() > 0
    sum(losses.values()).backward()
    # bfloat16 autocast: losses and detections stay float32 (boxes need the precision)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
        with torch.no_grad():
            dets = model.eval()(images)
    assert all(d["boxes"].dtype == torch.float32 for d in dets)
    _check_detections(dets, [(64, 80), (48, 64)], cap=6)
