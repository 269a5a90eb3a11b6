"""CocoEvaluator's ``segm`` scores: real COCO128 polygon / RLE masks fed back as detections give
AP 1.0 next to the boxes, masks are binarised at >= 0.5, a hand-computed half-overlapping mask
scores as COCOeval's mask IoU says, and Mask R-CNN outputs ``[K, 1, H, W]`` go through."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")

from torchdcn.engine.coco_eval import CocoEvaluator, metric_names

COCO128 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "coco128"


def _toy_gt(path: Path) -> Path:
    # one 10 x 20 image, one object: pixels x in [2, 8), y in [4, 12) (area 48)
    data = {
        "images": [{"id": 1, "file_name": "1.jpg", "height": 20, "width": 10}],
        "categories": [{"id": 5, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "iscrowd": 0, "bbox": [2, 4, 6, 8],
             "area": 48, "segmentation": [[2, 4, 8, 4, 8, 12, 2, 12]]},
        ],
    }  # fmt: skip
    path.write_text(json.dumps(data))
    return path


def _one(masks: torch.Tensor) -> dict:
    return {
        "boxes": torch.tensor([[2.0, 4.0, 8.0, 12.0]]),
        "labels": torch.tensor([1]),
        "scores": torch.tensor([0.9]),
        "masks": masks,
    }


def test_threshold_is_inclusive_and_shapes(tmp_path):
    evaluator = CocoEvaluator(_toy_gt(tmp_path / "gt.json"), iou_types=("bbox", "segm"))
    m = torch.full((1, 1, 20, 10), 0.49)
    m[0, 0, 4:12, 2:8] = 0.5  # exactly the threshold: inside
    evaluator.process([_one(m)], [{"image_id": 1, "orig_size": (20, 10)}])
    metrics = evaluator.summarize()
    assert metrics["segm_AP"] == pytest.approx(1.0) and metrics["AP"] == pytest.approx(1.0)
    assert "segm:" in evaluator.table and "bbox:" in evaluator.table


def test_half_mask_scores_by_mask_iou(tmp_path):
    # the left half of the object (IoU 0.5 with it): a hit at IoU 0.5 only, so AP50 = 1,
    # AP75 = 0 and AP (0.50:0.95) = 1/10
    evaluator = CocoEvaluator(_toy_gt(tmp_path / "gt.json"), iou_types=("bbox", "segm"))
    m = torch.zeros(1, 1, 20, 10)
    m[0, 0, 4:12, 2:5] = 1.0
    evaluator.process([_one(m)], [{"image_id": 1, "orig_size": (20, 10)}])
    metrics = evaluator.summarize()
    assert metrics["segm_AP50"] == pytest.approx(1.0)
    assert metrics["segm_AP75"] == pytest.approx(0.0)
    assert metrics["segm_AP"] == pytest.approx(0.1)
    assert metrics["AP"] == pytest.approx(1.0)  # the box itself is right


@pytest.mark.skipif(
    not (COCO128 / "annotations" / "instances_train2017.json").is_file(),
    reason=f"coco128 not found at {COCO128}",
)
@pytest.mark.filterwarnings("ignore:__array__:DeprecationWarning")
def test_coco128_ground_truth_masks_fed_back_score_one():
    from torchdcn.data.coco import coco128

    ds = coco128(COCO128.parent, masks=True)
    evaluator = CocoEvaluator.from_dataset(ds, iou_types=("bbox", "segm"), boxes_in="original")
    for i in range(12):
        t = ds.target(i)
        k = len(t["boxes"])
        out = {
            "boxes": t["boxes"],
            "labels": t["labels"],
            "scores": torch.linspace(0.9, 0.1, k),
            "masks": t["masks"][:, None].float(),  # [K, 1, H, W] as Mask R-CNN gives them
        }
        evaluator.process([out], [t])
    metrics = evaluator.summarize()
    names = metric_names(("bbox", "segm"))
    assert set(metrics) == set(names)
    for name in ("AP", "AP50", "AP75", "segm_AP", "segm_AP50", "segm_AP75"):
        assert metrics[name] == pytest.approx(1.0), name
    rle = evaluator.results("segm")[0]["segmentation"]
    assert set(rle) == {"size", "counts"} and isinstance(rle["counts"], str)
    from pycocotools import mask as mask_util

    decoded = mask_util.decode({**rle, "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded, ds.target(0)["masks"][0].numpy())


def test_ground_truth_without_segmentation_is_scored_by_its_box(tmp_path):
    path = _toy_gt(tmp_path / "gt.json")
    data = json.loads(path.read_text())
    del data["annotations"][0]["segmentation"]
    path.write_text(json.dumps(data))
    evaluator = CocoEvaluator(path, iou_types=("bbox", "segm"))
    m = torch.zeros(1, 1, 20, 10)
    m[0, 0, 4:12, 2:8] = 1.0  # the box's pixels
    evaluator.process([_one(m)], [{"image_id": 1, "orig_size": (20, 10)}])
    assert evaluator.summarize()["segm_AP"] == pytest.approx(1.0)
    assert "segmentation" not in evaluator.coco_gt.dataset["annotations"][0]  # untouched
