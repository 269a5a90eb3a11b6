"""Online hard example mining of R-FCN: the hardest RoIs of a hand-made loss vector, NMS among
them, per-RoI losses against a hand computation, and the mined loss of :class:`RFCNHeads`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchdcn.models.detection.ohem import KeepAllSampler, per_roi_losses, select_hard_examples
from torchdcn.models.detection.ps_head import PSScoreHead
from torchdcn.models.detection.rfcn import RFCNHeads

# five disjoint boxes, then one that overlaps box 1 with IoU 0.81
BOXES = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],
        [20.0, 0.0, 30.0, 10.0],
        [40.0, 0.0, 50.0, 10.0],
        [60.0, 0.0, 70.0, 10.0],
        [80.0, 0.0, 90.0, 10.0],
        [21.0, 0.0, 31.0, 10.0],
    ]
)
LOSSES = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.2, 0.8])


def test_hardest_without_nms():
    keep = select_hard_examples(LOSSES, BOXES, 3, nms_thresh=None)
    assert keep.tolist() == [1, 5, 2]
    assert select_hard_examples(LOSSES, BOXES, 100, None).tolist() == [1, 5, 2, 3, 4, 0]


def test_hardest_after_nms():
    # box 5 (loss 0.8) overlaps the harder box 1 (IoU 9/11 > 0.7): suppressed, box 3 comes in
    assert select_hard_examples(LOSSES, BOXES, 3).tolist() == [1, 2, 3]
    # below the threshold nothing is suppressed
    assert select_hard_examples(LOSSES, BOXES, 3, nms_thresh=0.9).tolist() == [1, 5, 2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        select_hard_examples(LOSSES, BOXES, 0)
    with pytest.raises(ValueError, match=r"losses must be \[R\] and boxes \[R, 4\]"):
        select_hard_examples(LOSSES, BOXES[:3], 2)
    with pytest.raises(ValueError, match="need class_logits"):
        per_roi_losses(
            torch.zeros(2, 3), torch.zeros(2, 12), torch.zeros(3).long(), torch.zeros(2, 4)
        )
    with pytest.raises(ValueError, match="sampler must be None with ohem=True"):
        RFCNHeads(PSScoreHead(4, 3), ohem=True, sampler=KeepAllSampler())
    with pytest.raises(TypeError, match="ohem must be True or False, got 'yes'"):
        RFCNHeads(PSScoreHead(4, 3), ohem="yes")


def test_per_roi_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    deltas = torch.zeros(2, 12)
    deltas[1, 4:8] = torch.tensor([0.5, -2.0, 0.0, 0.0])  # class 1 deltas of RoI 1
    labels = torch.tensor([0, 1])
    targets = torch.zeros(2, 4)
    targets[0] = 5.0  # a background RoI's box target is ignored
    out = per_roi_losses(logits, deltas, labels, targets, beta=1.0)
    e = torch.exp(torch.tensor(1.0))
    ce0 = -torch.log(torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 2))
    ce1 = -torch.log(e / (e + 2))
    box1 = 0.5 * 0.5**2 + (2.0 - 0.5)  # smooth-L1 with beta 1: 0.125 and 1.5
    torch.testing.assert_close(out, torch.stack([ce0, ce1 + box1]))


def test_keep_all_sampler():
    pos, neg = KeepAllSampler()([torch.tensor([2, 0, -1, 1])])
    assert pos[0].tolist() == [True, False, False, True]
    assert neg[0].tolist() == [False, True, False, False]


def test_heads_mine_the_hardest_rois():
    torch.manual_seed(0)
    head = PSScoreHead(4, 3, "f", 8, 3, "ps")
    with torch.no_grad():
        head.cls_conv.weight.normal_(std=1.0)
        head.box_conv.weight.normal_(std=1.0)
    heads = RFCNHeads(head, ohem=True, ohem_batch_size=3, ohem_nms_thresh=None).train()
    features = {"f": torch.randn(2, 4, 8, 8)}
    g = torch.Generator().manual_seed(1)
    proposals = []
    for _ in range(2):
        xy = torch.rand(7, 2, generator=g) * 40
        proposals.append(torch.cat([xy, xy + 8 + torch.rand(7, 2, generator=g) * 20], 1))
    targets = [
        {"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([2])},
    ]
    _, losses = heads(features, proposals, [(64, 64)] * 2, targets)
    # independent: every proposal (+ gt) labelled, all scored, 3 highest losses per image kept
    rois, labels, reg = heads.select_training_samples(proposals, targets)
    assert [len(r) for r in rois] == [8, 8]  # KeepAllSampler: nothing sampled away
    logits, deltas = head({"f": features["f"]}, rois)
    deltas = deltas.repeat(1, 3)
    ce = F.cross_entropy(logits, labels, reduction="none")
    d = deltas.reshape(-1, 3, 4)[torch.arange(16), labels] - reg
    box = torch.where(d.abs() < 1, 0.5 * d**2, d.abs() - 0.5).sum(1) * (labels > 0)
    per = (ce + box).detach()
    keep = torch.cat([torch.topk(per[:8], 3).indices, torch.topk(per[8:], 3).indices + 8])
    torch.testing.assert_close(losses["loss_cls"], ce[keep].sum() / 6)
    torch.testing.assert_close(losses["loss_box_reg"], box[keep].sum() / 6)
    assert sorted(heads.mine(logits, deltas, labels, reg, rois).tolist()) == sorted(keep.tolist())
