"""Fast R-CNN box head: shapes, training targets and losses on hand-made cases, post-processing
(score threshold, per-class NMS, top-k, clipping, rescaling) on a hand-made case."""

from __future__ import annotations

import math

import pytest
import torch

from torchdcn.models.detection.box_coder import BoxCoder
from torchdcn.models.detection.box_head import FastRCNNPredictor, RoIHeads, TwoFCHead
from torchdcn.models.detection.poolers import RoIPooler
from torchdcn.models.detection.postprocess import (
    postprocess_detections,
    rescale_boxes,
    select_detections,
)
from torchdcn.models.detection.sampler import BalancedSampler


def test_two_fc_head_and_predictor_shapes():
    head = TwoFCHead(8, 7, 32)
    pred = FastRCNNPredictor(32, num_classes=4)
    feats = head(torch.randn(5, 8, 7, 7))
    assert feats.shape == (5, 32) and (feats >= 0).all()
    scores, deltas = pred(feats)
    assert scores.shape == (5, 4) and deltas.shape == (5, 16)
    with pytest.raises(ValueError, match="background"):
        FastRCNNPredictor(32, num_classes=1)
    with pytest.raises(ValueError, match="flatten"):
        head(torch.randn(5, 8, 5, 5))


def test_select_detections_by_hand():
    # 3 candidates x 2 classes. Class 1: boxes 0 and 1 overlap (IoU 81/119 > 0.5) -> only the
    # better (0.9) survives; class 2: box 2 (0.6) and box 0 (0.3, overlaps nothing of class 2
    # at IoU > 0.5)... box 1 of class 2 scores 0.04 <= 0.05 and is dropped.
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 40.0, 45.0]])
    boxes = torch.stack([b, b], dim=1)  # [3, 2, 4]: same box for both classes
    scores = torch.tensor([[0.9, 0.3], [0.8, 0.04], [0.1, 0.6]])
    out = select_detections(boxes, scores, image_size=(40, 30), score_thresh=0.05, nms_thresh=0.5)
    assert out["labels"].dtype == torch.int64
    assert out["scores"].tolist() == pytest.approx([0.9, 0.6, 0.3, 0.1])
    assert out["labels"].tolist() == [1, 2, 2, 1]
    # box 2 is clipped to the 30 x 40 (w x h) image
    expected = torch.tensor(
        [[0.0, 0.0, 10, 10], [20, 20, 30, 40], [0, 0, 10, 10], [20, 20, 30, 40]]
    )
    torch.testing.assert_close(out["boxes"], expected)
    # top-2 and rescaling to an original image twice as wide and half as tall
    out = select_detections(boxes, scores, (40, 30), detections_per_img=2, orig_size=(20, 60))
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.0, 0, 20, 5], [40, 10, 60, 20]]))
    assert out["labels"].tolist() == [1, 2]


def test_rescale_boxes():
    boxes = torch.tensor([[10.0, 10.0, 20.0, 40.0]])
    torch.testing.assert_close(
        rescale_boxes(boxes, (100, 200), (50, 400)), torch.tensor([[20.0, 5.0, 40.0, 20.0]])
    )


def test_postprocess_detections_batch():
    # image 0: two RoIs, image 1: one RoI; 2 foreground classes; logits chosen so that softmax
    # gives known scores: [0, log 3, log 6] -> [0.1, 0.3, 0.6].
    logits = torch.tensor([[0.0, math.log(3), math.log(6)]] * 3)
    box = torch.tensor([0.0, 0.0, 8.0, 8.0])
    boxes = torch.cat([box.repeat(3, 1), box.repeat(3, 1) + 2, box.repeat(3, 1) + 30], dim=0)
    boxes = boxes.reshape(3, 3, 4).reshape(3, 12)
    dets = postprocess_detections(logits, boxes, [2, 1], [(32, 32), (64, 64)], nms_thresh=0.5)
    assert len(dets) == 2
    # image 0: per class, RoI 1's box (2..10) overlaps RoI 0's (IoU 36/92 < 0.5): both kept
    assert dets[0]["scores"].tolist() == pytest.approx([0.6, 0.6, 0.3, 0.3])
    assert dets[0]["labels"].tolist() == [2, 2, 1, 1]
    assert dets[1]["boxes"].tolist() == [[30.0, 30.0, 38.0, 38.0]] * 2
    for d in dets:
        assert set(d) == {"boxes", "labels", "scores"}
    with pytest.raises(ValueError, match="boxes must have shape"):
        postprocess_detections(logits, boxes[:, :8], [2, 1], [(32, 32), (64, 64)])
    with pytest.raises(ValueError, match="boxes_per_image"):
        postprocess_detections(logits, boxes, [1, 1], [(32, 32), (64, 64)])


