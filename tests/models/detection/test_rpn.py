"""RPN: head layout against anchor order, proposals by hand, losses by hand, class-aware RPN."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchdcn.models.detection.anchors import AnchorGenerator
from torchdcn.models.detection.image_list import batch_images
from torchdcn.models.detection.losses import smooth_l1_loss
from torchdcn.models.detection.matcher import Matcher
from torchdcn.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchdcn.models.detection.sampler import BalancedSampler
from torchdcn.ops import box_iou


def _rpn(num_classes=None, sizes=((16,),), ratios=((1.0,),), stride=8, channels=4, **kw):
    gen = AnchorGenerator(sizes, ratios, (stride,))
    k = 1 if num_classes is None else num_classes + 1
    head = RPNHead(channels, gen.num_anchors_per_location()[0], k)
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return RegionProposalNetwork(
        gen, head, class_aware=num_classes is not None, in_features=("c",), **kw
    )


def _zero_head(head: RPNHead) -> None:
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()


def _pass_channel0(head: RPNHead) -> None:
    """Make the 3x3 conv copy input channel 0 (and the logits read it)."""
    _zero_head(head)
    with torch.no_grad():
        head.conv.weight[0, 0, 1, 1] = 1.0
        head.cls_logits.weight[:, 0] = 1.0


def test_head_shapes():
    x = [torch.randn(2, 4, 5, 7), torch.randn(2, 4, 3, 2)]
    logits, deltas = RPNHead(4, 6)(x)
    assert [t.shape for t in logits] == [(2, 6, 5, 7), (2, 6, 3, 2)]
    assert [t.shape for t in deltas] == [(2, 24, 5, 7), (2, 24, 3, 2)]
    logits, deltas = RPNHead(4, 6, num_classes=81)(x[:1])
    assert logits[0].shape == (2, 6 * 81, 5, 7) and deltas[0].shape == (2, 6 * 80 * 4, 5, 7)


def test_flattened_outputs_follow_the_anchor_order():
    rpn = _rpn(num_classes=2, sizes=((16, 32),), ratios=((0.5, 1.0, 2.0),))  # A = 6, K = 3, B = 2
    head = rpn.head
    _pass_channel0(head)
    with torch.no_grad():
        head.cls_logits.weight[:, 0] = 1000.0
        head.cls_logits.bias.copy_(torch.arange(18.0))  # channel a * K + k
        head.bbox_pred.bias.copy_(torch.arange(48.0))  # channel (a * B + b) * 4 + j
    h, w = 3, 4
    feat = torch.zeros(1, 4, h, w)
    feat[0, 0] = torch.arange(h * w, dtype=torch.float32).view(h, w)  # position y * W + x
    images = batch_images([torch.zeros(3, 8 * h, 8 * w)], 8)
    anchors, logits, deltas, level_sizes = rpn.predict(images, {"c": feat})
    t = torch.arange(h * w * 6)
    position, anchor = t // 6, t % 6
    for k in range(3):
        torch.testing.assert_close(logits[0, :, k], (1000 * position + 3 * anchor + k).float())
    torch.testing.assert_close(deltas[0], (8 * anchor[:, None] + torch.arange(8)).float())
    assert level_sizes == [h * w * 6]
    expected = rpn.anchor_generator([(h, w)], "cpu", torch.float32)[0]
    torch.testing.assert_close(anchors, expected)


def test_proposals_by_hand():
    # 2x2 map, one 16x16 anchor per cell centred at (8x, 8y), zero deltas: proposals are the
    # clipped anchors [0,0,8,8] (score .1), [0,0,16,8] (.4), [0,0,8,16] (.3), [0,0,16,16] (.2).
    rpn = _rpn(nms_thresh=0.4).eval()
    _pass_channel0(rpn.head)
    feat = torch.zeros(1, 4, 2, 2)
    feat[0, 0] = torch.tensor([[0.1, 0.4], [0.3, 0.2]])
    images = batch_images([torch.zeros(3, 16, 16)], 8)
    boxes, losses = rpn(images, {"c": feat})
    assert losses == {}
    # NMS at 0.4: [0,0,16,16] and [0,0,8,8] overlap the best box with IoU 0.5
    torch.testing.assert_close(boxes[0], torch.tensor([[0.0, 0, 16, 8], [0.0, 0, 8, 16]]))
    rpn.nms_thresh = 0.7
    anchors, logits, deltas, sizes = rpn.predict(images, {"c": feat})
    boxes, scores = rpn.select_proposals(anchors, logits, deltas, sizes, images.image_sizes)
    torch.testing.assert_close(scores[0], torch.sigmoid(torch.tensor([0.4, 0.3, 0.2, 0.1])))
    rpn.post_nms_top_n["testing"] = 3
    boxes, scores = rpn.select_proposals(anchors, logits, deltas, sizes, images.image_sizes)
    assert boxes[0].shape == (3, 4)


def test_proposals_sorted_capped_clipped_and_finite_under_wild_deltas():
    torch.manual_seed(0)
    rpn = _rpn(sizes=((16, 32),), ratios=((0.5, 1.0, 2.0),), nms_thresh=0.6).eval()
    rpn.post_nms_top_n["testing"] = 20
    with torch.no_grad():
        bias = rpn.head.bbox_pred.bias.view(-1, 4)
        bias[:, :2].normal_(std=0.5)
        bias[:, 2:].normal_(std=100.0)  # exp overflows to inf without the dw/dh clamp
    images = batch_images([torch.zeros(3, 50, 61), torch.zeros(3, 64, 40)], 8)
    feats = {"c": torch.randn(2, 4, 8, 8)}
    anchors, logits, deltas, sizes = rpn.predict(images, feats)
    all_boxes, all_scores = rpn.select_proposals(anchors, logits, deltas, sizes, images.image_sizes)
    for boxes, scores, (h, w) in zip(all_boxes, all_scores, images.image_sizes):
        assert 0 < boxes.shape[0] <= 20 and scores.shape == boxes.shape[:1]
        assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()
        assert torch.all(scores[:-1] >= scores[1:])
        assert torch.all(boxes[:, 0::2] >= 0) and torch.all(boxes[:, 0::2] <= w)
        assert torch.all(boxes[:, 1::2] >= 0) and torch.all(boxes[:, 1::2] <= h)
        iou = box_iou(boxes, boxes).nan_to_num(0.0).fill_diagonal_(0.0)
        assert torch.all(iou <= 0.6)
    forward_boxes, _ = rpn(images, feats)
    for a, b in zip(forward_boxes, all_boxes):
        torch.testing.assert_close(a, b)


def test_two_levels_nms_per_level():
    # zero head: every anchor scores 0.5 and decodes to itself; inside a level no clipped anchor
    # overlaps another by more than 0.5, across levels some are identical ([0, 0, 16, 16] from
    # level 1 cell (1, 1) and level 2 cell (0, 0)), so per-level NMS keeps all 64 + 16.
    gen = AnchorGenerator(((16,), (32,)), ((1.0,),), (8, 16))
    rpn = RegionProposalNetwork(gen, RPNHead(4, 1), in_features=("p3", "p4")).eval()
    _zero_head(rpn.head)
    images = batch_images([torch.zeros(3, 64, 64)], 16)
    feats = {"p3": torch.randn(1, 4, 8, 8), "p4": torch.randn(1, 4, 4, 4)}
    anchors, _, _, sizes = rpn.predict(images, feats)
    assert sizes == [64, 16] and anchors.shape == (80, 4)
    boxes, _ = rpn(images, feats)
    expected = anchors.clamp(0, 64)
    assert sorted(boxes[0].tolist()) == sorted(expected.tolist())


def _hand_loss_setup(num_classes=None):
    """One positive anchor [8,8,24,24] for gt [9,7,25,23] (IoU 0.78); 1 pos + 1 neg sampled."""
    rpn = _rpn(
        num_classes,
        matcher=Matcher(0.7, 0.3),
        sampler=BalancedSampler(2, 0.5),
    ).train()
    _zero_head(rpn.head)
    images = batch_images([torch.zeros(3, 32, 32)], 8)
    target = {"boxes": torch.tensor([[9.0, 7.0, 25.0, 23.0]]), "labels": torch.tensor([2])}
    # deltas of the positive: centre (16, 16) -> (17, 15), size unchanged
    return (
        rpn,
        images,
        {"c": torch.randn(1, 4, 4, 4)},
        [target],
        torch.tensor([1 / 16, -1 / 16, 0, 0]),
    )


def test_plain_losses_by_hand():
    rpn, images, feats, targets, target_deltas = _hand_loss_setup()
    _, losses = rpn(images, feats, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    torch.testing.assert_close(losses["loss_rpn_cls"], torch.tensor(math.log(2.0)))
    expected = smooth_l1_loss(torch.zeros(4), target_deltas, beta=1 / 9) / 2
    torch.testing.assert_close(losses["loss_rpn_box"], expected)


def test_class_aware_losses_by_hand_use_the_gt_class():
    rpn, images, feats, targets, target_deltas = _hand_loss_setup(num_classes=3)
    head = rpn.head
    assert head.num_classes == 4 and head.num_box_sets == 3
    v = torch.tensor([0.1, 0.2, 0.3, -0.1])
    with torch.no_grad():
        head.cls_logits.bias[2] = 2.0  # logits [0, 0, 2, 0] at every anchor
        head.bbox_pred.bias.fill_(5.0)
        head.bbox_pred.bias[4:8] = v  # set 1 = class 2
    _, losses = rpn(images, feats, targets)
    lse = math.log(3 + math.exp(2.0))
    torch.testing.assert_close(losses["loss_rpn_cls"], torch.tensor(((lse - 2) + lse) / 2))
    expected = smooth_l1_loss(v, target_deltas, beta=1 / 9) / 2
    torch.testing.assert_close(losses["loss_rpn_box"], expected)


@pytest.mark.parametrize("num_classes", [None, 3])
def test_training_step_gives_finite_losses_and_gradients_reach_the_head(num_classes):
    torch.manual_seed(0)
    rpn = _rpn(num_classes, sizes=((16, 32),), ratios=((0.5, 1.0, 2.0),)).train()
    images = batch_images([torch.zeros(3, 48, 64), torch.zeros(3, 40, 40)], 8)
    feats = {"c": torch.randn(2, 4, 6, 8, requires_grad=True)}
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 20.0], [30.0, 10.0, 60.0, 45.0]]),
         "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]  # fmt: skip
    boxes, losses = rpn(images, feats, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert losses["loss_rpn_box"] > 0
    sum(losses.values()).backward()
    for name, p in rpn.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert feats["c"].grad.abs().sum() > 0
    assert not any(b.requires_grad for b in boxes)


def test_class_aware_proposals_use_the_most_likely_class_box():
    rpn = _rpn(num_classes=3, nms_thresh=1.0).eval()
    _zero_head(rpn.head)
    with torch.no_grad():
        rpn.head.cls_logits.bias[3] = 1.0  # class 3 most likely
        rpn.head.bbox_pred.bias[8] = 0.5  # class 3's dx: half an anchor (8 px) to the right
        rpn.head.bbox_pred.bias[0] = -0.5  # class 1's dx
    images = batch_images([torch.zeros(3, 16, 16)], 8)
    boxes, scores = rpn.select_proposals(
        *rpn.predict(images, {"c": torch.zeros(1, 4, 2, 2)})[:3], [4], images.image_sizes
    )
    expected = torch.tensor([[0.0, 0, 16, 8], [8, 0, 16, 8], [0, 0, 16, 16], [8, 0, 16, 16]])
    got = sorted(boxes[0].tolist())
    assert got == sorted(expected.tolist())
    p_bg = 1 / (3 + math.e)
    torch.testing.assert_close(scores[0], torch.full((4,), 1 - p_bg))


def test_bad_configuration_and_input():
    gen = AnchorGenerator(((16,),), ((1.0,),), (8,))
    with pytest.raises(ValueError, match=r"class-aware RPN needs head\.num_classes"):
        RegionProposalNetwork(gen, RPNHead(4, 1, 1), class_aware=True)
    with pytest.raises(ValueError, match=r"plain RPN needs head\.num_classes = 1"):
        RegionProposalNetwork(gen, RPNHead(4, 1, 3))
    with pytest.raises(ValueError, match=r"head\.num_anchors is 3"):
        RegionProposalNetwork(gen, RPNHead(4, 3))
    with pytest.raises(ValueError, match="one feature map per anchor level"):
        RegionProposalNetwork(gen, RPNHead(4, 1), in_features=("a", "b"))
    rpn = RegionProposalNetwork(gen, RPNHead(4, 1), in_features=("c",))
    images = batch_images([torch.zeros(3, 16, 16)], 8)
    with pytest.raises(ValueError, match="features lacks"):
        rpn(images, {"conv4": torch.zeros(1, 4, 2, 2)})
    with pytest.raises(ValueError, match="targets must be given"):
        rpn.train()(images, {"c": torch.zeros(1, 4, 2, 2)})
    aware = _rpn(num_classes=3).train()
    with pytest.raises(ValueError, match=r"labels'\] must be in 1..3"):
        aware(
            images,
            {"c": torch.zeros(1, 4, 2, 2)},
            [{"boxes": torch.ones(1, 4), "labels": torch.tensor([4])}],
        )
    with pytest.raises(ValueError, match="features must be Tensor"):
        rpn(images, {"c": torch.zeros(1, 5, 2, 2)})
    assert isinstance(rpn.head.conv, nn.Conv2d)


def test_straddle_thresh_ignores_anchors_crossing_the_border():
    # 16x16 image, 2x2 map, 16 px anchors centred at (8x, 8y): only cell (1, 1) = [0,0,16,16]
    # lies inside. gt [1,0,16,16] makes it positive (IoU 0.94); cells (0, 0) and (1, 0) are
    # negatives (IoU 0.13, 0.29), cell (0, 1) is ignored (0.32); the three straddle the border.
    rpn = _rpn(matcher=Matcher(0.7, 0.3), sampler=BalancedSampler(8, 0.5)).train()
    _zero_head(rpn.head)
    images = batch_images([torch.zeros(3, 16, 16)], 8)
    feats = {"c": torch.zeros(1, 4, 2, 2)}
    targets = [{"boxes": torch.tensor([[1.0, 0.0, 16.0, 16.0]])}]
    # without the threshold: 1 positive + 2 negatives sampled; box loss over 3
    anchors, logits, deltas, _ = rpn.predict(images, feats)
    target = rpn.box_coder.encode(targets[0]["boxes"], anchors[3:4])
    loose = rpn.compute_losses(anchors, logits, deltas, targets, images.image_sizes)
    expected = smooth_l1_loss(torch.zeros(1, 4), target, beta=1 / 9)
    torch.testing.assert_close(loose["loss_rpn_box"], expected / 3)
    rpn.straddle_thresh = 0.0
    strict = rpn.compute_losses(anchors, logits, deltas, targets, images.image_sizes)
    torch.testing.assert_close(strict["loss_rpn_box"], expected / 1)
    torch.testing.assert_close(strict["loss_rpn_cls"], torch.tensor(math.log(2.0)))
    rpn.straddle_thresh = 8.0  # every anchor sticks out by exactly 8 px at most: all kept
    torch.testing.assert_close(
        rpn.compute_losses(anchors, logits, deltas, targets, images.image_sizes)["loss_rpn_box"],
        expected / 3,
    )
    with pytest.raises(ValueError, match="image_sizes must be given"):
        rpn.compute_losses(anchors, logits, deltas, targets)


def test_anchors_in_the_padding_make_no_empty_proposals():
    # image 16x8 padded to 16x16: anchors of column x = 2 (centre x = 16) clip to zero width
    rpn = _rpn(nms_thresh=1.0).eval()
    _zero_head(rpn.head)
    images = batch_images([torch.zeros(3, 16, 16), torch.zeros(3, 16, 8)], 8)
    boxes, _ = rpn(images, {"c": torch.zeros(2, 4, 3, 3)})
    assert boxes[0].shape == (9, 4)
    w = boxes[1][:, 2] - boxes[1][:, 0]
    assert boxes[1].shape == (6, 4) and torch.all(w > 0) and torch.all(boxes[1][:, 2] <= 8)
