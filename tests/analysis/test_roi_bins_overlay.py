"""Which detection ``roi_bins_overlay`` draws (``prefer``), and its captions."""

from __future__ import annotations

import torch

from torchdcn.analysis.roi_bins_overlay import _pick

GT = torch.tensor([[0.0, 0, 10, 10], [20, 20, 80, 80]])  # the second is the largest


def _dets(*boxes):
    n = len(boxes)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
        "labels": torch.arange(1, n + 1),
        "scores": torch.linspace(0.9, 0.5, n),  # sorted by score, as detectors return them
    }


def _name(label):
    return f"L{label}"


def test_top_prefers_the_highest_score():
    box, label, caption = _pick(_dets([0, 0, 9, 9], [21, 20, 80, 79]), GT, None, "top", _name)
    assert label == 1 and box.tolist() == [[0, 0, 9, 9]]
    assert caption == "top detection\nL1, score 0.90"


def test_largest_prefers_the_detection_on_the_largest_box():
    box, label, caption = _pick(_dets([0, 0, 9, 9], [21, 20, 80, 79]), GT, None, "largest", _name)
    assert label == 2 and box.tolist() == [[21, 20, 80, 79]]
    assert caption == "detection of the largest object\nL2, score 0.50"


def test_largest_falls_back_to_the_top_detection_elsewhere():
    _, label, caption = _pick(_dets([0, 0, 9, 9]), GT, None, "largest", _name)
    assert label == 1 and caption.startswith("top detection (elsewhere)")


def test_no_detection_draws_the_largest_box_with_its_label_or_class_1():
    empty = _dets()
    box, label, caption = _pick(empty, GT, torch.tensor([4, 7]), "top", _name)
    assert label == 7 and box.tolist() == [[20, 20, 80, 80]]
    assert caption == "no detection\nlargest ground truth, L7"
    assert _pick(empty, GT, None, "largest", _name)[1] == 1
    assert _pick(empty, GT[:0], None, "top", _name) is None
