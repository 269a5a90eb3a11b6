"""Mask R-CNN: the mask head's shapes, the mask loss on the foreground RoIs' own class only,
train / eval steps of the preset (finite named losses incl. ``loss_mask``; masks
``[K, 1, H, W]`` in [0, 1] pasted in the documented canvas), the v2 poolings, the CLI preset."""

from __future__ import annotations

import pytest
import torch

from torchdcn.models.detection.mask_head import MaskHead, MaskPredictor, mask_loss
from torchdcn.models.detection.mask_rcnn import MaskRCNN, MaskRoIHeads, mask_rcnn
from torchdcn.models.detection.paste_masks import paste_masks_in_image
from torchdcn.models.detection.postprocess import rescale_boxes
from torchdcn.nn import ModulatedDeformRoIPool
from torchdcn.ops import clip_boxes_to_image

C = 3
SMALL = {
    "num_classes": C,
    "representation_size": 32,
    "deform_hidden": 32,
    "reduce_channels": 16,
    "fpn_channels": 16,
    "mask_channels": 16,
    "rpn_kwargs": {
        "pre_nms_top_n": {"training": 100, "testing": 100},
        "post_nms_top_n": {"training": 40, "testing": 40},
    },
    "roi_heads_kwargs": {"detections_per_img": 6},
}
LOSSES = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box_reg", "loss_mask"}


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 48, 64, generator=g)]
    m1 = torch.zeros(2, 64, 80, dtype=torch.uint8)
    m1[0, 12:48, 10:38] = 1
    m1[1, 6:38, 32:70] = 1
    m2 = torch.zeros(1, 48, 64, dtype=torch.uint8)
    m2[0, 5:38, 5:28] = 1
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0], [30.0, 5.0, 75.0, 40.0]]),
         "labels": torch.tensor([1, 3]), "masks": m1},
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([2]),
         "masks": m2},
    ]  # fmt: skip
    return images, targets


def test_mask_head_and_predictor_shapes():
    head = MaskHead(8, 16)
    assert len(head.convs) == 4 and all(c.kernel_size == (3, 3) for c in head.convs)
    assert head.deconv.kernel_size == (2, 2) and head.deconv.stride == (2, 2)
    out = MaskPredictor(16, 5)(head(torch.rand(3, 8, 14, 14)))
    assert out.shape == (3, 5, 28, 28)
    with pytest.raises(ValueError, match=r"x must have shape \[R, 8, S, S\]"):
        head(torch.rand(3, 7, 14, 14))


def test_mask_loss_only_on_own_class():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 5, 5, generator=g, requires_grad=True)
    labels = torch.tensor([2, 4, 1])
    targets = (torch.rand(3, 5, 5, generator=g) > 0.5).float()
    loss = mask_loss(logits, labels, targets)
    own = logits[torch.arange(3), labels - 1]
    p = own.detach().sigmoid()
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    grad = logits.grad
    for r, lab in enumerate(labels.tolist()):
        for c in range(4):
            if c == lab - 1:
                torch.testing.assert_close(grad[r, c], (p[r] - targets[r]) / targets.numel())
            else:
                assert torch.equal(grad[r, c], torch.zeros(5, 5)), (r, c)
    zero = mask_loss(logits[:0], labels[:0], targets[:0])
    assert zero.item() == 0.0