def _heads(num_classes: int = 3, batch: int = 512) -> RoIHeads:
    torch.manual_seed(0)
    pooler = RoIPooler("roi_align", ["f"], [8], channels=4)
    return RoIHeads(
        pooler, TwoFCHead(4, 7, 16), FastRCNNPredictor(16, num_classes),
        sampler=BalancedSampler(batch, 0.25),
    )  # fmt: skip


def test_training_targets_by_hand():
    heads = _heads()
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    proposals = [torch.tensor([[10.0, 10.0, 50.0, 54.0], [60.0, 60.0, 70.0, 70.0]])]
    rois, labels, targets = heads.select_training_samples(
        proposals, [{"boxes": gt, "labels": torch.tensor([2])}]
    )
    # proposals + the ground truth: IoU 40*40/(40*44) = 0.91 -> class 2, 0 -> background, gt -> 2
    assert torch.equal(rois[0], torch.cat([proposals[0], gt]))
    assert labels.tolist() == [2, 0, 2]
    expected = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(gt, proposals[0][:1])
    torch.testing.assert_close(targets[0:1], expected)
    assert targets[1:].abs().sum() == 0  # background and the exact match have zero targets
    # no ground truth: everything is background
    _, labels, targets = heads.select_training_samples(
        proposals, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    )
    assert labels.tolist() == [0, 0] and targets.abs().sum() == 0


def test_losses_by_hand():
    heads = _heads(num_classes=3)
    with torch.no_grad():  # zero predictor: uniform scores, zero deltas
        for p in heads.predictor.parameters():
            p.zero_()
    feats = {"f": torch.randn(1, 4, 8, 8)}
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    proposals = [torch.tensor([[10.0, 10.0, 50.0, 54.0], [60.0, 60.0, 64.0, 64.0]])]
    heads.train()
    dets, losses = heads(feats, proposals, [(64, 64)], [{"boxes": gt, "labels": torch.tensor([1])}])
    assert dets == [] and set(losses) == {"loss_cls", "loss_box_reg"}
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(math.log(3)))
    # one foreground with targets t = encode(gt, proposal 0), beta = 1: sum 0.5 t^2 (|t| < 1)
    t = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(gt, proposals[0][:1])
    torch.testing.assert_close(losses["loss_box_reg"], (0.5 * t.square()).sum() / 3)
    sum(losses.values()).backward()
    assert heads.predictor.bbox_pred.weight.grad.abs().sum() > 0


def test_eval_gives_documented_format():
    heads = _heads(num_classes=4).eval()
    with torch.no_grad():
        heads.predictor.cls_score.bias.copy_(torch.tensor([0.0, 3.0, 2.0, 1.0]))
    feats = {"f": torch.randn(2, 4, 8, 8)}
    proposals = [torch.rand(30, 2) * 30, torch.rand(20, 2) * 30]
    proposals = [torch.cat([p, p + 20], dim=1) for p in proposals]
    heads.detections_per_img = 7
    dets, losses = heads(feats, proposals, [(64, 60), (50, 64)], orig_sizes=[(128, 120), (25, 32)])
    assert losses == {}
    for d, (h, w) in zip(dets, [(128, 120), (25, 32)]):
        k = len(d["boxes"])
        assert 0 < k <= 7 and d["boxes"].shape == (k, 4) and d["scores"].shape == (k,)
        assert ((d["labels"] >= 1) & (d["labels"] <= 3)).all()
        assert (d["scores"][:-1] >= d["scores"][1:]).all()
        assert (d["boxes"][:, 0::2] <= w).all() and (d["boxes"][:, 1::2] <= h).all()
        assert (d["boxes"] >= 0).all()


