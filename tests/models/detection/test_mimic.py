"""R-CNN feature mimicking: the cosine loss against a hand computation, which RoIs each mode
draws, patches cut at the right pixels, finite losses whose gradients reach the shared backbone,
and an inference path identical with and without the branch."""

from __future__ import annotations

import math

import pytest
import torch

from torchdcn.models.detection.faster_rcnn import faster_rcnn
from torchdcn.models.detection.image_list import ImageList
from torchdcn.models.detection.matcher import Matcher
from torchdcn.models.detection.mimic import MimicBranch, mimic_cosine_loss, strip_mimic
from torchdcn.ops import box_iou

C = 3
SMALL = {
    "num_classes": C,
    "representation_size": 32,
    "deform_hidden": 32,
    "reduce_channels": 16,
    "rpn_kwargs": {
        "pre_nms_top_n": {"training": 100, "testing": 100},
        "post_nms_top_n": {"training": 40, "testing": 40},
    },
    "roi_heads_kwargs": {"detections_per_img": 6},
}
MIMIC = {"patch_size": 32, "rois_per_image": 4}


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 48, 64, generator=g)]
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0], [30.0, 5.0, 75.0, 40.0]]),
         "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([2])},
    ]  # fmt: skip
    return images, targets


def test_cosine_loss_equals_hand_computation():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    expected = 0.0
    for u, v in zip(a.tolist(), b.tolist()):
        dot = sum(x * y for x, y in zip(u, v))
        norm = math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v))
        expected += 1.0 - dot / norm
    assert mimic_cosine_loss(a, b).item() == pytest.approx(expected, rel=1e-5)
    assert mimic_cosine_loss(a, b, "mean").item() == pytest.approx(expected / 5, rel=1e-5)
    # identical, orthogonal, opposite and scaled pairs: 0 + 1 + 2 + 0
    u = torch.tensor([[1.0, 2.0], [1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    v = torch.tensor([[1.0, 2.0], [0.0, 5.0], [-2.0, -2.0], [6.0, 8.0]])
    assert mimic_cosine_loss(u, v).item() == pytest.approx(3.0, abs=1e-6)
    assert mimic_cosine_loss(u[:0], v[:0]).item() == 0.0
    with pytest.raises(ValueError, match="reduction"):
        mimic_cosine_loss(a, b, "max")
    with pytest.raises(ValueError, match=r"\[K, D\]"):
        mimic_cosine_loss(a, b[:, :3])


def _proposals():
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 10.0, 90.0, 60.0]])
    g = torch.Generator().manual_seed(2)
    centre = torch.rand(200, 2, generator=g) * 100
    size = 5 + torch.rand(200, 2, generator=g) * 50
    props = torch.cat([centre - size / 2, centre + size / 2], 1).clamp(0, 100)
    # a few certain positives: jittered copies of the ground truths
    props = torch.cat([props, gt + 1.0, gt - 1.0, gt + torch.tensor([0.0, 0.0, 3.0, 3.0])])
    return props, {"boxes": gt, "labels": torch.tensor([2, 3])}


@pytest.mark.parametrize("rois", ["positive", "negative", "all"])
def test_select_draws_only_the_rois_of_its_mode(rois):
    props, target = _proposals()
    branch = MimicBranch(C + 1, 8, rois=rois, rois_per_image=32)
    branch.generator = torch.Generator().manual_seed(0)
    matcher = Matcher(0.5, 0.5, False)
    (boxes,), labels = branch.select([props], [target], matcher)
    candidates = torch.cat([props, target["boxes"]])
    iou = box_iou(target["boxes"], boxes)  # [G, K]
    best, which = iou.max(dim=0)
    cand_best = box_iou(target["boxes"], candidates).max(dim=0).values
    available = {"positive": cand_best >= 0.5, "negative": cand_best < 0.5}
    available["all"] = available["positive"] | available["negative"]
    assert len(boxes) == min(32, int(available[rois].sum()))
    # every drawn box is one of the candidates, drawn at most once
    assert (box_iou(boxes, candidates).max(dim=1).values > 0.9999).all()
    assert len(torch.unique(boxes, dim=0)) == len(boxes)
    expected = torch.where(best >= 0.5, target["labels"][which], torch.zeros_like(which))
    assert torch.equal(labels, expected)
    if rois == "positive":
        assert (best >= 0.5).all()
    elif rois == "negative":
        assert (best < 0.5).all() and (labels == 0).all()
    else:
        assert (best >= 0.5).any() and (best < 0.5).any()


