"""select_detections against an independent per-class NMS loop, and its cost with many
low-score candidates (the NMS must not see all of them)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchdcn.models.detection import postprocess
from torchdcn.models.detection.postprocess import check_postprocess_args, select_detections
from torchdcn.ops import clip_boxes_to_image, nms


def _reference(boxes, scores, size, score_thresh, nms_thresh, count, min_size=1e-2):
    """One NMS per class with the single-class op, then merged by (score desc, flat index)."""
    c = scores.shape[1]
    clipped = clip_boxes_to_image(boxes, size)
    rows = []  # (score, flat index, label, box)
    for k in range(c):
        s = scores[:, k]
        b = clipped[:, k]
        wh = b[:, 2:] - b[:, :2]
        ok = torch.where((s > score_thresh) & (wh >= min_size).all(dim=1))[0]
        for i in ok[nms(b[ok], s[ok], nms_thresh)].tolist():
            rows.append((float(s[i]), i * c + k, k + 1, b[i]))
    rows.sort(key=lambda t: (-t[0], t[1]))
    rows = rows[:count]
    if not rows:
        return torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    return (
        torch.stack([t[3] for t in rows]),
        torch.tensor([t[2] for t in rows]),
        torch.tensor([t[0] for t in rows]),
    )


def _clustered(r, c, seed, centres=6, quantise=None):
    """``r`` candidates around a few objects (heavy overlaps), ``c`` classes."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(centres, 2, generator=g) * 80
    wh = torch.rand(centres, 2, generator=g) * 30 + 5
    which = torch.randint(0, centres, (r,), generator=g)
    jitter = torch.randn(r, c, 4, generator=g) * 3
    xy = centre[which][:, None]
    boxes = torch.cat([xy, xy + wh[which][:, None]], dim=-1) + jitter - 5
    scores = torch.rand(r, c, generator=g)
    if quantise:  # many ties
        scores = (scores * quantise).floor() / quantise
    return boxes, scores


@pytest.mark.parametrize("score_thresh", [0.0, 0.05, 0.5])
@pytest.mark.parametrize("count", [1, 10, 100])
@pytest.mark.parametrize("quantise", [None, 8])
def test_matches_a_per_class_nms_loop(score_thresh, count, quantise):
    boxes, scores = _clustered(300, 5, seed=count, quantise=quantise)
    out = select_detections(
        boxes, scores, (90, 100), score_thresh=score_thresh, detections_per_img=count
    )
    ref_boxes, ref_labels, ref_scores = _reference(
        boxes, scores, (90, 100), score_thresh, 0.5, count
    )
    assert out["labels"].tolist() == ref_labels.tolist()
    torch.testing.assert_close(out["scores"], ref_scores)
    torch.testing.assert_close(out["boxes"], ref_boxes)


def test_grows_past_the_first_block_when_duplicates_fill_it():
    # 3000 near-copies of one class-1 box score highest: the first 1000 candidates give one
    # survivor, and the distinct boxes below them must still be found.
    dup = torch.tensor([10.0, 10.0, 40.0, 40.0]).expand(3000, 1, 4)
    grid = torch.arange(50, dtype=torch.float32)
    distinct = torch.stack([grid * 2, grid * 0, grid * 2 + 1, grid * 0 + 1], dim=1)[:, None]
    boxes = torch.cat([dup, distinct])
    scores = torch.cat([torch.linspace(0.99, 0.6, 3000), torch.linspace(0.5, 0.1, 50)])[:, None]
    out = select_detections(boxes, scores, (200, 200), score_thresh=0.05, detections_per_img=20)
    ref_boxes, _, ref_scores = _reference(boxes, scores, (200, 200), 0.05, 0.5, 20)
    assert len(out["scores"]) == 20
    torch.testing.assert_close(out["scores"], ref_scores)
    torch.testing.assert_close(out["boxes"], ref_boxes)


def test_many_low_score_candidates_never_reach_the_nms_all_at_once(monkeypatch):
    # 1000 RoIs x 80 classes at score_thresh 0: 80000 candidates. The 100 best survivors are
    # among the first few thousand, so the NMS must never be handed all 80000.
    seen = []
    real = postprocess.batched_nms

    def spy(boxes, scores, idxs, thresh):
        seen.append(boxes.shape[0])
        return real(boxes, scores, idxs, thresh)

    monkeypatch.setattr(postprocess, "batched_nms", spy)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(1000, 1, 2, generator=g) * 500
    boxes = torch.cat([xy, xy + 50], dim=-1).expand(1000, 80, 4)
    scores = torch.softmax(torch.randn(1000, 81, generator=g), dim=1)[:, 1:]
    out = select_detections(boxes, scores, (600, 600), score_thresh=0.0)
    assert len(out["scores"]) == 100
    assert max(seen) <= 1000, seen


def test_zero_detections_and_no_candidates():
    boxes, scores = _clustered(20, 3, seed=0)
    out = select_detections(boxes, scores, (90, 100), detections_per_img=0)
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)
    out = select_detections(boxes, scores, (90, 100), score_thresh=1.0)
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,)
    assert out["labels"].dtype == torch.int64


@pytest.mark.parametrize(
    "bad",
    [True, 1 + 2j, "0.5", torch.tensor([0.5]), torch.tensor(0.5), math.nan, math.inf],
    ids=["bool", "complex", "str", "1-d", "0-d tensor", "nan", "inf"],
)
def test_thresholds_refused_as_every_scalar_argument(bad):
    """_checks.real_scalar's rule (TypeError for the kind, ValueError for NaN and inf); tensors
    are refused too, as they always were (settings of the module, not read per call)."""
    error = ValueError if isinstance(bad, float) else TypeError
    for args, name in (((bad, 0.5, 100), "score_thresh"), ((0.05, bad, 100), "nms_thresh")):
        with pytest.raises(error, match=f"^{name} must be"):
            check_postprocess_args(*args)


@pytest.mark.parametrize(
    "bad",
    [True, 1 + 0j, "10", torch.tensor(10), 10.0, 2.5, np.float32(10.0)],
    ids=["bool", "complex", "str", "0-d tensor", "10.0", "2.5", "numpy-10.0"],
)
def test_detections_per_img_refused_as_every_integer_argument(bad):
    with pytest.raises(TypeError, match=r"^detections_per_img must be a positive int\b"):
        check_postprocess_args(0.05, 0.5, bad)
    got = check_postprocess_args(np.float64(0.05), np.float32(0.5), np.int64(100))
    assert got == (0.05, 0.5, 100) and [type(v) for v in got] == [float, float, int]
