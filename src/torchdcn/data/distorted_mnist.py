"""The demo's protocol: train on mildly distorted digits, test on stronger, held-out distortions.

Training digits (4000, the fixed split of :mod:`torchdcn.data.mnist`) are scaled by 0.8-1.25
(log-uniform), rotated by up to 15 degrees and shifted by up to 3 pixels on a 48 x 48 canvas, with
a fresh draw every epoch. The 1000 test digits are drawn once per level: the training
distribution itself, then scales and rotations outside the training range (each level keeps the
3-pixel shifts). Test sets use their own seed, the same in every run, so runs compare digit for
digit.

Choices (learning rates, schedules, model options) are made on a validation split, never on the
test digits: :func:`distorted_mnist_validation` holds out 50 training digits per class (a fixed
draw, :data:`VAL_SPLIT_SEED`), trains on the other 3500 and draws the 500 held-out digits at the
same levels as the test digits (with their own seeds, :data:`VAL_SEED`).
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
#: validation digits per class held out of the 4000 training digits
VAL_PER_CLASS = 50
#: seed of the fixed validation split (independent of the training seed)
VAL_SPLIT_SEED = 1
#: seed of every validation level (level ``i`` uses ``VAL_SEED + i``)
VAL_SEED = 20_000


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


def validation_split(
    labels: Tensor, per_class: int = VAL_PER_CLASS, seed: int = VAL_SPLIT_SEED
) -> tuple[Tensor, Tensor]:
    """Stratified split of a training set: ``per_class`` digits of every class (a random draw
    with ``seed``) validate, the rest train.

    Args:
        labels (Tensor[N]): int64 classes of the training digits.
        per_class: validation digits per class (every class must have more).
        seed: seed of the draw (the same seed gives the same split).

    Returns:
        Sorted ``(train_idx, val_idx)``, int64 indices into ``labels``.

    Raises:
        ValueError: ``per_class`` below 1, or a class with ``per_class`` digits or fewer.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in labels.unique().tolist():
        members = torch.nonzero(labels == c).flatten()
        if len(members) <= per_class:
            raise ValueError(
                f"class {c} has {len(members)} digits; per_class={per_class} must leave "
                "some to train"
            )
        members = members[torch.randperm(len(members), generator=gen)]
        val.append(members[:per_class])
        train.append(members[per_class:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def distorted_mnist_validation(
    root: str | os.PathLike | None = None,
    seed: int = 0,
    train_distortion: Distortion = TRAIN_DISTORTION,
    val_levels: dict[str, Distortion] | None = None,
    per_class: int = VAL_PER_CLASS,
    limit_train: int | None = None,
    limit_val: int | None = None,
) -> tuple[DistortedDigits, dict[str, DistortedDigits]]:
    """``(train_set, {level name: validation set})`` for making choices without the test digits.

    The 4000 training digits of :func:`distorted_mnist` lose ``per_class`` digits per class
    (:func:`validation_split`); the remaining ``4000 - 10 * per_class`` train as in
    :func:`distorted_mnist`, and the held-out ones are drawn at the test levels (default
    :data:`TEST_LEVELS`), level ``i`` with seed ``VAL_SEED + i``. The 1000 test digits are not
    touched.

    Args:
        root, seed, train_distortion, limit_train: as :func:`distorted_mnist`.
        val_levels: the validation levels (default: the test levels).
        per_class: validation digits per class.
        limit_val: keep only this many validation digits, evenly spaced (quick checks).

    Raises:
        DataNotFoundError: the data file is missing.
        ValueError: a limit below 1, or a bad ``per_class`` (see :func:`validation_split`).
    """
    _check_limits(limit_train=limit_train, limit_val=limit_val)
    (images, labels), _ = mnist5k_split(root)
    fit, val = validation_split(labels, per_class)
    return _distorted_sets(
        (images[fit], labels[fit], limit_train),
        (images[val], labels[val], limit_val),
        train_distortion, val_levels, seed, VAL_SEED,
    )  # fmt: skip


def _check_limits(**limits: int | None) -> None:
    for name, limit in limits.items():
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be None or >= 1, got {limit}")


def _distorted_sets(
    train: tuple[Tensor, Tensor, int | None],
    held: tuple[Tensor, Tensor, int | None],
    train_distortion: Distortion,
    levels: dict[str, Distortion] | None,
    seed: int,
    level_seed: int,
) -> tuple[DistortedDigits, dict[str, DistortedDigits]]:
    """The training set and one set per level from ``(images, labels, limit)`` of each side;
    level ``i`` is drawn with seed ``level_seed + i``."""

    def limited(x: Tensor, y: Tensor, limit: int | None) -> tuple[Tensor, Tensor]:
        return (x, y) if limit is None else (_spaced(x, limit), _spaced(y, limit))

    train_x, train_y = limited(*train)
    held_x, held_y = limited(*held)
    levels = TEST_LEVELS if levels is None else levels
    sets = {
        name: DistortedDigits(held_x, held_y, dist, level_seed + i)
        for i, (name, dist) in enumerate(levels.items())
    }
    return DistortedDigits(train_x, train_y, train_distortion, seed), sets


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
    _check_limits(limit_train=limit_train, limit_test=limit_test)
    (train_x, train_y), (test_x, test_y) = mnist5k_split(root)
    return _distorted_sets(
        (train_x, train_y, limit_train), (test_x, test_y, limit_test),
        train_distortion, test_levels, seed, TEST_SEED,
    )  # fmt: skip
