"""Sampling locations through stacked (deformable) layers, and their plot."""

from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch
from torch import nn

from torchdcn.analysis.sampling import (
    LayerGeometry,
    Panel,
    compose_sampling_locations,
    plot_sampling_locations,
    sampling_locations_from_inputs,
    spread,
    stacked_sampling_locations,
)
from torchdcn.models.classification.mnist_cnn import MnistCNN, mnist_cnn
from torchdcn.nn import DeformConv2dPack, ModulatedDeformConv2dPack

G = LayerGeometry()  # 3x3, stride 1, padding 1, dilation 1


def test_zero_offsets_give_the_regular_grid_of_729_points():
    offsets = [torch.zeros(18, 9, 9)] * 3
    points, weights = compose_sampling_locations(offsets, (4, 4), [G] * 3)
    assert points.shape == (729, 2) and torch.equal(weights, torch.ones(729))
    # three 3x3 layers with padding 1: positions 4-3 .. 4+3, centre-weighted
    assert points.min().item() == 1 and points.max().item() == 7
    torch.testing.assert_close(points.mean(0), torch.tensor([4.0, 4.0]))
    counts = torch.zeros(7, 7)
    for y, x in points.long().tolist():
        counts[y - 1, x - 1] += 1
    per_axis = torch.tensor([1.0, 3, 6, 7, 6, 3, 1])  # 1-D trinomial counts of 3 steps in {-1,0,1}
    torch.testing.assert_close(counts, torch.outer(per_axis, per_axis))


def test_plain_layers_count_as_zero_offsets():
    a, _ = compose_sampling_locations([None] * 2, (3, 5), [G] * 2)
    b, _ = compose_sampling_locations([torch.zeros(18, 8, 8)] * 2, (3, 5), [G] * 2)
    torch.testing.assert_close(a, b)


def test_dilation_pattern_offsets_equal_atrous_geometry():
    # offsets moving kernel point (i, j) by (i - 1, j - 1) turn a 3x3 conv into dilation 2
    field = torch.zeros(18, 12, 12)
    for k, (i, j) in enumerate(itertools.product(range(3), range(3))):
        field[2 * k], field[2 * k + 1] = i - 1, j - 1
    deformed, _ = compose_sampling_locations([field] * 2, (6, 6), [G] * 2)
    atrous = LayerGeometry(padding=(2, 2), dilation=(2, 2))
    expected, _ = compose_sampling_locations([None] * 2, (6, 6), [atrous] * 2)
    torch.testing.assert_close(deformed, expected)


def test_offsets_are_read_where_each_point_lands():
    # brute force for two layers with random smooth offsets, bilinear reads by hand
    gen = torch.Generator().manual_seed(0)
    f1 = torch.rand(18, 10, 10, generator=gen) - 0.5
    f2 = torch.rand(18, 10, 10, generator=gen) - 0.5

    def bilinear(field, y, x):
        y, x = min(max(y, 0.0), 9.0), min(max(x, 0.0), 9.0)
        y0, x0 = min(int(y), 8), min(int(x), 8)
        ly, lx = y - y0, x - x0
        return (
            field[:, y0, x0] * (1 - ly) * (1 - lx)
            + field[:, y0, x0 + 1] * (1 - ly) * lx
            + field[:, y0 + 1, x0] * ly * (1 - lx)
            + field[:, y0 + 1, x0 + 1] * ly * lx
        )

    expected = []
    for k2 in range(9):
        y1 = 5 - 1 + k2 // 3 + f2[2 * k2, 5, 4].item()
        x1 = 4 - 1 + k2 % 3 + f2[2 * k2 + 1, 5, 4].item()
        off = bilinear(f1, y1, x1)
        for k1 in range(9):
            y0 = y1 - 1 + k1 // 3 + off[2 * k1].item()
            expected.append([y0, x1 - 1 + k1 % 3 + off[2 * k1 + 1].item()])
    points, _ = compose_sampling_locations([f1, f2], (5, 4), [G] * 2)
    torch.testing.assert_close(points, torch.tensor(expected), atol=1e-5, rtol=0)


def test_mask_products_weight_the_points():
    masks = [torch.full((9, 6, 6), 0.5), torch.full((9, 6, 6), 0.2), torch.ones(9, 6, 6)]
    _, w = compose_sampling_locations([torch.zeros(18, 6, 6)] * 3, (3, 3), [G] * 3, masks)
    torch.testing.assert_close(w, torch.full((729,), 0.1))


def test_fresh_deformable_modules_sample_the_regular_grid():
    torch.manual_seed(0)
    layers = [DeformConv2dPack(4, 4, 3, padding=1), ModulatedDeformConv2dPack(4, 4, 3, padding=1)]
    points, weights = stacked_sampling_locations(layers, torch.randn(1, 4, 7, 7), (3, 3))
    expected, _ = compose_sampling_locations([None] * 2, (3, 3), [G] * 2)
    torch.testing.assert_close(points, expected)
    torch.testing.assert_close(weights, torch.full((81,), 0.5))  # v2 masks start at 0.5
    assert spread(points, torch.tensor([3.0, 3.0])) > 0


def test_mnist_cnn_cells_map_to_receptive_field_centres():
    # with all-ones stem weights the receptive field of body cell (i, j) is symmetric about its
    # centre, so the input-gradient centroid is the pixel cell_to_pixel gives
    model = mnist_cnn(None, width=8)
    for m in model.stem:
        if isinstance(m, nn.Conv2d):
            nn.init.ones_(m.weight)
    stem = nn.Sequential(*[m for m in model.stem if isinstance(m, nn.Conv2d)])
    x = torch.ones(1, 1, 48, 48, requires_grad=True)
    stem(x)[0, 0, 5, 6].backward()
    g = x.grad[0, 0]
    ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    centre = torch.stack([(g * ys).sum() / g.sum(), (g * xs).sum() / g.sum()])
    torch.testing.assert_close(centre, MnistCNN.cell_to_pixel(torch.tensor([5.0, 6.0])))


def test_mnist_cnn_body_gives_729_points_in_pixels():
    model = mnist_cnn("v2", width=8).eval()
    inputs = model.body_inputs(torch.rand(1, 1, 48, 48))
    assert [tuple(t.shape) for t in inputs] == [(1, 8, 12, 12)] * 3
    points, weights = sampling_locations_from_inputs(model.body_layers(), inputs, (6, 6))
    assert points.shape == (729, 2) and weights.shape == (729,)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_plot_writes_a_png(tmp_path):
    points, weights = compose_sampling_locations([None] * 3, (6, 6), [G] * 3)
    panel = Panel(torch.rand(48, 48), points * 4, (24.0, 24.0), weights, "test")
    path = plot_sampling_locations([[panel, panel], [panel]], tmp_path / "f" / "s.png", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
