"""A deformable layer called several times in one forward pass (a head shared by pyramid levels):
every call is recorded and counted, and the tools that need one call ask which."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchdcn.analysis import effective_dilation, effective_sampling_locations, record_offsets
from torchdcn.nn import DeformConv2d


def pattern(d: float, size: int) -> torch.Tensor:
    """``[1, 18, size, size]`` offsets turning a 3x3 dilation-1 filter into a dilation-``d`` one."""
    ky, kx = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
    off = torch.stack([(ky - 1) * (d - 1), (kx - 1) * (d - 1)], -1).reshape(1, -1, 1, 1).float()
    return off.expand(1, -1, size, size).contiguous()


class SharedHead(nn.Module):
    """One DeformConv2d on a 16x16 level (dilation-2 offsets) and on its 8x8 pooled level
    (dilation-4 offsets), then fused."""

    def __init__(self) -> None:
        super().__init__()
        self.head = DeformConv2d(1, 1, 3, padding=1)
        self.fuse = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.head(x, pattern(2, 16).expand(len(x), -1, -1, -1))
        b = self.head(F.avg_pool2d(x, 2), pattern(4, 8).expand(len(x), -1, -1, -1))
        return self.fuse(a + F.interpolate(b, scale_factor=2.0))


def test_every_call_is_recorded():
    model = SharedHead().eval()
    with torch.no_grad(), record_offsets(model) as rec:
        model(torch.rand(2, 1, 16, 16))
    assert list(rec) == ["head"] and [r.input_size for r in rec["head"]] == [(16, 16), (8, 8)]
    assert [tuple(r.offset.shape) for r in rec["head"]] == [(2, 18, 16, 16), (2, 18, 8, 8)]


def test_effective_dilation_counts_every_call_at_its_own_stride():
    # only the last call was kept: 64 positions at dilation 4 instead of 256 + 64
    model = SharedHead()
    boxes = [torch.tensor([[0.0, 0.0, 8.0, 8.0]])]  # small; centres of y, x in [0, 8]
    table = effective_dilation(model, torch.rand(1, 1, 16, 16), boxes)
    cells = table.rows()[0][1]
    assert sum(c[2] for c in cells.values()) == 16 * 16 + 8 * 8
    # level 1 (stride 1): 9 x 9 centres in the box; level 2 (stride 2, pixels 0..14): 5 x 5
    assert cells["small"][2] == 81 + 25
    assert cells["small"][0] == pytest.approx((81 * 2 + 25 * 4) / 106, abs=1e-5)
    assert cells["background"][0] == pytest.approx((175 * 2 + 39 * 4) / 214, abs=1e-5)


def test_effective_sampling_asks_which_call():
    model = SharedHead()
    images = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"below 'head' ran 2 times .*pass call= 0 to 1"):
        effective_sampling_locations(model, images, "fuse", (6, 6), below="head")
    first = effective_sampling_locations(model, images, "fuse", (6, 6), below="head", call=0)
    second = effective_sampling_locations(model, images, "fuse", (6, 6), below="head", call=1)
    assert (first.call, first.stride, first.weights.shape) == (0, 1, (1, 9 * 16 * 16))
    assert (second.call, second.stride, second.weights.shape) == (1, 2, (1, 9 * 8 * 8))
    assert first.weights.sum() > 0 and second.weights.sum() > 0
    with pytest.raises(ValueError, match=r"call must be an int in \[0, 2\).*got 2"):
        effective_sampling_locations(model, images, "fuse", (6, 6), below="head", call=2)
    with pytest.raises(TypeError, match=r"call must be an int, got str"):
        effective_sampling_locations(model, images, "fuse", (6, 6), below="head", call="1")
    # a node on the head itself: the pass stops after its first call, which is the only one
    one = effective_sampling_locations(model, images, "head", (6, 6))
    assert one.call == 0 and one.stride == 1


def test_names_that_are_not_deformable_layers_are_refused():
    with pytest.raises(ValueError, match=r"names must name deformable layers.*'body.9'.*: head\)"):
        with record_offsets(SharedHead(), names=["head", "body.9"]):
            pass
