"""Every detection preset at ``base_channels=16`` (a ResNet-18 of 16/32/64/128 channels): the
heads take their widths from the backbone's ``feature_info``, and the model trains (finite
losses, gradients down to conv3) and detects on a 64 x 64 image."""

from __future__ import annotations

import pytest
import torch

from torchdcn.models.detection import faster_rcnn, mask_rcnn, rfcn, rpn_detector

WIDTHS = [16, 32, 64, 128]  # conv2 ... conv5 of a ResNet-18 at base 16

CASES = {
    "faster_rcnn": (faster_rcnn, {}),
    "faster_rcnn_v2": (faster_rcnn, {"deform": "v2"}),
    "faster_rcnn_fpn": (faster_rcnn, {"fpn": True, "fpn_channels": 32}),
    "faster_rcnn_mimic": (faster_rcnn, {"deform": "v1", "mimic": {"patch_size": 32}}),
    "mask_rcnn_v1_mimic": (mask_rcnn, {"deform": "v1", "mimic": {"rois": "all", "patch_size": 32}}),
    "rfcn_deform": (rfcn, {"deform": "v1", "ps_pool": "deform", "reduce_channels": 64}),
    "rpn_detector": (rpn_detector, {"reduce_channels": 48}),
}


def _data():
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[0, 10:40, 12:50] = 1
    target = {"boxes": torch.tensor([[12.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([2])}
    return [torch.rand(3, 64, 64)], [{**target, "masks": mask}]


@pytest.mark.parametrize("case", list(CASES))
def test_preset_at_base_16_trains_and_detects(case):
    build, kwargs = CASES[case]
    torch.manual_seed(0)
    model = build(
        "resnet18", num_classes=2, base_channels=16, frozen_bn=True, freeze_at=2, **kwargs
    )
    assert [i.channels for i in model.backbone.feature_info] == WIDTHS
    # the RPN runs on conv4 (or on the FPN levels; the class-aware RPN on conv5 reduced)
    rpn_in = 32 if kwargs.get("fpn") else WIDTHS[2]
    if build is rpn_detector:
        rpn_in = kwargs["reduce_channels"]
    assert model.rpn.head.conv.in_channels == rpn_in
    if hasattr(model, "neck") and model.neck is not None and not kwargs.get("fpn"):
        assert model.neck.feature_info[-1].channels == kwargs.get("reduce_channels", 256)
    images, targets = _data()
    losses = model.train()(images, targets)
    expected = {"loss_rpn_cls", "loss_rpn_box"}
    if build is not rpn_detector:
        expected |= {"loss_cls", "loss_box_reg"}
    if build is mask_rcnn:
        expected.add("loss_mask")
    if "mimic" in kwargs:
        expected |= {"loss_mimic", "loss_mimic_cls"}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grad = model.backbone.layer2[0].conv1.weight.grad  # conv3: trained (freeze_at=2)
    assert grad is not None and grad.abs().sum() > 0
    assert model.backbone.layer1[0].conv1.weight.grad is None  # conv2: frozen
    with torch.no_grad():
        (out,) = model.eval()(images, orig_sizes=[(128, 128)])
    boxes = out["boxes"]
    assert boxes.shape[1] == 4 and len(boxes) == len(out["scores"]) == len(out["labels"])
    if len(boxes):  # in the original image (twice the input's size)
        assert boxes.min() >= 0 and boxes.max() <= 128
        assert set(out["labels"].tolist()) <= {1, 2}
    if build is mask_rcnn:
        assert out["masks"].shape[-2:] == (128, 128)


def test_base_channels_refuses_bad_values_naming_it():
    for build in (faster_rcnn, mask_rcnn, rfcn, rpn_detector):
        with pytest.raises(ValueError, match="base_channels must be a positive int"):
            build("resnet18", num_classes=2, base_channels=0)
    with pytest.raises(ValueError, match="base_channels must be a multiple of 16"):
        faster_rcnn("resnext50_32x4d", num_classes=2, base_channels=8)
