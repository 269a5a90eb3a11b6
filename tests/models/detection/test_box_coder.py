"""Box coder: hand-computed deltas, encode/decode round trip, class-specific sets, dw/dh clamp."""

from __future__ import annotations

import math

import pytest
import torch

from torchdcn.models.detection.box_coder import BoxCoder


def _random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 50 + 1
    return torch.cat((xy, xy + wh), dim=1)


def test_encode_by_hand():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[2.0, 0.0, 12.0, 20.0]])
    # centres (5, 5) -> (7, 10), sizes 10x10 -> 10x20
    expected = torch.tensor([[0.2, 0.5, 0.0, math.log(2.0)]])
    torch.testing.assert_close(BoxCoder().encode(gt, anchors), expected)
    weighted = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(gt, anchors)
    torch.testing.assert_close(weighted, expected * torch.tensor([10.0, 10.0, 5.0, 5.0]))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_round_trip_is_identity(weights):
    g = torch.Generator().manual_seed(0)
    anchors, gt = _random_boxes(200, g), _random_boxes(200, g)
    coder = BoxCoder(weights)
    torch.testing.assert_close(coder.decode(coder.encode(gt, anchors), anchors), gt)
    deltas = torch.randn(200, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(coder.encode(coder.decode(deltas, anchors), anchors), deltas)


def test_zero_deltas_give_the_reference_boxes():
    g = torch.Generator().manual_seed(1)
    boxes = _random_boxes(10, g).float()
    torch.testing.assert_close(BoxCoder().decode(torch.zeros(10, 4), boxes), boxes)


def test_class_specific_sets_are_decoded_independently():
    g = torch.Generator().manual_seed(2)
    boxes = _random_boxes(7, g)
    deltas = torch.randn(7, 12, generator=g, dtype=torch.float64)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    out = coder.decode(deltas, boxes)
    assert out.shape == (7, 12)
    for k in range(3):
        torch.testing.assert_close(
            out[:, 4 * k : 4 * k + 4], coder.decode(deltas[:, 4 * k : 4 * k + 4], boxes)
        )


def test_dw_dh_are_clamped_so_boxes_stay_finite():
    boxes = torch.tensor([[0.0, 0.0, 16.0, 8.0]])
    clip = math.log(1000.0 / 16)
    out = BoxCoder().decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), boxes)
    # width 16 * exp(clip) = 1000, height 8 * exp(clip) = 500, centre (8, 4) kept
    torch.testing.assert_close(out, torch.tensor([[8.0 - 500, 4.0 - 250, 8.0 + 500, 4.0 + 250]]))
    # the clamp applies after dividing by the weight: ww = 5 -> dw / 5 = 2 is under the clip
    out = BoxCoder((1.0, 1.0, 5.0, 5.0)).decode(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), boxes)
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(16 * math.exp(2.0)))
    assert clip > 2.0
    # small clip values bind; negative deltas are not clamped
    out = BoxCoder(bbox_xform_clip=1.0).decode(torch.tensor([[0.0, 0.0, 3.0, -3.0]]), boxes)
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(16 * math.e))
    torch.testing.assert_close(out[0, 3] - out[0, 1], torch.tensor(8 * math.exp(-3.0)))


def test_empty_and_bad_input():
    coder = BoxCoder()
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    with pytest.raises(ValueError, match="deltas must be a Tensor\\[N, 4 \\* K\\]"):
        coder.decode(torch.zeros(3, 5), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="same number of rows"):
        coder.decode(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="reference and proposals"):
        coder.encode(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="weights must be positive"):
        BoxCoder((1.0, 1.0, 0.0, 1.0))


def test_bbox_xform_clip_must_be_a_number():
    with pytest.raises(ValueError, match="bbox_xform_clip must be a number, got nan"):
        BoxCoder(bbox_xform_clip=math.nan)  # decoded every box to NaN
    with pytest.raises(TypeError, match="bbox_xform_clip must be a real number"):
        BoxCoder(bbox_xform_clip="4")
    assert BoxCoder(bbox_xform_clip=math.inf).bbox_xform_clip == math.inf  # no clipping