def test_select_caps_per_image_and_handles_images_without_boxes():
    props, target = _proposals()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    branch = MimicBranch(C + 1, 8, rois_per_image=3)
    boxes, labels = branch.select([props, props], [target, empty], Matcher(0.5, 0.5))
    assert [len(b) for b in boxes] == [3, 0] and len(labels) == 3 and (labels > 0).all()
    neg = MimicBranch(C + 1, 8, rois="negative", rois_per_image=5, append_gt_boxes=False)
    boxes, labels = neg.select([props], [empty], Matcher(0.5, 0.5))
    assert len(boxes[0]) == 5 and (labels == 0).all()


def test_patches_are_the_pixels_of_the_box():
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 40, 48, generator=g)
    batch = ImageList(images, [(40, 48), (40, 48)])
    branch = MimicBranch(C + 1, 8, patch_size=16)
    boxes = [torch.tensor([[8.0, 4.0, 24.0, 20.0]]), torch.tensor([[30.0, 20.0, 46.0, 36.0]])]
    patches = branch.crop_patches(batch, boxes)
    # a 16-pixel box into a 16-pixel patch samples every pixel centre once
    torch.testing.assert_close(patches[0], images[0, :, 4:20, 8:24])
    torch.testing.assert_close(patches[1], images[1, :, 20:36, 30:46])
    # a 32-pixel box halves: each patch pixel is the mean of a 2x2 block
    big = branch.crop_patches(batch, [torch.tensor([[0.0, 0.0, 32.0, 32.0]]), boxes[1][:0]])
    pooled = torch.nn.functional.avg_pool2d(images[:1, :, :32, :32], 2)[0]
    torch.testing.assert_close(big[0], pooled)


