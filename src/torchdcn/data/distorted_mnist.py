"""The demo's protocol: train on mildly distorted digits, test on stronger, held-out distortions.

Training digits (4000, the fixed split of :mod:`torchdcn.data.mnist`) are scaled by 0.8-1.25
(log-uniform), rotated by up to 15 degrees and shifted by up to 3 pixels on a 48 x 48 canvas, with
a fresh draw every epoch. The 1000 test digits are drawn once per level: the training
distribution itself, then scales and rotations outside the training range (each level keeps the
3-pixel shifts). Test sets use their own seed, the same in every run, so runs compare digit for
digit.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
from torch import Tensor

from .distort import DistortedDigits, Distortion
from .mnist import mnist5k_split

CANVAS = 48
TRAIN_DISTORTION = Distortion(scale=(0.8, 1.25), rotation=(0.0, 15.0), translate=3.0, canvas=CANVAS)
#: seed of every test set (independent of the training seed)
TEST_SEED = 10_000


def _level(scale: float = 1.0, rotation: float = 0.0) -> Distortion:
    return replace(TRAIN_DISTORTION, scale=(scale, scale), rotation=(rotation, rotation))


#: test levels, by name: the training distribution, then held-out scales and rotations
TEST_LEVELS: dict[str, Distortion] = {
    "train-like": TRAIN_DISTORTION,
    "scale 0.5": _level(scale=0.5),
    "scale 0.6": _level(scale=0.6),
    "scale 1.5": _level(scale=1.5),
    "scale 1.8": _level(scale=1.8),
    "rot 30": _level(rotation=30.0),
    "rot 45": _level(rotation=45.0),
    "rot 60": _level(rotation=60.0),
}


def _spaced(t: Tensor, n: int) -> Tensor:
    """``n`` rows of ``t`` evenly spaced from the first (the file is sorted by class)."""
    if n >= len(t):
        return t
    return t[torch.linspace(0, len(t) - 1, max(n, 1)).round().long()]


def distorted_mnist(
    root: str | os.PathLike | None = None,
    seed: int = 0,
    train_distortion: Distortion = TRAIN_DISTORTION,
    test_levels: dict[str, Distortion] | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> tuple[DistortedDigits, dict[str, DistortedDigits]]:
    """``(train_set, {level name: test_set})`` of the protocol above.

    Args:
        root: data root (see :func:`torchdcn.data.mnist.find_mnist5k`).
        seed: seed of the training distortions.
        train_distortion, test_levels: override the protocol (default: the module's constants).
        limit_train, limit_test: keep only this many digits of each set, evenly spaced through
            it so every class stays (for quick checks).

    Raises:
        DataNotFoundError: the data file is missing (the message says where it was looked for).
        ValueError: a limit below 1.
    """
    for name, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be None or >= 1, got {limit}")
    (train_x, train_y), (test_x, test_y) = mnist5k_split(root)
    if limit_train is not None:
        train_x, train_y = _spaced(train_x, limit_train), _spaced(train_y, limit_train)
    if limit_test is not None:
        test_x, test_y = _spaced(test_x, limit_test), _spaced(test_y, limit_test)
    train = DistortedDigits(train_x, train_y, train_distortion, seed)
    levels = TEST_LEVELS if test_levels is None else test_levels
    tests = {
        name: DistortedDigits(test_x, test_y, dist, TEST_SEED + i)
        for i, (name, dist) in enumerate(levels.items())
    }
    return train, tests
