"""Error-bounded saliency regions on nodes whose exact support is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdcn.analysis.saliency import saliency_regions, window_mask, window_sides


def test_a_node_of_one_pixel_has_that_pixel_as_region():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    images = torch.rand(2, 3, 9, 11) + 0.1
    reg = saliency_regions(model, images, "0", (2, 7), bound=1e-6)
    assert reg.boxes.tolist() == [[7, 2, 8, 3]] * 2 and reg.areas.tolist() == [1.0, 1.0]


def test_a_3x3_node_needs_its_3x3_field_at_a_tight_bound():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.uniform_(0.5, 1.0)
    images = torch.rand(1, 1, 12, 12) + 0.5
    reg = saliency_regions(nn.Sequential(conv), images, "0", (5, 6), bound=1e-5)
    assert reg.boxes[0].tolist() == [5, 4, 8, 7] and reg.areas.item() == 9
    # a loose bound accepts the single pixel when it carries most of the response: centre weight
    with torch.no_grad():
        conv.weight.fill_(0.01)
        conv.weight[:, :, 1, 1] = 10.0
        conv.bias.zero_()
    reg = saliency_regions(nn.Sequential(conv), images, "0", (5, 6), bound=0.1)
    assert reg.areas.item() == 1 and reg.errors.item() <= 0.1


def test_stride_maps_the_node_to_its_pixel_and_windows_clip():
    conv = nn.Conv2d(1, 1, 1, stride=4)
    reg = saliency_regions(nn.Sequential(conv), torch.rand(1, 1, 16, 16) + 1, "0", (3, 1), bound=0)
    assert reg.centres[0].tolist() == [12, 4] and reg.boxes[0].tolist() == [4, 12, 5, 13]
    mask, box = window_mask((5, 5), (0, 4), 5)
    assert box == (2, 0, 5, 3) and mask.sum() == 9
    assert window_sides(9) == [1, 3, 5, 7, 9]
    sides = window_sides(301, 10)
    assert sides[0] == 1 and sides[-1] == 301 and len(sides) == 10


def test_bad_bound():
    with pytest.raises(ValueError, match="bound must be >= 0"):
        saliency_regions(nn.Conv2d(1, 1, 1), torch.rand(1, 1, 3, 3), "", bound=-1)


@pytest.mark.parametrize("channel", [4, 99, -1])
def test_a_channel_the_layer_does_not_have_is_refused(channel):
    # it was an empty slice: every window (even 1 pixel) matched the empty full response exactly
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1))
    with pytest.raises(ValueError, match=r"channel must be in \[0, 4\), got " + str(channel)):
        saliency_regions(model, torch.rand(2, 1, 8, 8), "0", (4, 4), channel=channel)
    reg = saliency_regions(model, torch.rand(2, 1, 8, 8), "0", (4, 4), channel=3)
    assert reg.areas.shape == (2,)


def test_a_layer_without_a_map_and_bad_chunks_are_refused():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    with pytest.raises(ValueError, match=r"layer '2' must output a map \[N, C, h, w\].*\[2, 5\]"):
        saliency_regions(model, torch.rand(2, 1, 8, 8), "2", channel=3)
    for chunk in (0, -2):
        with pytest.raises(ValueError, match=f"chunk must be an int >= 1, got {chunk}"):
            saliency_regions(model, torch.rand(1, 1, 8, 8), "0", chunk=chunk)
    for chunk in (1.5, True, "2"):  # a wrong kind: TypeError, as every scalar argument
        with pytest.raises(TypeError, match="chunk must be an int >= 1, got"):
            saliency_regions(model, torch.rand(1, 1, 8, 8), "0", chunk=chunk)
    with pytest.raises(ValueError, match="max_steps must be an int >= 2, got 1"):
        saliency_regions(model, torch.rand(1, 1, 8, 8), "0", max_steps=1)
