"""Balanced sampler: counts and ratios, caps, ignored examples, seeded determinism."""

from __future__ import annotations

import pytest
import torch

from torchdcn.models.detection.sampler import BalancedSampler


def _labels(num_pos: int, num_neg: int, num_ignored: int, seed: int = 0) -> torch.Tensor:
    lab = torch.tensor([1] * num_pos + [0] * num_neg + [-1] * num_ignored)
    return lab[torch.randperm(lab.numel(), generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize(
    ("batch", "fraction", "counts", "expected"),
    [
        (16, 0.25, (10, 100, 5), (4, 12)),  # plenty of both: the ratio holds
        (16, 0.25, (2, 100, 5), (2, 14)),  # too few positives: negatives fill
        (16, 0.5, (30, 3, 5), (8, 3)),  # too few negatives: positives stay capped
        (16, 0.5, (3, 4, 50), (3, 4)),  # too few of both
        (256, 0.5, (0, 1000, 0), (0, 256)),
        (7, 0.5, (10, 10, 0), (3, 4)),  # int(7 * 0.5) = 3 positives at most
    ],
)
def test_counts(batch, fraction, counts, expected):
    labels = _labels(*counts)
    pos, neg = BalancedSampler(batch, fraction)([labels], torch.Generator().manual_seed(0))
    assert (int(pos[0].sum()), int(neg[0].sum())) == expected
    assert torch.all(labels[pos[0]] >= 1) and torch.all(labels[neg[0]] == 0)
    assert not torch.any(pos[0] & neg[0])
    assert pos[0].dtype == torch.bool and pos[0].shape == labels.shape


def test_class_labels_count_as_positives_and_ignored_never_sampled():
    labels = torch.tensor([3, 1, 2, 0, 0, -1, -1, 5])
    pos, neg = BalancedSampler(100, 0.5)([labels])
    assert pos[0].tolist() == [True, True, True, False, False, False, False, True]
    assert neg[0].tolist() == [False, False, False, True, True, False, False, False]


def test_same_seed_same_sample_and_other_seed_other_sample():
    labels = [_labels(50, 500, 20, seed=1), _labels(40, 300, 0, seed=2)]
    sampler = BalancedSampler(64, 0.25)
    a = sampler(labels, torch.Generator().manual_seed(123))
    b = sampler(labels, torch.Generator().manual_seed(123))
    c = sampler(labels, torch.Generator().manual_seed(124))
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        assert torch.equal(x, y)
    assert not all(torch.equal(x, y) for x, y in zip(a[0] + a[1], c[0] + c[1]))


def test_sample_is_uniform_over_candidates():
    # each of 20 positives is picked with probability 5 / 20 over many draws
    labels = [_labels(20, 0, 0)]
    sampler, g = BalancedSampler(10, 0.5), torch.Generator().manual_seed(0)
    hits = sum(sampler(labels, g)[0][0].float() for _ in range(400))
    assert torch.all((hits / 400 - 0.25).abs() < 0.1)


def test_empty_and_bad_input():
    pos, neg = BalancedSampler(8, 0.5)([torch.zeros(0, dtype=torch.int64)])
    assert pos[0].shape == (0,) and neg[0].shape == (0,)
    with pytest.raises(ValueError, match="positive_fraction"):
        BalancedSampler(8, 1.5)
    with pytest.raises(ValueError, match="batch_size_per_image"):
        BalancedSampler(0, 0.5)
    with pytest.raises(TypeError, match="integer"):
        BalancedSampler(8, 0.5)([torch.zeros(3)])
    with pytest.raises(TypeError, match="list of Tensor"):
        BalancedSampler(8, 0.5)(torch.zeros(3, dtype=torch.int64))
