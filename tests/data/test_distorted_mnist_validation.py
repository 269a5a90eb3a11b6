"""The validation split of the distorted-digits protocol: stratified, fixed, disjoint from the
test digits, drawn at the test levels with its own seeds."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from torchdcn.data.distorted_mnist import (
    TEST_LEVELS,
    TEST_SEED,
    VAL_SEED,
    distorted_mnist,
    distorted_mnist_validation,
    validation_split,
)


def _fake_root(tmp_path, per_class=500):
    """A fake mnist5k file: digit ``i`` has first pixel ``i % 256``, second ``i // 256`` (a
    fingerprint), the rest 0, and label ``i // per_class``."""
    folder = tmp_path / "mnist5k"
    folder.mkdir(parents=True)
    with gzip.open(folder / "mnist_5k.csv.gz", "wt") as f:
        for i in range(10 * per_class):
            pixels = [i % 256, i // 256] + [0] * 782
            f.write(",".join(map(str, [*pixels, i // per_class])) + "\n")
    return tmp_path


def test_split_is_stratified_disjoint_complete_and_fixed():
    labels = torch.arange(10).repeat_interleave(40)[torch.randperm(400)]
    train, val = validation_split(labels, per_class=7, seed=3)
    assert torch.equal(torch.bincount(labels[val], minlength=10), torch.full((10,), 7))
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(400))
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    again_train, again_val = validation_split(labels, per_class=7, seed=3)
    assert torch.equal(again_val, val) and torch.equal(again_train, train)
    _, other = validation_split(labels, per_class=7, seed=4)
    assert not torch.equal(other, val)


@pytest.mark.parametrize(("per_class", "match"), [(0, "per_class must be >= 1"), (40, "class")])
def test_split_refuses_bad_sizes(per_class, match):
    labels = torch.arange(10).repeat_interleave(40)
    with pytest.raises(ValueError, match=match):
        validation_split(labels, per_class=per_class)


def test_validation_sets_come_from_the_training_digits_only(tmp_path):
    root = _fake_root(tmp_path)
    train4000, tests = distorted_mnist(root)
    train, vals = distorted_mnist_validation(root, seed=5, per_class=50)
    assert len(train) == 3500 and list(vals) == list(TEST_LEVELS)
    val = next(iter(vals.values()))
    assert len(val) == 500
    assert torch.equal(torch.bincount(val.labels, minlength=10), torch.full((10,), 50))

    def keys(ds):  # the fingerprint identifies a digit of the fake file
        return {(int(x[0, 0]), int(x[0, 1])) for x in ds.images}

    assert keys(train) | keys(val) == keys(train4000)
    assert not keys(train) & keys(val)
    assert not keys(val) & keys(next(iter(tests.values())))
    for i, (name, ds) in enumerate(vals.items()):
        assert ds.distortion == TEST_LEVELS[name] and ds.seed == VAL_SEED + i
        assert ds.seed != TEST_SEED + i and torch.equal(ds.images, val.images)
    assert train.seed == 5


def test_limits(tmp_path):
    root = _fake_root(tmp_path, per_class=120)
    train, vals = distorted_mnist_validation(
        root, per_class=10, limit_train=20, limit_val=30, val_levels={"a": TEST_LEVELS["rot 30"]}
    )
    assert len(train) == 20 and list(vals) == ["a"] and len(vals["a"]) == 30
    assert set(np.unique(vals["a"].labels.numpy())) == set(range(10))
    with pytest.raises(ValueError, match="limit_val must be None or >= 1, got 0"):
        distorted_mnist_validation(root, limit_val=0)
