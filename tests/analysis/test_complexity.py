"""Parameter and multiply-add counts, and the plain / v1 / v2 overhead table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.analysis.complexity import (
    complexity_table,
    count_flops,
    count_parameters,
    flop_breakdown,
    format_table,
)
from torchdcn.models import resnet18, resnet50
from torchdcn.nn import (
    DeformConv2d,
    DeformConv2dPack,
    ModulatedDeformConv2d,
    ModulatedDeformConv2dPack,
)


def test_count_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert count_parameters(model) == 16 + 10
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 10


def test_conv_and_linear_macs():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1), nn.Flatten())
    model.append(nn.Linear(8 * 5 * 5, 10))
    per_image = 8 * 5 * 5 * 3 * 9 + 200 * 10
    assert count_flops(model, (3, 10, 10)) == per_image
    assert count_flops(model, (4, 3, 10, 10)) == 4 * per_image
    grouped = nn.Conv2d(8, 16, 3, padding=1, groups=4)
    assert count_flops(grouped, (8, 6, 6)) == 16 * 36 * 2 * 9


@pytest.mark.parametrize(
    ("cls", "per_value", "per_point"), [(DeformConv2dPack, 4, 2), (ModulatedDeformConv2dPack, 5, 3)]
)
def test_deformable_conv_macs(cls, per_value, per_point):
    layer = cls(8, 16, 3, padding=1, offset_groups=2)
    counts = flop_breakdown(layer, (2, 8, 6, 6))
    positions = 2 * 6 * 6
    assert counts["deform_conv"] == positions * 16 * 8 * 9
    assert counts["offset_predictor"] == positions * (per_point * 2 * 9) * 8 * 9
    assert counts["sampling"] == positions * 8 * 9 * per_value
    assert counts["conv"] == counts["linear"] == 0


class GivenOffsets(nn.Module):
    """A deformable conv fed zero offsets and unit masks, the mask by position or keyword."""

    def __init__(self, cls: type, keyword: bool) -> None:
        super().__init__()
        self.conv, self.keyword = cls(4, 4, 3, padding=1), keyword

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        off, mask = x.new_zeros(n, 18, h, w), x.new_ones(n, 9, h, w)
        return self.conv(x, off, mask=mask) if self.keyword else self.conv(x, off, mask)


@pytest.mark.parametrize("cls", [DeformConv2d, ModulatedDeformConv2d])
@pytest.mark.parametrize("keyword", [False, True])
def test_a_mask_given_by_keyword_counts_the_modulation(cls, keyword):
    # forward hooks do not see keyword arguments: mask=mask counted 4 MACs per value, not 5
    counts = flop_breakdown(GivenOffsets(cls, keyword), (4, 8, 8))
    assert counts["sampling"] == 8 * 8 * 4 * 9 * 5


def test_a_float64_model_is_counted():
    # the fake input was float32: "Input type (float) and bias type (double)"
    layer = ModulatedDeformConv2dPack(4, 4, 3, padding=1).double()
    assert count_flops(layer, (4, 8, 8)) == count_flops(layer.float(), (4, 8, 8)) > 0


def test_counting_leaves_the_model_as_it_was():
    model = resnet18(deform="v1", num_classes=10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    count_flops(model, (3, 64, 64))
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="input_shape"):
        count_flops(model, (64, 64))


def test_resnet50_matches_the_published_count():
    # torchvision and fvcore: 4.09 GMACs ("GFLOPS") for ResNet-50 at 224 x 224.
    model = resnet50()
    assert count_flops(model, (3, 224, 224)) == 4_089_184_256
    assert count_parameters(model) == 25_557_032


def test_table_rows_and_overheads():
    shape = (3, 64, 64)
    rows = complexity_table(builders=(resnet18,), input_shape=shape)
    assert [(r.deform, r.output_stride, r.deformable_layers) for r in rows] == [
        ("None", 32, 0),
        ("None", 16, 0),
        ("v1", 16, 3),
        ("v2", 16, 12),
    ]
    plain32, plain16, v1, v2 = rows
    assert plain32.params == plain16.params and plain16.macs > plain32.macs
    # v1: three offset convs 512 -> 18 channels, 3x3, with bias.
    assert v1.extra_params == 3 * (512 * 18 * 9 + 18)
    assert 0 < v1.extra_macs < v2.extra_macs and v1.extra_params < v2.extra_params
    text = format_table(rows, shape)
    assert "| resnet18 | v2 | 16 | 12 |" in text and "3 x 64 x 64" in text
