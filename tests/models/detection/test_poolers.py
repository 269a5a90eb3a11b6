"""RoIPooler: each kind against the op it wraps, FPN level assignment by hand, deformable pooling
with zero offsets equal to RoIAlign."""

from __future__ import annotations

import pytest
import torch

from torchdcn.models.detection.poolers import RoIPooler, assign_levels, boxes_to_rois
from torchdcn.ops import roi_align, roi_pool

NAMES = ("p2", "p3", "p4", "p5")
STRIDES = (4, 8, 16, 32)


def _pyramid(channels: int = 3, n: int = 2, size: int = 256) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        name: torch.randn(n, channels, size // s, size // s, generator=g)
        for name, s in zip(NAMES, STRIDES)
    }


def test_assign_levels_by_hand():
    # side sqrt(w * h): 224 -> level 4; 112 -> 3; 111 -> floor(4 + log2(111/224)) = 2;
    # 448 -> 5; 1000 -> 6 clamped to 5; 10 -> clamped to 2; 56 x 896 has side 224 -> 4;
    # an empty box goes to the finest level.
    boxes = torch.tensor(
        [
            [0.0, 0.0, 224.0, 224.0],
            [10.0, 10.0, 122.0, 122.0],
            [0.0, 0.0, 111.0, 111.0],
            [0.0, 0.0, 448.0, 448.0],
            [0.0, 0.0, 1000.0, 1000.0],
            [5.0, 5.0, 15.0, 15.0],
            [0.0, 0.0, 56.0, 896.0],
            [3.0, 3.0, 3.0, 3.0],
        ]
    )
    levels = assign_levels(boxes, min_level=2, max_level=5)
    assert levels.tolist() == [2, 1, 0, 3, 3, 0, 2, 0]
    assert levels.dtype == torch.int64
    # canonical level 3 shifts everything one level up the pyramid (towards coarse)
    assert assign_levels(boxes, 2, 5, canonical_level=3).tolist() == [1, 0, 0, 2, 3, 0, 1, 0]


def test_boxes_to_rois_batch_index():
    rois = boxes_to_rois([torch.ones(2, 4), torch.zeros(0, 4), 2 * torch.ones(1, 4)])
    assert rois[:, 0].tolist() == [0.0, 0.0, 2.0]
    assert torch.equal(rois[:, 1:], torch.tensor([[1.0] * 4, [1.0] * 4, [2.0] * 4]))


def _boxes() -> list[torch.Tensor]:
    return [
        torch.tensor([[4.0, 6.0, 60.0, 50.0], [0.0, 0.0, 250.0, 200.0], [30.0, 30.0, 60.0, 40.0]]),
        torch.tensor([[100.0, 80.0, 220.0, 250.0], [10.0, 20.0, 130.0, 140.0]]),
    ]


@pytest.mark.parametrize("kind", ["roi_align", "roi_pool"])
def test_single_level_matches_op(kind):
    feats = _pyramid()
    pooler = RoIPooler(kind, ["p4"], [16], channels=3, output_size=(7, 5), sampling_ratio=2)
    out = pooler(feats, _boxes())
    rois = boxes_to_rois(_boxes())
    if kind == "roi_align":
        ref = roi_align(feats["p4"], rois, (7, 5), 1 / 16, 2, True)
    else:
        ref = roi_pool(feats["p4"], rois, (7, 5), 1 / 16)
    assert out.shape == (5, 3, 7, 5)
    torch.testing.assert_close(out, ref)


def test_multi_level_pools_each_roi_from_its_level():
    feats = _pyramid()
    boxes = _boxes()
    pooler = RoIPooler("roi_align", NAMES, STRIDES, channels=3)
    out = pooler(feats, boxes)
    # sides: 49.7 -> P2, 223.6 -> P3 (floor(4 + log2(0.998)) = 3), 17.3 -> P2, 142.8 -> P3,
    # 120 -> P3
    expected_level = [0, 1, 0, 1, 1]
    rois = boxes_to_rois(boxes)
    for i, level in enumerate(expected_level):
        name, stride = NAMES[level], STRIDES[level]
        ref = roi_align(feats[name], rois[i : i + 1], 7, 1 / stride, 2, True)
        torch.testing.assert_close(out[i : i + 1], ref)


@pytest.mark.parametrize("names,strides", [(("p4",), (16,)), (NAMES, STRIDES)])
@pytest.mark.parametrize("kind,factor", [("deform", 1.0), ("mdeform", 0.5)])
def test_deform_with_zero_offsets_equals_roi_align(kind, factor, names, strides):
    feats = _pyramid()
    deform = RoIPooler(kind, names, strides, channels=3, deform_hidden=16)
    plain = RoIPooler("roi_align", names, strides, channels=3)
    # a fresh deformable pooler has a zero offset branch (v2: masks 0.5)
    torch.testing.assert_close(deform(feats, _boxes()), factor * plain(feats, _boxes()))


def test_deform_levels_share_one_offset_branch_and_get_gradients():
    feats = {k: v.requires_grad_() for k, v in _pyramid().items()}
    pooler = RoIPooler("deform", NAMES, STRIDES, channels=3)
    single = RoIPooler("deform", ["p4"], [16], channels=3)
    assert len(list(pooler.parameters())) == 2  # one fc: weight and bias
    assert sum(p.numel() for p in pooler.parameters()) == sum(
        p.numel() for p in single.parameters()
    )
    assert all(p.offset_fc is pooler.pools[0].offset_fc for p in pooler.pools)
    assert pooler.pools[0].offset_lr_mult == 0.01
    out = pooler(feats, _boxes())
    out.square().sum().backward()
    grad = pooler.pools[0].offset_fc.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert feats["p2"].grad.abs().sum() > 0 and feats["p3"].grad.abs().sum() > 0


def test_empty_boxes_give_empty_output():
    pooler = RoIPooler("mdeform", NAMES, STRIDES, channels=3, deform_hidden=8)
    out = pooler(_pyramid(), [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert out.shape == (0, 3, 7, 7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        RoIPooler("psroi", ["p4"], [16], channels=3)
    with pytest.raises(ValueError, match="consecutive powers of two"):
        RoIPooler("roi_align", ["a", "b"], [4, 16], channels=3)
    with pytest.raises(ValueError, match="one length"):
        RoIPooler("roi_align", ["a", "b"], [4], channels=3)
    pooler = RoIPooler("roi_align", ["p4"], [16], channels=3)
    with pytest.raises(ValueError, match="missing"):
        pooler({"p3": torch.zeros(1, 3, 4, 4)}, [torch.zeros(0, 4)])
    with pytest.raises(ValueError, match=r"must have shape \[N, 3, H, W\]"):
        pooler({"p4": torch.zeros(1, 5, 4, 4)}, [torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="one tensor per image"):
        pooler({"p4": torch.zeros(2, 3, 4, 4)}, [torch.zeros(0, 4)])
