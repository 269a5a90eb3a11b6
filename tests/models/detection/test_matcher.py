"""Matcher: thresholds at their boundaries, no ground truth, ties, low-quality matches, NaN."""

from __future__ import annotations

import pytest
import torch

from torchdcn.models.detection.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher


def test_no_ground_truth_makes_every_prediction_negative():
    out = Matcher(0.7, 0.3, True)(torch.zeros(0, 5))
    assert out.dtype == torch.int64
    assert out.tolist() == [BELOW_LOW_THRESHOLD] * 5
    assert Matcher(0.7, 0.3)(torch.zeros(2, 0)).shape == (0,)


def test_threshold_boundaries():
    # high is inclusive, low is inclusive of the "between" band
    iou = torch.tensor([[0.7, 0.69, 0.3, 0.29, 0.0, 1.0]])
    out = Matcher(0.7, 0.3)(iou)
    assert out.tolist() == [0, BETWEEN_THRESHOLDS, BETWEEN_THRESHOLDS, -1, -1, 0]


def test_equal_thresholds_have_no_ignored_band():
    out = Matcher(0.5, 0.5)(torch.tensor([[0.5, 0.49]]))
    assert out.tolist() == [0, -1]


def test_each_prediction_takes_its_best_ground_truth_ties_to_the_lowest_index():
    iou = torch.tensor([[0.8, 0.9, 0.75], [0.9, 0.8, 0.75]])
    assert Matcher(0.7, 0.3)(iou).tolist() == [1, 0, 0]


def test_low_quality_matches():
    iou = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0],  # gt 0: well matched by pred 0
            [0.0, 0.4, 0.4, 0.2, 0.0],  # gt 1: best 0.4, reached by preds 1 and 2 (a tie)
            [0.0, 0.0, 0.0, 0.0, 0.0],  # gt 2: overlaps nothing, adds nothing
        ]
    )
    plain = Matcher(0.7, 0.3)(iou)
    assert plain.tolist() == [0, -2, -2, -1, -1]
    low = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    assert low.tolist() == [0, 1, 1, -1, -1]


def test_low_quality_match_keeps_the_predictions_own_best_ground_truth():
    # pred 1 is gt 1's best (0.5) but overlaps gt 0 more (0.6): it is matched to gt 0
    iou = torch.tensor([[0.9, 0.6], [0.1, 0.5]])
    assert Matcher(0.7, 0.3, True)(iou).tolist() == [0, 0]


def test_nan_counts_as_zero_overlap():
    iou = torch.tensor([[float("nan"), 0.8], [float("nan"), 0.1]])
    assert Matcher(0.7, 0.3, True)(iou).tolist() == [-1, 0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="low_threshold must be <= high_threshold"):
        Matcher(0.3, 0.7)
    with pytest.raises(ValueError, match="high_threshold must be in"):
        Matcher(1.5, 0.3)
    with pytest.raises(ValueError, match="iou must be a Tensor\\[M_gt, N_pred\\]"):
        Matcher(0.7, 0.3)(torch.zeros(3))
    with pytest.raises(TypeError, match="floating point"):
        Matcher(0.7, 0.3)(torch.zeros(2, 3, dtype=torch.int64))
