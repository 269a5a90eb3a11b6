"""R-FCN: a train step of the preset (plain / deformable PS pooling / OHEM, plain / v1 / v2
backbones) gives finite named losses and gradients reaching the offset branch; an eval step gives
detections in the documented format; the structure is the v1 paper's; the CLI preset builds."""

from __future__ import annotations

import pytest
import torch

from torchdcn.models.detection import RFCN, rfcn
from torchdcn.models.detection.faster_rcnn import FasterRCNN
from torchdcn.models.detection.ohem import KeepAllSampler
from torchdcn.models.detection.postprocess import rescale_boxes
from torchdcn.models.detection.sampler import BalancedSampler
from torchdcn.nn import DeformConv2d, DeformPSRoIPool, ModulatedDeformConv2dPack, param_groups
from torchdcn.ops import clip_boxes_to_image

C = 3
SMALL = {
    "num_classes": C,
    "reduce_channels": 16,
    "rpn_kwargs": {
        "pre_nms_top_n": {"training": 100, "testing": 100},
        "post_nms_top_n": {"training": 40, "testing": 40},
    },
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
        assert d["labels"].dtype == torch.int64 and ((d["labels"] >= 1) & (d["labels"] <= C)).all()
        assert (d["scores"][:-1] >= d["scores"][1:]).all()
        boxes = d["boxes"]
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all()


CONFIGS = {
    "plain-ps": {},
    "v1-deform": {"deform": "v1", "ps_pool": "deform"},
    "v2-deform-ohem-class_specific": {
        "deform": "v2",
        "ps_pool": "deform",
        "ohem": True,
        "class_agnostic_boxes": False,
    },
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_and_eval_step(name):
    torch.manual_seed(0)
    model = rfcn("resnet18", **SMALL, **CONFIGS[name])
    images, targets = _batch()
    losses = model.train()(images, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box_reg"}
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    # a fresh head (score maps of std 0.01) is near-uniform over the C + 1 classes
    assert abs(losses["loss_cls"].item() - torch.log(torch.tensor(C + 1.0)).item()) < 0.1
    sum(losses.values()).backward()
    for pname, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), pname
    head = model.roi_heads.pooler
    for p in (head.cls_conv.weight, head.box_conv.weight, model.neck.conv.weight,
              model.rpn.head.conv.weight, model.backbone.layer4[1].conv2.weight):  # fmt: skip
        assert p.grad is not None and p.grad.abs().sum() > 0
    if head.kind == "deform":
        for pool in (head.cls_pool, head.box_pool):
            grad = pool.conv_offset.weight.grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    model.eval()
    orig = [(128, 160), (24, 32)]
    with torch.no_grad():
        dets = model(images, orig_sizes=orig)
        dets_in = model(images)
    _check_detections(dets, orig, cap=6)
    _check_detections(dets_in, [(64, 80), (48, 64)], cap=6)
    for d, d_in, size_in, size_orig in zip(dets, dets_in, [(64, 80), (48, 64)], orig):
        expected = clip_boxes_to_image(rescale_boxes(d_in["boxes"], size_in, size_orig), size_orig)
        torch.testing.assert_close(d["boxes"], expected)


def test_structure():
    model = rfcn("resnet18", deform="v1", ps_pool="deform", num_classes=C)
    assert isinstance(model, RFCN) and isinstance(model, FasterRCNN)
    assert model.rpn.in_features == ("conv4",)
    assert model.neck.conv.out_channels == 1024  # the papers' 1x1 reduction
    head = model.roi_heads.pooler
    assert head.feature_names == ("conv5_reduced",) and head.stride == 16
    assert head.cls_conv.out_channels == 7 * 7 * (C + 1) and head.box_conv.out_channels == 7 * 7 * 4
    assert isinstance(head.cls_pool, DeformPSRoIPool) and head.cls_pool.gamma == 0.1
    assert isinstance(model.roi_heads.sampler, BalancedSampler)
    assert model.roi_heads.sampler.batch_size_per_image == 128
    assert model.roi_heads.sampler.positive_fraction == 0.25
    assert len([m for m in model.backbone.modules() if isinstance(m, DeformConv2d)]) == 3
    assert model.num_classes == C
    # the offset convs are in the base-rate group (v1: offset learning rate = base rate)
    groups = {g["lr_mult"]: g["params"] for g in param_groups(model, lr=0.01)}
    assert {id(p) for p in head.cls_pool.conv_offset.parameters()} <= {id(p) for p in groups[1.0]}

    v2 = rfcn("resnet18", deform="v2", ohem=True, num_classes=C, reduce_channels=8)
    assert len([m for m in v2.backbone.modules() if isinstance(m, ModulatedDeformConv2dPack)]) == 12
    assert v2.roi_heads.pooler.kind == "ps" and v2.roi_heads.pooler.cls_pool is None
    assert isinstance(v2.roi_heads.sampler, KeepAllSampler) and v2.roi_heads.ohem_batch_size == 128
    assert v2.roi_heads.ohem_nms_thresh == 0.7


def test_bad_arguments():
    with pytest.raises(ValueError, match="ps_pool must be one of"):
        rfcn("resnet18", ps_pool="roi_align", **SMALL)
    with pytest.raises(ValueError, match="num_classes"):
        rfcn("resnet18", **{**SMALL, "num_classes": 0})
    with pytest.raises(ValueError, match="reduce_channels must be positive"):
        rfcn("resnet18", **{**SMALL, "reduce_channels": 0})
    with pytest.raises(ValueError, match="backbone must be one of"):
        rfcn("vgg16", **SMALL)
    model = rfcn("resnet18", **SMALL).train()
    with pytest.raises(ValueError, match="targets must be given"):
        model(_batch()[0])


def test_cli_preset_builds():
    from torchdcn.cli.presets import get_preset

    preset = get_preset("rfcn")
    assert preset.task == "detection"
    config = preset.model_config(
        {"backbone": "resnet18", "deform": "v1", "ps_pool": "deform", "num_classes": C}
    )
    assert config == {
        "backbone": "resnet18", "deform": "v1", "ps_pool": "deform", "num_classes": C,
        "frozen_bn": False, "freeze_at": 0,  # no pretrained_backbone: the backbone trains whole
    }  # fmt: skip
    model = preset.build(**config)
    assert isinstance(model, RFCN) and model.roi_heads.pooler.kind == "deform"
    assert preset.model_config({"backbone": "resnet18"})["ps_pool"] == "ps"
    with pytest.raises(ValueError, match="--roi-pool and --fpn apply to faster_rcnn"):
        preset.model_config({"roi_pool": "roi_align"})
    with pytest.raises(ValueError, match="--ps-pool must be one of"):
        preset.model_config({"ps_pool": "max"})


def test_command_line_flags_reach_the_preset():
    from torchdcn import cli
    from torchdcn.cli.presets import get_preset

    args = cli.build_parser().parse_args(["train", "--model", "rfcn", "--ps-pool", "deform"])
    settings = cli.resolve_settings(args.command, args)
    assert settings["task"] == "detection" and settings["optimizer"] == "sgd"
    config = get_preset("rfcn").model_config(settings)
    assert (config["ps_pool"], config["backbone"], config["deform"]) == ("deform", "resnet50", None)
    args = cli.build_parser().parse_args(["train", "--model", "faster_rcnn", "--ps-pool", "ps"])
    with pytest.raises(ValueError, match="--ps-pool applies to rfcn"):
        get_preset("faster_rcnn").model_config(cli.resolve_settings(args.command, args))
