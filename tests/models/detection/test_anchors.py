"""Anchors against hand-computed boxes: count, order (position-major, size-major), centres."""

from __future__ import annotations

import math

import pytest
import torch

from torchdcn.models.detection.anchors import AnchorGenerator

S2 = math.sqrt(2.0)


def test_default_is_5_sizes_by_3_ratios_at_stride_16():
    gen = AnchorGenerator()
    assert gen.num_anchors_per_location() == [15]
    (anchors,) = gen([(3, 4)], torch.device("cpu"), torch.float32)
    assert anchors.shape == (3 * 4 * 15, 4)


def test_cell_anchors_by_hand():
    gen = AnchorGenerator(sizes=((32,),), aspect_ratios=((0.5, 1.0, 2.0),), strides=(16,))
    expected = torch.tensor(
        [
            [
                -16 * S2,
                -8 * S2,
                16 * S2,
                8 * S2,
            ],  # ratio h/w = 0.5: w = 32 * sqrt 2, h = 32 / sqrt 2
            [-16.0, -16.0, 16.0, 16.0],
            [-8 * S2, -16 * S2, 8 * S2, 16 * S2],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(gen.cell_anchors(0), expected)


def test_positions_are_row_major_then_anchor_centred_at_x_times_stride():
    gen = AnchorGenerator(sizes=((32,),), aspect_ratios=((0.5, 1.0, 2.0),), strides=(16,))
    (anchors,) = gen([(2, 3)], torch.device("cpu"), torch.float64)
    assert anchors.shape == (2 * 3 * 3, 4)
    # cell (y=1, x=2), anchor 1 (ratio 1): index (1 * 3 + 2) * 3 + 1 = 16, centre (32, 16).
    torch.testing.assert_close(
        anchors[16], torch.tensor([16.0, 0.0, 48.0, 32.0], dtype=torch.float64)
    )
    # cell (y=0, x=1), anchor 2 (ratio 2): index (0 * 3 + 1) * 3 + 2 = 5, centre (16, 0).
    torch.testing.assert_close(
        anchors[5], torch.tensor([16 - 8 * S2, -16 * S2, 16 + 8 * S2, 16 * S2], dtype=torch.float64)
    )
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    ys, xs = torch.meshgrid(torch.arange(2.0), torch.arange(3.0), indexing="ij")
    grid = torch.stack((xs, ys), -1).reshape(-1, 1, 2).expand(-1, 3, -1).reshape(-1, 2) * 16
    torch.testing.assert_close(centres, grid.double())


def test_sizes_major_order_and_areas_and_ratios():
    sizes, ratios = (10.0, 20.0), (0.25, 1.0, 4.0)
    gen = AnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,), strides=(4,))
    cell = gen.cell_anchors()
    w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    expected_size = torch.tensor([10.0, 10, 10, 20, 20, 20], dtype=torch.float64)
    expected_ratio = torch.tensor([0.25, 1, 4, 0.25, 1, 4], dtype=torch.float64)
    torch.testing.assert_close(w * h, expected_size**2)
    torch.testing.assert_close(h / w, expected_ratio)


def test_several_levels_with_their_own_strides():
    gen = AnchorGenerator(sizes=((8,), (16, 24)), aspect_ratios=((1.0,),), strides=(4, 8))
    assert gen.num_anchors_per_location() == [1, 2]
    a0, a1 = gen([(2, 2), (1, 2)], "cpu", torch.float32)
    assert a0.shape == (4, 4) and a1.shape == (4, 4)
    torch.testing.assert_close(a0[3], torch.tensor([0.0, 0.0, 8.0, 8.0]))  # cell (1, 1) at (4, 4)
    torch.testing.assert_close(a1[3], torch.tensor([-4.0, -12.0, 20.0, 12.0]))  # (0, 1), size 24
    assert a0.dtype == torch.float32


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="one entry per feature level"):
        AnchorGenerator(sizes=((8,), (16,)), aspect_ratios=((1.0,), (1.0,)), strides=(4,))
    with pytest.raises(ValueError, match="positive"):
        AnchorGenerator(sizes=((0,),), strides=(4,))
    with pytest.raises(TypeError, match="sizes"):
        AnchorGenerator(sizes=(8, 16))
    with pytest.raises(ValueError, match="one \\(H, W\\) per level"):
        AnchorGenerator()([(2, 2), (1, 1)])
