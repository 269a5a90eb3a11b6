"""Detection panels: greedy matching against hand-worked cases, and drawn boxes land on the pixels
of the image they outline (located in the PNG through a white square drawn in the image)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchdcn.analysis.detection_panels import (
    HIT_COLOR,
    MISS_COLOR,
    draw_detection_panels,
    match_detections,
)

pytest.importorskip("matplotlib")


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=float)


def _pixels_of(png: np.ndarray, color: str, tol: float = 40.0) -> np.ndarray:
    """``[K, 2]`` (row, col) of the PNG pixels within ``tol`` of ``color``."""
    dist = np.abs(png[..., :3].astype(float) - _rgb(color)).max(-1)
    return np.argwhere(dist <= tol)


def _read(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_matching_takes_highest_score_first_and_each_ground_truth_once():
    gt_boxes = torch.tensor([[10.0, 10, 30, 30], [50, 50, 80, 90]])
    gt_labels = torch.tensor([3, 7])
    boxes = torch.tensor(
        [
            [11.0, 10, 30, 31],  # IoU 0.90 with gt 0, same class, lower score
            [10.0, 10, 30, 30],  # exact gt 0, highest score: takes gt 0
            [50.0, 50, 80, 90],  # exact gt 1 but the wrong class
            [60.0, 0, 99, 20],  # nothing there
        ]
    )
    labels = torch.tensor([3, 3, 2, 7])
    scores = torch.tensor([0.8, 0.9, 0.95, 0.6])
    hit, found = match_detections(boxes, labels, scores, gt_boxes, gt_labels)
    assert hit.tolist() == [False, True, False, False]
    assert found.tolist() == [True, False]
    # below the IoU threshold nothing matches: box [10, 10, 30, 20] has IoU 0.5 exactly
    half = torch.tensor([[10.0, 10, 30, 20]])
    hit, _ = match_detections(half, torch.tensor([3]), torch.ones(1), gt_boxes, gt_labels, 0.51)
    assert hit.tolist() == [False]
    hit, _ = match_detections(half, torch.tensor([3]), torch.ones(1), gt_boxes, gt_labels, 0.5)
    assert hit.tolist() == [True]


def _square_image(x1: int, y1: int, x2: int, y2: int, size: int = 100) -> torch.Tensor:
    """Grey image (0.5) with a white square on pixels ``x1..x2-1`` x ``y1..y2-1`` (the edges of
    box ``(x1, y1, x2, y2)``)."""
    image = torch.full((3, size, size), 0.5)
    image[:, y1:y2, x1:x2] = 1.0
    return image


def _white_bbox(png: np.ndarray) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1) of the white square: the white pixels inside the grey image
    (the figure around it is white too, the grey appears nowhere else)."""
    grey = np.abs(png[..., :3].astype(int) - 127).max(-1) <= 8
    rows = np.nonzero(grey.sum(1) >= 50)[0]  # text edges have a few grey pixels per line
    cols = np.nonzero(grey.sum(0) >= 50)[0]
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    white = np.argwhere(png[..., :3].min(-1) >= 235)
    inside = white[
        (white[:, 0] > r0) & (white[:, 0] < r1) & (white[:, 1] > c0) & (white[:, 1] < c1)
    ]
    return inside[:, 0].min(), inside[:, 1].min(), inside[:, 0].max(), inside[:, 1].max()


def test_drawn_box_outlines_the_pixels_it_covers(tmp_path):
    x1, y1, x2, y2 = 30, 40, 70, 80
    image = _square_image(x1, y1, x2, y2)
    detections = {
        "model": [
            {
                "boxes": torch.tensor([[x1, y1, x2, y2], [5.0, 5, 20, 20]]),
                "labels": torch.tensor([1, 1]),
                "scores": torch.tensor([0.9, 0.3]),  # the second is below the threshold
            }
        ]
    }
    path = draw_detection_panels([image], detections, tmp_path / "d.png", text=False)
    png = _read(path)
    wr0, wc0, wr1, wc1 = _white_bbox(png)
    green = _pixels_of(png, HIT_COLOR)
    assert len(green) > 50
    # every drawn pixel lies on the square's outline (within the line's width)
    gr0, gc0 = green.min(0)
    gr1, gc1 = green.max(0)
    for drawn, white in ((gr0, wr0), (gc0, wc0), (gr1, wr1), (gc1, wc1)):
        assert abs(int(drawn) - int(white)) <= 3, (drawn, white)
    inner = green[
        (green[:, 0] > wr0 + 4) & (green[:, 0] < wr1 - 4)
        & (green[:, 1] > wc0 + 4) & (green[:, 1] < wc1 - 4)
    ]  # fmt: skip
    assert len(inner) == 0
    # each of the four sides is drawn along most of its length
    for r, c in ((wr0, None), (wr1, None), (None, wc0), (None, wc1)):
        on = (
            green[np.abs(green[:, 0] - r) <= 3]
            if c is None
            else green[np.abs(green[:, 1] - c) <= 3]
        )
        span = np.ptp(on[:, 1] if c is None else on[:, 0])
        assert span >= 0.9 * (wc1 - wc0 if c is None else wr1 - wr0)
    # the low-scoring box (pixels 5..19) is not drawn: map it through the square's scale
    scale = (wc1 - wc0 + 1) / (x2 - x1)
    col0, row0 = wc0 - (x1 - 5) * scale, wr0 - (y1 - 5) * scale
    low = green[
        (green[:, 0] >= row0 - 3) & (green[:, 0] <= row0 + 15 * scale + 3)
        & (green[:, 1] >= col0 - 3) & (green[:, 1] <= col0 + 15 * scale + 3)
    ]  # fmt: skip
    assert len(low) == 0


def test_false_detections_are_drawn_in_the_miss_colour_where_they_are(tmp_path):
    image = _square_image(30, 40, 70, 80)
    target = {"boxes": torch.tensor([[30.0, 40, 70, 80]]), "labels": torch.tensor([4])}
    detections = {
        "right": [
            {"boxes": target["boxes"], "labels": torch.tensor([4]), "scores": torch.tensor([0.9])}
        ],
        "wrong class": [
            {"boxes": target["boxes"], "labels": torch.tensor([5]), "scores": torch.tensor([0.9])}
        ],
    }
    path = draw_detection_panels(
        [image], detections, tmp_path / "d.png", targets=[target], text=False
    )
    png = _read(path)
    green, red = _pixels_of(png, HIT_COLOR), _pixels_of(png, MISS_COLOR)
    assert len(green) > 50 and len(red) > 50
    # one panel per row: the hit is in the upper half, the false detection in the lower one
    middle = png.shape[0] / 2
    assert green[:, 0].max() < middle < red[:, 0].min()


def test_bad_input_names_the_argument(tmp_path):
    image = torch.zeros(3, 8, 8)
    one = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)}
    with pytest.raises(ValueError, match=r"detections\['a'\] must have one dict per image"):
        draw_detection_panels([image, image], {"a": [one]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="targets must have one dict per image"):
        draw_detection_panels([image], {"a": [one]}, tmp_path / "x.png", targets=[])
    with pytest.raises(ValueError, match="score_thresh must be in"):
        draw_detection_panels([image], {"a": [one]}, tmp_path / "x.png", score_thresh=2.0)
    with pytest.raises(ValueError, match="one row per detection"):
        match_detections(
            torch.zeros(2, 4), torch.zeros(1), torch.zeros(2), torch.zeros(0, 4), torch.zeros(0)
        )