@pytest.mark.parametrize("config", ["plain", "v2"])
def test_train_and_eval_step(config):
    torch.manual_seed(0)
    model = mask_rcnn("resnet18", deform=None if config == "plain" else "v2", **SMALL)
    assert isinstance(model, MaskRCNN) and isinstance(model.roi_heads, MaskRoIHeads)
    kind = "mdeform" if config == "v2" else "roi_align"
    heads = model.roi_heads
    assert (heads.pooler.kind, heads.mask_pooler.kind) == (kind, kind)
    assert heads.pooler.output_size == (7, 7) and heads.mask_pooler.output_size == (14, 14)
    if config == "v2":
        assert isinstance(heads.mask_pooler.pools[0], ModulatedDeformRoIPool)
        assert heads.mask_pooler.pools[0].offset_fc is not heads.pooler.pools[0].offset_fc
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSSES
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    # a fresh predictor (std 0.001) gives logits ~0: BCE ~ log 2
    assert abs(losses["loss_mask"].item() - 0.6931) < 0.01
    losses["loss_mask"].backward()
    for name in ("mask_head.convs.0.weight", "mask_predictor.mask_logits.weight"):
        grad = dict(heads.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    if config == "v2":
        assert all(p.grad is not None for p in heads.mask_pooler.pools[0].offset_fc.parameters())
    assert heads.predictor.cls_score.weight.grad is None  # the mask loss does not reach it

    model.eval()
    orig = [(128, 160), (24, 32)]
    with torch.no_grad():
        dets = model(images, orig_sizes=orig)
        dets_in = model(images)
    for d, d_in, size_in, size_orig in zip(dets, dets_in, [(64, 80), (48, 64)], orig):
        k = len(d["boxes"])
        assert set(d) == {"boxes", "labels", "scores", "masks"}
        assert 1 <= k <= 6
        assert d["masks"].shape == (k, 1, *size_orig) and d_in["masks"].shape == (k, 1, *size_in)
        assert d["masks"].dtype == torch.float32
        assert (d["masks"] >= 0).all() and (d["masks"] <= 1).all()
        expected = clip_boxes_to_image(rescale_boxes(d_in["boxes"], size_in, size_orig), size_orig)
        torch.testing.assert_close(d["boxes"], expected)
        assert torch.equal(d["labels"], d_in["labels"])
        # nothing outside the boxes (pixel centres outside them), something inside
        outside = paste_masks_in_image(torch.ones(k, 28, 28), d["boxes"], size_orig) == 0
        assert (d["masks"][outside] == 0).all() and (d["masks"][~outside] > 0).all()


def test_eval_masks_are_the_own_class_sigmoid_pasted(monkeypatch):
    torch.manual_seed(0)
    model = mask_rcnn("resnet18", **SMALL).eval()
    images, _ = _batch()
    seen = {}
    original = model.roi_heads.mask_logits

    def spy(features, boxes):
        seen["logits"] = original(features, boxes)
        seen["boxes"] = [b.clone() for b in boxes]
        return seen["logits"]

    monkeypatch.setattr(model.roi_heads, "mask_logits", spy)
    with torch.no_grad():
        dets = model(images[:1], orig_sizes=[(32, 40)])
    (d,) = dets
    k = len(d["boxes"])
    own = seen["logits"][torch.arange(k), d["labels"] - 1].sigmoid()
    boxes = clip_boxes_to_image(rescale_boxes(seen["boxes"][0], (64, 80), (32, 40)), (32, 40))
    torch.testing.assert_close(d["masks"], paste_masks_in_image(own, boxes, (32, 40)))


def test_training_needs_masks_and_refuses_bad_arguments():
    model = mask_rcnn("resnet18", **SMALL).train()
    images, targets = _batch()
    del targets[1]["masks"]
    with pytest.raises(ValueError, match=r"targets\[1\] must have 'masks'"):
        model(images, targets)
    targets[1]["masks"] = torch.zeros(2, 48, 64, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"one per box"):
        model(images, targets)
    with pytest.raises(ValueError, match="mask_pool must be one of"):
        mask_rcnn("resnet18", mask_pool="bilinear", **SMALL)
    with pytest.raises(ValueError, match="mask_resolution must be a positive int"):
        mask_rcnn("resnet18", mask_resolution=0, **SMALL)
    plain = mask_rcnn("resnet18", **SMALL)
    from torchdcn.models.detection.box_head import RoIHeads

    box_only = RoIHeads(plain.roi_heads.pooler, plain.roi_heads.head, plain.roi_heads.predictor)
    with pytest.raises(TypeError, match="roi_heads must be a MaskRoIHeads"):
        MaskRCNN(plain.backbone, plain.rpn, box_only, plain.neck)


def test_masks_must_be_at_the_size_of_their_image():
    # masks at another size (e.g. the original image's, not resized with it) used to train
    # silently on wrong targets; a list of masks raised an AttributeError
    model = mask_rcnn("resnet18", base_channels=8, **SMALL).train()
    images, targets = _batch()
    big = torch.zeros(1, 96, 128, dtype=torch.uint8)
    big[0, 8:76, 8:56] = 1  # image 1's mask at twice its size (48 x 64)
    with pytest.raises(
        ValueError, match=r"targets\[1\]\['masks'\] must be \[G, H, W\] = \[1, 48, 64\].*"
        r"got \[1, 96, 128\]"
    ):  # fmt: skip
        model(images, [targets[0], {**targets[1], "masks": big}])
    with pytest.raises(TypeError, match=r"targets\[1\]\['masks'\] must be a Tensor.*got list"):
        model(images, [targets[0], {**targets[1], "masks": list(targets[1]["masks"])}])
    # the mask head checks it too when used on its own
    heads = model.roi_heads
    features = model.features(model.preprocess(images))
    proposals = [t["boxes"] for t in targets]
    with pytest.raises(ValueError, match=r"targets\[1\]\['masks'\]"):
        heads(features, proposals, [(64, 80), (48, 64)], [targets[0], {**targets[1], "masks": big}])
    losses = model(images, targets)
    assert set(losses) == LOSSES and all(torch.isfinite(v) for v in losses.values())


def test_explicit_pool_choice_and_fpn_structure():
    model = mask_rcnn("resnet18", deform="v2", roi_pool="roi_align", mask_pool="mdeform", **SMALL)
    assert model.roi_heads.pooler.kind == "roi_align"
    assert model.roi_heads.mask_pooler.kind == "mdeform"
    fpn = mask_rcnn("resnet18", fpn=True, anchor_sizes=(16, 32, 64, 128, 256), **SMALL)
    assert fpn.roi_heads.mask_pooler.feature_names == ("p2", "p3", "p4", "p5")
    assert fpn.roi_heads.mask_pooler.feature_names == fpn.roi_heads.pooler.feature_names
