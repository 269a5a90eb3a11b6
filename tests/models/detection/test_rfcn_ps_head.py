"""R-FCN's position-sensitive head: output shapes, the score-map channel layout and voting against
hand-computed averages, and deformable PS pooling (zero offsets = aligned PS pooling; a constant
offset = the RoI shifted by gamma * offset * width)."""

from __future__ import annotations

import pytest
import torch

from torchdcn.models.detection.ps_head import PSScoreHead, vote
from torchdcn.ops import ps_roi_align


def _boxes():
    return [
        torch.tensor([[4.0, 6.0, 60.0, 50.0], [20.0, 10.0, 44.0, 40.0], [0.0, 0.0, 80.0, 64.0]]),
        torch.tensor([[8.0, 8.0, 40.0, 30.0]]),
    ]


@pytest.mark.parametrize("pool", ["ps", "ps_align", "deform"])
@pytest.mark.parametrize("agnostic", [True, False])
def test_output_shapes(pool, agnostic):
    torch.manual_seed(0)
    c1, k = 4, 7  # C + 1 = 4 classes with the background, k = 7 as the papers
    head = PSScoreHead(8, c1, "f", 16, k, pool, class_agnostic_boxes=agnostic)
    b = 4 if agnostic else 4 * c1
    assert head.cls_conv.out_channels == k * k * c1 and head.box_conv.out_channels == k * k * b
    x = torch.randn(2, 8, 4, 5)
    cls_maps, box_maps = head.score_maps(x)
    assert cls_maps.shape == (2, k * k * c1, 4, 5) and box_maps.shape == (2, k * k * b, 4, 5)
    cls_bins, box_bins = head.pool_bins({"f": x}, _boxes())
    assert cls_bins.shape == (4, c1, k, k) and box_bins.shape == (4, b, k, k)
    logits, deltas = head({"f": x}, _boxes())
    assert logits.shape == (4, c1) and deltas.shape == (4, b)
    torch.testing.assert_close(logits, cls_bins.mean(dim=(2, 3)))
    if pool == "deform":
        # SPEC 4: one (x, y) field pair per class and bin; the boxes' offsets class-agnostic
        assert head.cls_pool.conv_offset.out_channels == 2 * k * k * c1
        assert head.box_pool.conv_offset.out_channels == 2 * k * k
        agn = PSScoreHead(8, c1, "f", 16, k, pool, offset_class_agnostic=True)
        assert agn.cls_pool.conv_offset.out_channels == 2 * k * k


def test_vote_is_the_average_of_the_bins():
    bins = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[-1.0, 0.0], [0.0, 5.0]]]])  # [1, 2, 2, 2]
    torch.testing.assert_close(vote(bins), torch.tensor([[3.0, 1.0]]))
    with pytest.raises(ValueError, match=r"bins must be \[R, D, ph, pw\]"):
        vote(torch.zeros(2, 3))


@pytest.mark.parametrize("pool", ["ps", "ps_align", "deform"])
def test_channel_layout_and_voting_by_hand(pool):
    # constant score maps: map (c * k + i) * k + j holds bias b[c, i, j] everywhere, so bin (i, j)
    # of output c pools exactly b[c, i, j] and voting gives the mean of b[c]
    k, c1 = 2, 2
    head = PSScoreHead(1, c1, "f", 16, k, pool)
    cls_bias = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 60.0])  # class 0, class 1
    box_bias = torch.arange(16, dtype=torch.float32)  # 4 outputs x 2 x 2 bins
    with torch.no_grad():
        head.cls_conv.weight.zero_()
        head.cls_conv.bias.copy_(cls_bias)
        head.box_conv.weight.zero_()
        head.box_conv.bias.copy_(box_bias)
    x = torch.randn(1, 1, 6, 6)
    logits, deltas = head({"f": x}, [torch.tensor([[16.0, 16.0, 64.0, 64.0]])])
    torch.testing.assert_close(logits, torch.tensor([[2.5, 30.0]]))
    # box output d averages biases 4d .. 4d + 3
    torch.testing.assert_close(deltas, torch.tensor([[1.5, 5.5, 9.5, 13.5]]))
    cls_bins, _ = head.pool_bins({"f": x}, [torch.tensor([[16.0, 16.0, 64.0, 64.0]])])
    torch.testing.assert_close(cls_bins[0, 1], torch.tensor([[10.0, 20.0], [30.0, 60.0]]))


def _twins(offset_class_agnostic=False):
    torch.manual_seed(0)
    deform = PSScoreHead(6, 3, "f", 8, 3, "deform", offset_class_agnostic=offset_class_agnostic)
    align = PSScoreHead(6, 3, "f", 8, 3, "ps_align")
    align.load_state_dict(
        {k: v for k, v in deform.state_dict().items() if k.startswith(("cls_conv", "box_conv"))}
    )
    return deform, align


def test_deformable_with_zeroed_offsets_is_ps_align():
    deform, align = _twins()
    x = torch.randn(2, 6, 9, 11)
    boxes = _boxes()
    # fresh: the offset convs are zero-initialised
    assert deform.cls_pool.conv_offset.weight.abs().sum() == 0
    for a, b in zip(deform({"f": x}, boxes), align({"f": x}, boxes)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # and the same plain maps are what ps_roi_align of the score maps gives
    cls_maps, _ = align.score_maps(x)
    expected = ps_roi_align(cls_maps, boxes, 3, 1 / 8, 2).mean(dim=(2, 3))
    torch.testing.assert_close(align({"f": x}, boxes)[0], expected)
    # a nonzero offset branch changes the result (the test can fail)
    with torch.no_grad():
        deform.cls_pool.conv_offset.weight.normal_(std=1.0)
    assert not torch.allclose(deform({"f": x}, boxes)[0], align({"f": x}, boxes)[0])


@pytest.mark.parametrize("offset_class_agnostic", [False, True])
def test_constant_offset_shifts_the_roi(offset_class_agnostic):
    # x fields all 0.5 (channel 2p of every pair, SPEC 1: x first), y fields 0: every bin moves by
    # gamma * 0.5 * roi_w feature cells, i.e. the RoI moves right by 0.05 * its width in pixels
    deform, align = _twins(offset_class_agnostic)
    pairs = 1 if offset_class_agnostic else 3
    bias = torch.zeros(pairs, 2, 3 * 3)
    bias[:, 0] = 0.5
    with torch.no_grad():
        deform.cls_pool.conv_offset.bias.copy_(bias.flatten())
    x = torch.randn(2, 6, 9, 11)
    boxes = _boxes()
    shifted = []
    for b in boxes:
        dx = 0.05 * (b[:, 2] - b[:, 0])
        shifted.append(b + torch.stack([dx, torch.zeros_like(dx), dx, torch.zeros_like(dx)], 1))
    torch.testing.assert_close(
        deform({"f": x}, boxes)[0], align({"f": x}, shifted)[0], rtol=1e-4, atol=1e-5
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="pool must be one of"):
        PSScoreHead(8, 3, pool="max")
    with pytest.raises(ValueError, match="num_classes counts the background"):
        PSScoreHead(8, 1)
    head = PSScoreHead(8, 3, "f")
    with pytest.raises(ValueError, match="features must hold 'f'"):
        head({"g": torch.zeros(1, 8, 4, 4)}, [torch.zeros(0, 4)])
    with pytest.raises(ValueError, match=r"must be \[N, 8, H, W\]"):
        head({"f": torch.zeros(1, 5, 4, 4)}, [torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="one \\[R_i, 4\\] tensor per image"):
        head({"f": torch.zeros(2, 8, 4, 4)}, [torch.zeros(0, 4)])
