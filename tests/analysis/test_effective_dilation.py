"""Effective dilation (v1 Table 2) against hand-built layers whose answer is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.analysis.effective_dilation import (
    DilationTable,
    effective_dilation,
    filter_centres,
    filter_dilation,
    position_classes,
    sampling_grid,
)
from torchdcn.analysis.probe import LayerGeometry
from torchdcn.nn import DeformConv2d, DeformConv2dPack


def dilation_offsets(d: int, size: int, n: int = 1, k: int = 3) -> torch.Tensor:
    """Offsets that turn a dilation-1 ``k x k`` filter into a dilation-``d`` one."""
    ky, kx = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    c = (k - 1) / 2
    off = torch.stack([(ky - c) * (d - 1), (kx - c) * (d - 1)], -1).reshape(-1).float()
    return off.view(1, -1, 1, 1).expand(n, -1, size, size).clone()


class FixedOffsets(nn.Module):
    """A DeformConv2d fed constant offsets (a hand-built deformable layer)."""

    def __init__(self, offset: torch.Tensor) -> None:
        super().__init__()
        self.conv = DeformConv2d(1, 2, 3, padding=1)
        self.register_buffer("offset", offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.offset.expand(len(x), -1, -1, -1))


@pytest.mark.parametrize("d", [1, 2, 3])
def test_offsets_of_a_dilation_pattern_give_that_dilation(d):
    model = FixedOffsets(dilation_offsets(d, 8))
    table = effective_dilation(model, torch.rand(2, 1, 8, 8), [torch.zeros(0, 4)] * 2)
    ((layer, cells),) = table.rows()
    mean, std, count = cells["background"]
    assert layer == "conv" and count == 2 * 64
    assert mean == pytest.approx(d, abs=1e-6) and std == pytest.approx(0, abs=1e-5)


def test_plain_dilation_and_pack_offsets_are_read_by_hooks():
    geo = LayerGeometry((3, 3), (1, 1), (2, 2), (2, 2))
    assert torch.allclose(
        filter_dilation(torch.zeros(1, 18, 5, 5), geo), torch.full((1, 5, 5), 2.0)
    )
    layer = DeformConv2dPack(1, 1, 3, padding=1)
    with torch.no_grad():
        layer.conv_offset.bias.copy_(dilation_offsets(4, 1).flatten())
    table = effective_dilation(nn.Sequential(layer), torch.rand(1, 1, 6, 6), [torch.zeros(0, 4)])
    assert table.rows()[0][1]["background"][0] == pytest.approx(4.0, abs=1e-5)


def test_sampling_grid_is_regular_without_offsets():
    geo = LayerGeometry((3, 3), (2, 2), (1, 1), (1, 1))
    grid = sampling_grid(torch.zeros(1, 18, 4, 4), geo)  # [1, 1, 3, 3, 4, 4, 2]
    # output (i, j), kernel (a, b) reads (2 i - 1 + a, 2 j - 1 + b)
    assert grid[0, 0, 2, 0, 3, 1].tolist() == [2 * 3 - 1 + 2, 2 * 1 - 1 + 0]
    centres = filter_centres(geo, (4, 4))
    assert centres[3, 1].tolist() == [6.0, 2.0]


def test_position_classes_by_smallest_box_and_coco_areas():
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0], [10.0, 10.0, 20.0, 20.0], [0, 0, 40, 40]])
    centres = torch.tensor([[15.0, 15.0], [30.0, 30.0], [90.0, 90.0], [150.0, 5.0]])
    assert position_classes(centres, boxes).tolist() == [0, 1, 2, 3]
    # given areas replace the box areas
    areas = torch.tensor([100.0, 100.0, 100.0])
    assert position_classes(centres, boxes, areas).tolist() == [0, 0, 0, 3]


def test_table_accumulates_mean_and_std():
    table = DilationTable()
    table.add("l", torch.tensor([1.0, 3.0]), torch.tensor([3, 3]))
    table.add("l", torch.tensor([2.0]), torch.tensor([0]))
    cells = dict(table.rows()[0][1])
    assert cells["background"] == (2.0, 1.0, 2)
    assert cells["small"][0] == 2.0 and cells["medium"][2] == 0
    assert "2.00 ± 1.00 (2)" in table.markdown()


def test_plain_model_is_refused():
    with pytest.raises(ValueError, match="effective_dilation needs a model with deformable"):
        effective_dilation(nn.Conv2d(1, 1, 3), torch.rand(1, 1, 5, 5), [torch.zeros(0, 4)])


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_padding_same_with_an_even_kernel():
    for layer in (nn.Conv2d(1, 1, 4, padding="same"), DeformConv2d(1, 1, 4, padding="same")):
        assert LayerGeometry.of(layer) == LayerGeometry((4, 4), (1, 1), (1, 1), (1, 1))
    conv = nn.Conv2d(1, 1, (2, 5), padding="same", dilation=(1, 2))
    assert LayerGeometry.of(conv).padding == (0, 4)
    assert LayerGeometry.of(nn.Conv2d(1, 1, 3, padding="valid")).padding == (0, 0)
    # the geometry agrees with what nn.Conv2d computes: a one-hot weight at kernel point (0, 0)
    # reads input (y - pad_top, x - pad_left)
    conv = nn.Conv2d(1, 1, 4, padding="same", bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1
    x = torch.rand(1, 1, 7, 7)
    pad = LayerGeometry.of(conv).padding
    assert torch.equal(conv(x)[0, 0, pad[0] :, pad[1] :], x[0, 0, : 7 - pad[0], : 7 - pad[1]])


def test_rois_with_a_batch_index_are_refused_not_reshaped():
    # [K, 5] RoIs (batch index first) were reshaped to [K * 5 / 4, 4] garbage boxes ([4, 5]) or
    # crashed in reshape ([3, 5])
    centres = torch.tensor([[5.0, 5.0]])
    rois = torch.tensor([[0.0, 2, 2, 10, 10]] * 4)
    for bad in (rois, rois[:3], rois[0, 1:]):
        with pytest.raises(ValueError, match=r"boxes must be a Tensor\[M, 4\]"):
            position_classes(centres, bad)
    with pytest.raises(ValueError, match=r"batch index first"):
        position_classes(centres, rois)
    assert position_classes(centres, rois[:, 1:]).tolist() == [0]
    assert position_classes(centres, torch.zeros(0, 4)).tolist() == [3]
    model = nn.Sequential(DeformConv2dPack(1, 1, 3, padding=1))
    images = torch.rand(2, 1, 12, 12)
    with pytest.raises(ValueError, match=r"boxes\[1\] must be a Tensor\[M, 4\].*\[3, 5\]"):
        effective_dilation(model, images, [rois[:, 1:], rois[:3]])


@pytest.mark.parametrize("thresholds", [(1024.0, 256.0), (256.0, 256.0), (-1.0, 4.0), (1.0,)])
def test_thresholds_must_be_increasing_areas(thresholds):
    # reversed thresholds were accepted: nothing could be medium
    with pytest.raises(ValueError, match=r"thresholds must be two areas .*small_max < medium_max"):
        position_classes(torch.zeros(1, 2), torch.zeros(0, 4), thresholds=thresholds)
    model = nn.Sequential(DeformConv2dPack(1, 1, 3, padding=1))
    with pytest.raises(ValueError, match=r"thresholds must be two areas"):
        effective_dilation(model, torch.rand(1, 1, 6, 6), [torch.zeros(0, 4)], None, thresholds)


@pytest.mark.parametrize("thresholds", [(True, 1e9), (32.0, "1e9"), None, "ab"])
def test_thresholds_of_the_wrong_kind_are_a_type_error(thresholds):
    with pytest.raises(TypeError, match=r"thresholds(\[\d\])? must be"):
        position_classes(torch.zeros(1, 2), torch.zeros(0, 4), thresholds=thresholds)