@pytest.mark.parametrize("deform", [None, pytest.param("v2", marks=pytest.mark.slow)])
def test_losses_finite_and_mimic_gradient_reaches_the_backbone(deform):
    torch.manual_seed(0)
    model = faster_rcnn("resnet18", deform=deform, mimic=MIMIC, **SMALL).train()
    images, targets = _batch()
    losses = model(images, targets)
    assert set(losses) == {
        "loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box_reg", "loss_mimic", "loss_mimic_cls",
    }  # fmt: skip
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert losses["loss_mimic"] > 0
    # (C + 1)-way cross-entropy of a near-zero classifier: about 0.1 * log(4)
    assert losses["loss_mimic_cls"].item() == pytest.approx(0.1 * math.log(C + 1), rel=0.05)
    losses["loss_mimic"].backward(retain_graph=True)
    for name in ("layer3", "layer4"):
        grads = [p.grad for p in getattr(model.backbone, name).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    head_grad = model.roi_heads.head.fc6.weight.grad
    assert head_grad is not None and head_grad.abs().sum() > 0
    assert model.mimic.classifier.weight.grad is None  # the cosine loss does not use it
    losses["loss_mimic_cls"].backward()
    assert model.mimic.classifier.weight.grad.abs().sum() > 0


def test_weights_scale_the_losses_and_cls_loss_can_be_switched_off():
    images, targets = _batch()
    runs = {}
    for name, options in {
        "paper": {},
        "x10": {"mimic_weight": 1.0, "cls_weight": 1.0},
        "no_cls": {"cls_weight": 0.0},
        "mean": {"reduction": "mean"},
    }.items():
        torch.manual_seed(0)
        model = faster_rcnn("resnet18", mimic={**MIMIC, **options}, **SMALL).train()
        model.mimic.generator = torch.Generator().manual_seed(5)
        model.roi_heads.generator = torch.Generator().manual_seed(6)
        model.rpn.generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            runs[name] = model(images, targets)
        if name == "paper":
            boxes, _ = model.mimic.select(
                [torch.zeros(0, 4)] * 2, targets, model.roi_heads.matcher
            )  # only the 3 ground truths are positive without proposals
            assert sum(len(b) for b in boxes) == 3
    paper, x10 = runs["paper"], runs["x10"]
    torch.testing.assert_close(x10["loss_mimic"], 10 * paper["loss_mimic"])
    torch.testing.assert_close(x10["loss_mimic_cls"], 10 * paper["loss_mimic_cls"])
    assert "loss_mimic_cls" not in runs["no_cls"]
    torch.testing.assert_close(runs["no_cls"]["loss_mimic"], paper["loss_mimic"])
    assert runs["mean"]["loss_mimic"] < paper["loss_mimic"]  # divided by |Omega| = 8 > 1


def test_no_roi_to_mimic_gives_zero_losses_that_reach_the_classifier():
    torch.manual_seed(0)
    model = faster_rcnn("resnet18", mimic=MIMIC, **SMALL).train()
    images, _ = _batch()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model(images, empty)
    assert losses["loss_mimic"].item() == 0.0 and losses["loss_mimic_cls"].item() == 0.0
    sum(losses.values()).backward()
    assert model.mimic.classifier.weight.grad is not None


@pytest.mark.parametrize("deform", [None, "v2"])
def test_inference_is_identical_with_and_without_the_branch(deform):
    torch.manual_seed(0)
    with_branch = faster_rcnn("resnet18", deform=deform, mimic=MIMIC, **SMALL)
    plain = faster_rcnn("resnet18", deform=deform, **SMALL)
    extra = set(with_branch.state_dict()) - set(plain.state_dict())
    assert extra == {"mimic.classifier.weight", "mimic.classifier.bias"}
    plain.load_state_dict(strip_mimic(with_branch.state_dict()), strict=True)
    # the branch's parameters are not on the inference path: garbage there changes nothing
    with torch.no_grad():
        with_branch.mimic.classifier.weight.fill_(1e6)
    calls = []
    with_branch.mimic.register_forward_pre_hook(lambda *a: calls.append(1))
    images, _ = _batch()
    with torch.no_grad():
        a = with_branch.eval()(images, orig_sizes=[(128, 160), (48, 64)])
        b = plain.eval()(images, orig_sizes=[(128, 160), (48, 64)])
    assert calls == []
    assert len(a) == len(b) == 2
    for da, db in zip(a, b):
        assert set(da) == set(db) == {"boxes", "labels", "scores"}
        assert len(da["boxes"]) > 0
        for key in da:
            assert torch.equal(da[key], db[key]), key


def test_preset_and_branch_refuse_bad_options():
    with pytest.raises(TypeError, match="mimic"):
        faster_rcnn("resnet18", mimic="positive", **SMALL)
    with pytest.raises(ValueError, match="rois"):
        MimicBranch(C + 1, 8, rois="some")
    with pytest.raises(ValueError, match="patch_size"):
        MimicBranch(C + 1, 8, patch_size=0)
    with pytest.raises(ValueError, match="reduction"):
        MimicBranch(C + 1, 8, reduction="max")
    with pytest.raises(ValueError, match="mimic_weight"):
        MimicBranch(C + 1, 8, mimic_weight=-1.0)
    with pytest.raises(ValueError, match="num_classes"):
        MimicBranch(1, 8)
    branch = faster_rcnn("resnet18", mimic=True, **SMALL).mimic
    assert (branch.rois, branch.rois_per_image, branch.patch_size) == ("positive", 32, 224)
    assert (branch.mimic_weight, branch.cls_weight, branch.reduction) == (0.1, 0.1, "sum")
    assert branch.classifier.out_features == C + 1 and branch.classifier.in_features == 32
    assert faster_rcnn("resnet18", **SMALL).mimic is None


def test_mask_rcnn_preset_keeps_the_branch():
    from torchdcn.models.detection.mask_rcnn import mask_rcnn

    torch.manual_seed(0)
    model = mask_rcnn("resnet18", mimic=MIMIC, mask_channels=8, mask_convs=1, **SMALL).train()
    assert isinstance(model.mimic, MimicBranch)
    images, targets = _batch()
    for image, target in zip(images, targets):
        masks = torch.zeros(len(target["boxes"]), *image.shape[1:], dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, target["boxes"].int().tolist()):
            m[y1:y2, x1:x2] = 1
        target["masks"] = masks
    losses = model(images, targets)
    assert {"loss_mask", "loss_mimic", "loss_mimic_cls"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
