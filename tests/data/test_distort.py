"""Seeded distortions: the geometry of render() and reproducibility of DistortedDigits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchdcn.data import DistortedDigits, Distortion, TensorSource, digit_centre, render
from torchdcn.data.distorted_mnist import TEST_LEVELS, TRAIN_DISTORTION


def _digits(n=3):
    gen = torch.Generator().manual_seed(0)
    d = torch.zeros(n, 28, 28, dtype=torch.uint8)
    d[:, 8:20, 10:18] = torch.randint(50, 256, (n, 12, 8), generator=gen, dtype=torch.uint8)
    return d


def _centroid(img):
    h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    m = img.sum()
    return torch.stack([(img * xs).sum() / m, (img * ys).sum() / m])  # (x, y)


def _one(n=1):
    return torch.ones(n), torch.zeros(n), torch.zeros(n, 2)


def test_identity_on_same_canvas_is_exact():
    d = _digits()
    out = render(d, *_one(3), canvas=28)
    assert out.shape == (3, 1, 28, 28)
    torch.testing.assert_close(out[:, 0], d.float() / 255)


def test_shift_scale_and_rotation_move_the_ink_as_documented():
    d = _digits(1)
    base = render(d, *_one(), canvas=48)[0, 0]
    c0 = _centroid(base)
    torch.testing.assert_close(
        c0,
        digit_centre(torch.zeros(1, 2), 48)[0] + (_centroid(d[0].float()) - 13.5),
        atol=1e-3,
        rtol=0,
    )
    moved = render(d, torch.ones(1), torch.zeros(1), torch.tensor([[5.0, -3.0]]), 48)[0, 0]
    torch.testing.assert_close(_centroid(moved) - c0, torch.tensor([5.0, -3.0]), atol=1e-3, rtol=0)
    big = render(d, torch.full((1,), 2.0), torch.zeros(1), torch.zeros(1, 2), 48)[0, 0]
    assert big.sum().item() == pytest.approx(4 * base.sum().item(), rel=0.02)
    # 90 degrees counter-clockwise on screen: torch.rot90 over (rows, cols) does the same
    rot = render(d, torch.ones(1), torch.tensor([math.pi / 2]), torch.zeros(1, 2), 28)[0, 0]
    torch.testing.assert_close(rot, torch.rot90(d[0].float() / 255, 1, (0, 1)), atol=1e-4, rtol=0)


def test_distortion_draws_stay_in_range():
    dist = Distortion(scale=(0.5, 2.0), rotation=(10, 20), translate=3, canvas=40)
    p = dist.sample(2000, np.random.default_rng(0))
    assert p["scale"].min() >= 0.5 and p["scale"].max() <= 2.0
    deg = p["angle"].abs() * 180 / math.pi
    assert deg.min() >= 10 - 1e-4 and deg.max() <= 20 + 1e-4
    assert (p["angle"] > 0).any() and (p["angle"] < 0).any()
    assert p["shift"].abs().max() <= 3
    with pytest.raises(ValueError, match="scale"):
        Distortion(scale=(2.0, 1.0))
    with pytest.raises(ValueError, match="translate"):
        Distortion(translate=-1)


def test_batches_depend_only_on_seed_epoch_and_index():
    d = _digits(6)
    labels = torch.arange(6)
    a = DistortedDigits(d, labels, TRAIN_DISTORTION, seed=1)
    b = DistortedDigits(d, labels, TRAIN_DISTORTION, seed=1)
    x_all, y_all = a.get_batch(torch.arange(6), epoch=2)
    b.get_batch(torch.arange(3), epoch=0)  # reading other epochs first changes nothing
    x_part, y_part = b.get_batch(torch.tensor([4, 1]), epoch=2)
    assert torch.equal(x_part, x_all[[4, 1]]) and torch.equal(y_part, y_all[[4, 1]])
    x_next, _ = a.get_batch(torch.arange(6), epoch=3)
    assert not torch.equal(x_next, x_all)
    x_other, _ = DistortedDigits(d, labels, TRAIN_DISTORTION, seed=2).get_batch(torch.arange(6), 2)
    assert not torch.equal(x_other, x_all)
    assert x_all.shape == (6, 1, TRAIN_DISTORTION.canvas, TRAIN_DISTORTION.canvas)


def test_test_levels_are_outside_the_training_range():
    lo, hi = TRAIN_DISTORTION.scale
    for name, dist in TEST_LEVELS.items():
        if name == "train-like":
            assert dist == TRAIN_DISTORTION
        elif name.startswith("scale"):
            assert dist.scale[0] == dist.scale[1] and not lo <= dist.scale[0] <= hi
        else:
            assert dist.rotation[0] > TRAIN_DISTORTION.rotation[1]


def test_tensor_source():
    src = TensorSource(torch.arange(10.0), torch.arange(10))
    x, y = src.get_batch(torch.tensor([3, 1]))
    assert x.tolist() == [3.0, 1.0] and y.tolist() == [3, 1] and len(src) == 10
    with pytest.raises(ValueError, match="same length"):
        TensorSource(torch.zeros(3), torch.zeros(2))


@pytest.mark.parametrize("kwargs", [{"limit_train": 0}, {"limit_test": -2}])
def test_limits_below_one_are_refused_before_reading_data(tmp_path, kwargs):
    from torchdcn.data.distorted_mnist import distorted_mnist

    name, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=f"{name} must be None or >= 1, got {value}"):
        distorted_mnist(tmp_path / "nodata", **kwargs)