def test_bad_call_shapes_are_named():
    heads = _heads()
    feats = {"f": torch.randn(1, 4, 8, 8)}
    box = [torch.tensor([[0.0, 0.0, 20.0, 20.0]])]
    with pytest.raises(ValueError, match="one entry per image, got 1 and 2"):
        heads.eval()(feats, box, [(64, 64), (64, 64)])
    with pytest.raises(ValueError, match=r"orig_sizes must have one \(h, w\) per image \(1\)"):
        heads.eval()(feats, box, [(64, 64)], orig_sizes=[(64, 64), (32, 32)])
    with pytest.raises(ValueError, match="targets are required in training mode"):
        heads.train()(feats, box, [(64, 64)])


def test_sampling_is_balanced_and_seeded():
    gt = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    # 10 foreground proposals (IoU >= 0.5 with the ground truth) and 20 background ones
    fg = torch.tensor([[float(i), 0.0, 40.0 + i, 40.0] for i in range(10)])
    bg = torch.tensor([[100.0 + 5 * i, 100.0, 140.0 + 5 * i, 140.0] for i in range(20)])
    proposals = [torch.cat([fg, bg])]
    target = [{"boxes": gt, "labels": torch.tensor([1])}]

    def sample(seed):
        heads = _heads(batch=8)
        heads.generator = torch.Generator().manual_seed(seed)
        return heads.select_training_samples(proposals, target)

    rois, labels, _ = sample(0)
    assert rois[0].shape == (8, 4)
    assert (labels > 0).sum() == 2 and (labels == 0).sum() == 6  # 8 RoIs, 25 % foreground
    again, _, _ = sample(0)
    assert torch.equal(rois[0], again[0])
    assert any(not torch.equal(rois[0], sample(s)[0][0]) for s in (1, 2, 3))


def test_bad_targets_are_named():
    heads = _heads(num_classes=3)
    props = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    with pytest.raises(ValueError, match=r"labels'\] must be in 1..2"):
        heads.select_training_samples(
            props, [{"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([3])}]
        )
    with pytest.raises(ValueError, match="x2 > x1"):
        heads.select_training_samples(
            props, [{"boxes": torch.tensor([[5.0, 0, 5, 5]]), "labels": torch.tensor([1])}]
        )
    with pytest.raises(ValueError, match=r"labels'\] must be a Tensor\[G\] with G = 1"):
        heads.select_training_samples(
            props, [{"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([1, 2])}]
        )
    # the shared check (.inputs.check_target): non-finite boxes and non-integer labels too
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\] must be finite.*nan"):
        heads.select_training_samples(
            props,
            [{"boxes": torch.tensor([[0.0, 0, float("nan"), 5]]), "labels": torch.tensor([1])}],
        )
    with pytest.raises(TypeError, match=r"targets\[0\]\['labels'\] must be an integer Tensor"):
        heads.select_training_samples(
            props, [{"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([1.7])}]
        )


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"nms_thresh": 50}, ValueError, r"nms_thresh must be in \[0, 1\].*got 50"),
        ({"nms_thresh": -1.0}, ValueError, "nms_thresh must be in"),
        ({"score_thresh": 5}, ValueError, "score_thresh must be in"),
        ({"score_thresh": "0.5"}, TypeError, "score_thresh must be a number"),
        ({"score_thresh": True}, TypeError, "score_thresh must be a number"),
        ({"detections_per_img": 10.0}, TypeError, "detections_per_img must be a positive int"),
        ({"detections_per_img": 0}, ValueError, "detections_per_img must be a positive int"),
    ],
)
def test_post_processing_arguments_are_checked(kwargs, error, message):
    pooler = RoIPooler("roi_align", ["f"], [8], channels=4)
    with pytest.raises(error, match=message):
        RoIHeads(pooler, TwoFCHead(4, 7, 16), FastRCNNPredictor(16, 3), **kwargs)
    heads = RoIHeads(
        pooler, TwoFCHead(4, 7, 16), FastRCNNPredictor(16, 3),
        score_thresh=0, nms_thresh=1, detections_per_img=7,
    )  # fmt: skip
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.0, 1.0, 7)
