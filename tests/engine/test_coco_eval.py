"""CocoEvaluator: ground truth fed back scores 1.0, hand-computed scores of perturbed detections,
label mapping, images without detections, boxes mapped back from the input image, masks, and the
gather over two gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

pytest.importorskip("pycocotools")

from torchdcn.engine import Evaluator
from torchdcn.engine.coco_eval import CocoEvaluator, metric_names

COCO128 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "coco128"
SIZE = 200  # every synthetic image is SIZE x SIZE

# (image id, category id, [x, y, w, h], iscrowd): small, medium and large objects of two
# categories (ids 3 and 7, labels 1 and 2) that never overlap; image 4 has no objects
GT = [
    (1, 3, [10, 10, 20, 20], 0),  # small (area 400 < 32^2)
    (1, 7, [100, 100, 50, 50], 0),  # medium
    (2, 3, [20, 20, 120, 120], 0),  # large
    (2, 7, [160, 160, 20, 20], 0),
    (3, 3, [50, 50, 40, 40], 0),
    (3, 7, [120, 0, 60, 60], 1),  # crowd: ignored by COCOeval
]
LABEL = {3: 1, 7: 2}


def _rect_polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def write_gt(path: Path) -> Path:
    annotations = []
    for i, (image_id, cat, (x, y, w, h), crowd) in enumerate(GT, start=1):
        if crowd:
            from pycocotools import mask as mask_util

            m = np.zeros((SIZE, SIZE), dtype=np.uint8, order="F")
            m[y : y + h, x : x + w] = 1
            seg = mask_util.encode(m)
            seg["counts"] = seg["counts"].decode("ascii")
        else:
            seg = _rect_polygon(x, y, w, h)
        annotations.append({"id": i, "image_id": image_id, "category_id": cat, "iscrowd": crowd,
                            "bbox": [x, y, w, h], "area": w * h, "segmentation": seg})  # fmt: skip
    data = {
        "images": [
            {"id": i, "file_name": f"{i}.jpg", "height": SIZE, "width": SIZE} for i in (1, 2, 3, 4)
        ],
        "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
        "annotations": annotations,
    }
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def gt_file(tmp_path):
    return write_gt(tmp_path / "instances_toy.json")


def detections(image_id, shift=0.0, masks=False):
    """The image's non-crowd ground truth as detections (xyxy, labels 1..2, scores), each box
    moved right by ``shift`` times its width."""
    rows = [(cat, box) for i, cat, box, crowd in GT if i == image_id and not crowd]
    boxes = torch.tensor([[x + shift * w, y, x + w + shift * w, y + h] for _, (x, y, w, h) in rows])
    out = {
        "boxes": boxes.reshape(-1, 4).float(),
        "labels": torch.tensor([LABEL[c] for c, _ in rows], dtype=torch.int64),
        "scores": torch.linspace(0.9, 0.5, len(rows)),
    }
    if masks:
        m = torch.zeros(len(rows), SIZE, SIZE)
        for k, (_, (x, y, w, h)) in enumerate(rows):
            m[k, y : y + h, x : x + w] = 0.8  # probabilities
        out["masks"] = m
    return out


def target(image_id):
    return {"image_id": image_id, "orig_size": (SIZE, SIZE), "size": (SIZE, SIZE)}


def run(evaluator, image_ids, **kw):
    evaluator.reset()
    for i in image_ids:
        evaluator.process([detections(i, **kw)], [target(i)])
    return evaluator.summarize()


def test_ground_truth_fed_back_scores_one(gt_file):
    evaluator = CocoEvaluator(gt_file)
    assert isinstance(evaluator, Evaluator)
    metrics = run(evaluator, [1, 2, 3, 4])
    assert list(metrics) == metric_names() and metrics == pytest.approx(
        dict.fromkeys(metric_names(), 1.0)
    )
    assert "IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in evaluator.table


def test_shifted_boxes_score_by_their_iou(gt_file):
    # a box moved by 0.2 of its width overlaps its object with IoU (1 - 0.2) / (1 + 0.2) = 0.667:
    # a hit at the thresholds 0.50, 0.55, 0.60, 0.65 only
    metrics = run(CocoEvaluator(gt_file), [1, 2, 3, 4], shift=0.2)
    assert metrics["AP50"] == metrics["mAP@0.5"] == pytest.approx(1.0)
    assert metrics["AP75"] == metrics["mAP@0.7"] == 0.0
    assert metrics["AP"] == pytest.approx(0.4)
    # 0.1: IoU 0.818, hits up to 0.80 (7 of 10 thresholds)
    metrics = run(CocoEvaluator(gt_file), [1, 2, 3, 4], shift=0.1)
    assert metrics["mAP@0.7"] == pytest.approx(1.0) and metrics["AP"] == pytest.approx(0.7)
    assert metrics["AP75"] == pytest.approx(1.0) and metrics["mAP@0.5"] >= metrics["mAP@0.7"]


def _recall_ap(recalls):
    """COCO AP of detections that are all correct up to recall r (precision 1, then nothing):
    the share of the 101 recall points at or below r, averaged over the categories."""
    points = np.linspace(0.0, 1.0, 101)
    return float(np.mean([(points <= r).sum() / 101 for r in recalls]))


def test_an_image_without_detections_counts_its_objects_as_missed(gt_file):
    evaluator = CocoEvaluator(gt_file)
    evaluator.reset()
    for i in (1, 2, 3, 4):
        out = detections(i) if i != 2 else {k: v[:0] for k, v in detections(i).items()}
        evaluator.process([out], [target(i)])
    metrics = evaluator.summarize()
    # category 3 found 2 of 3 objects, category 7 1 of 2 (its crowd does not count)
    assert metrics["AP"] == pytest.approx(_recall_ap([2 / 3, 1 / 2]))
    assert metrics["mAP@0.5"] == pytest.approx(_recall_ap([2 / 3, 1 / 2]))
    # an image never processed is not scored at all
    assert run(CocoEvaluator(gt_file), [1, 3])["AP"] == 1.0


def test_label_mapping_back_to_category_ids(gt_file):
    swapped = CocoEvaluator(gt_file, {1: 7, 2: 3})
    assert run(swapped, [1, 2, 3])["AP"] == 0.0
    as_list = CocoEvaluator(gt_file, [3, 7])  # label l -> item l - 1
    assert run(as_list, [1, 2, 3])["AP"] == 1.0
    with pytest.raises(ValueError, match=r"category ids \[5\]"):
        CocoEvaluator(gt_file, {1: 3, 2: 5})
    evaluator = CocoEvaluator(gt_file)
    bad = detections(1)
    bad["labels"] = torch.tensor([1, 3])
    with pytest.raises(ValueError, match=r"labels \[3\] have no category id"):
        evaluator.process([bad], [target(1)])
    with pytest.raises(ValueError, match="image_id 99 is not in the ground truth"):
        evaluator.process([detections(1)], [target(99)])
    with pytest.raises(ValueError, match="one entry per image"):
        evaluator.process([detections(1)], [])


def test_an_image_processed_twice_in_one_process_counts_once(gt_file):
    # it used to count its detections twice (AP 0.70 instead of 1.0); as across processes
    # (gathered()), the first results of an image are kept
    evaluator = CocoEvaluator(gt_file)
    evaluator.process([detections(1), detections(2)], [target(1), target(2)])
    with pytest.warns(UserWarning, match="image_id 1 was already processed"):
        evaluator.process([detections(1, shift=0.5)], [target(1)])  # wrong boxes: ignored
    assert len(evaluator.results()) == 4
    assert evaluator.summarize() == pytest.approx(dict.fromkeys(metric_names(), 1.0))
    with pytest.warns(UserWarning, match="image_id 2 was already processed"):
        evaluator.process([detections(2), detections(2)], [target(2), target(2)])
    evaluator.reset()  # forgets the images too
    evaluator.process([detections(1, shift=0.5)], [target(1)])
    assert evaluator.summarize()["AP"] == 0.0


def test_predicted_boxes_must_be_xyxy_and_finite(gt_file):
    evaluator = CocoEvaluator(gt_file)
    xywh = detections(1)
    xywh["boxes"] = torch.tensor([[10.0, 10.0, 20.0, 20.0], [100.0, 100.0, 50.0, 50.0]])
    with pytest.raises(
        ValueError,
        match=r"outputs\[1\]\['boxes'\] \(image 1\) must be finite "
        r"\(x1, y1, x2, y2\) with x2 >= x1 .* row 1 = \[100.0, 100.0, 50.0, 50.0\]",
    ):
        evaluator.process([detections(2), xywh], [target(2), target(1)])
    nan = detections(1)
    nan["boxes"][0, 3] = float("nan")
    with pytest.raises(ValueError, match=r"outputs\[0\]\['boxes'\].* row 0"):
        evaluator.process([nan], [target(1)])
    # a refused image is not recorded; zero-width boxes (clipped at a border) are accepted
    flat = detections(1)
    flat["boxes"][1, 2] = flat["boxes"][1, 0]
    evaluator.process([flat], [target(1)])
    assert [r["image_id"] for r in evaluator.results()] == [2, 2, 1, 1]


def test_no_detections_and_no_images(gt_file):
    evaluator = CocoEvaluator(gt_file)
    for i in (1, 2, 3):
        evaluator.process([{k: v[:0] for k, v in detections(i).items()}], [target(i)])
    metrics = evaluator.summarize()
    assert metrics == pytest.approx(dict.fromkeys(metric_names(), 0.0))
    evaluator.reset()
    assert evaluator.summarize() == pytest.approx(dict.fromkeys(metric_names(), -1.0))


def test_boxes_in_the_input_image_are_mapped_back(gt_file):
    # the model saw the image resized to 100 x 150 (h, w) and flipped
    def seen(i):
        out = detections(i)
        b = out["boxes"] * torch.tensor([0.75, 0.5, 0.75, 0.5])
        out["boxes"] = torch.stack([150 - b[:, 2], b[:, 1], 150 - b[:, 0], b[:, 3]], dim=1)
        return out, {**target(i), "size": (100, 150), "flipped": True}

    for boxes_in, want in (("input", 1.0), ("original", 0.0)):
        evaluator = CocoEvaluator(gt_file, boxes_in=boxes_in)
        for i in (1, 2, 3):
            out, t = seen(i)
            evaluator.process([out], [t])
        assert evaluator.summarize()["AP"] == want


def test_masks_fed_back_score_one(gt_file):
    evaluator = CocoEvaluator(gt_file, iou_types=("bbox", "segm"))
    metrics = run(evaluator, [1, 2, 3, 4], masks=True)
    assert metrics == pytest.approx(dict.fromkeys(metric_names(("bbox", "segm")), 1.0))
    # the kept results are COCO results JSON, untouched by scoring, and score the same again
    results = evaluator.results("segm")
    assert set(results[0]) == {"image_id", "category_id", "segmentation", "score"}
    assert results[0]["segmentation"]["size"] == [SIZE, SIZE]
    assert evaluator.results("bbox")[0]["bbox"] == [10.0, 10.0, 20.0, 20.0]
    json.dumps(evaluator.results("bbox") + results)
    assert evaluator.summarize() == metrics
    # masks at the input size (half, flipped) go back to the original size first
    evaluator.reset()
    for i in (1, 2, 3):
        out = detections(i, masks=True)
        out["boxes"] = out["boxes"] * 0.5
        out["boxes"] = torch.stack(
            [
                100 - out["boxes"][:, 2],
                out["boxes"][:, 1],
                100 - out["boxes"][:, 0],
                out["boxes"][:, 3],
            ],
            dim=1,
        )
        out["masks"] = out["masks"][:, None, ::2, ::2].flip(-1)  # [K, 1, H, W]
        evaluator.process([out], [{**target(i), "size": (100, 100), "flipped": True}])
    metrics = evaluator.summarize()
    assert metrics["AP"] == 1.0 and metrics["segm_AP"] == 1.0
    evaluator.reset()  # (a repeated image would be skipped unchecked)
    with pytest.raises(ValueError, match="has no masks"):
        evaluator.process([detections(1)], [target(1)])


@pytest.mark.skipif(
    not (COCO128 / "annotations" / "instances_train2017.json").is_file(),
    reason=f"coco128 not found at {COCO128}",
)
def test_coco128_pipeline_identity_and_perturbed():
    from torchdcn.data.coco import coco128
    from torchdcn.data.transforms import detection_transforms

    ds = coco128(COCO128.parent, transforms=detection_transforms(True, 300, 500))
    samples = []
    for i in range(len(ds)):  # the targets through resize and flip, on blank images
        t = ds.target(i)
        _, t = ds.transforms(torch.zeros(3, *t["orig_size"], dtype=torch.uint8), t, ds.generator(i))
        samples.append(t)
    assert sum(t["flipped"] for t in samples) > 30
    evaluator = CocoEvaluator.from_dataset(ds)
    gen = torch.Generator().manual_seed(0)
    results = []
    for noise in (0.0, 0.15):
        evaluator.reset()
        for t in samples:
            boxes = t["boxes"]
            wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
            boxes = boxes + noise * wh * torch.randn(boxes.shape, generator=gen)
            out = {
                "boxes": boxes,
                "labels": t["labels"],
                "scores": torch.rand(len(boxes), generator=gen),
            }
            evaluator.process([out], [t])
        results.append(evaluator.summarize())
    exact, noisy = results
    assert exact == pytest.approx(dict.fromkeys(metric_names(), 1.0))
    assert noisy["AP"] < 0.6 and noisy["AP50"] < 1.0 and noisy["mAP@0.7"] < noisy["mAP@0.5"]
    assert noisy["mAP@0.5"] == pytest.approx(noisy["AP50"])
    assert noisy["AP75"] < noisy["AP50"]


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from test_coco_eval import detections, target
    from torchdcn.engine import init_distributed
    from torchdcn.engine import distributed
    from torchdcn.engine.coco_eval import CocoEvaluator

    info = init_distributed()
    evaluator = CocoEvaluator(sys.argv[2])
    empty = {k: v[:0] for k, v in detections(2).items()}
    # rank 0 sees images 1 and 3, rank 1 sees image 2 (no detections), image 4 and image 1 again
    # (with wrong boxes, which must be dropped: an image counts once, from the first rank)
    share = [(1, detections(1)), (3, detections(3))] if info.rank == 0 else [
        (2, empty), (4, detections(4)), (1, detections(1, shift=0.5))]
    for image_id, out in share:
        evaluator.process([out], [target(image_id)])
    metrics = evaluator.summarize()
    torch.save({"metrics": metrics, "world": info.world_size}, f"{sys.argv[3]}.{info.rank}")
    distributed.cleanup()
    """
)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_gather(gt_file, tmp_path):
    script = tmp_path / "ddp_coco.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(script), str(Path(__file__).parent), str(gt_file), str(tmp_path / "out.pt")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    want = _recall_ap([2 / 3, 1 / 2])  # image 2's objects missed; rank 0's image 1 counts
    for rank in (0, 1):
        got = torch.load(tmp_path / f"out.pt.{rank}", weights_only=True)
        assert got["world"] == 2
        assert got["metrics"]["AP"] == pytest.approx(want)
        assert got["metrics"]["mAP@0.5"] == pytest.approx(want)


def test_through_evaluate_with_a_coco_dataset(gt_file):
    """The whole path: CocoDetection (resized), DataLoader + list_collate, ``evaluate``; a model
    that returns each image's ground truth in input pixels scores 1.0, one that finds nothing 0."""
    from PIL import Image

    from torchdcn.data import CocoDetection, list_collate
    from torchdcn.data.transforms import Compose, Resize, ToTensor
    from torchdcn.engine import evaluate

    for i in (1, 2, 3, 4):
        Image.fromarray(np.full((SIZE, SIZE, 3), 40 * i, dtype=np.uint8)).save(
            gt_file.parent / f"{i}.jpg"
        )
    ds = CocoDetection(gt_file, gt_file.parent, transforms=Compose([ToTensor(), Resize(120, 1000)]))
    answers = [ds[i][1] for i in range(len(ds))]

    class Oracle(torch.nn.Module):
        def __init__(self, find: bool) -> None:
            super().__init__()
            self.find, self.seen = find, 0

        def forward(self, images):
            outs = []
            for image in images:
                t = answers[self.seen]
                self.seen += 1
                assert image.shape[-2:] == t["size"] == (120, 120)
                keep = len(t["boxes"]) if self.find else 0
                outs.append(
                    {
                        "boxes": t["boxes"][:keep],
                        "labels": t["labels"][:keep],
                        "scores": torch.ones(keep),
                    }
                )
            return outs

    for find, want in ((True, 1.0), (False, 0.0)):
        metrics = evaluate(
            Oracle(find), ds, CocoEvaluator.from_dataset(ds), batch_size=3, collate_fn=list_collate
        )
        assert metrics["AP"] == want and metrics["mAP@0.7"] == want


def test_area_ranges_redraw_the_size_buckets(gt_file):
    # areas 400, 2500, 14400, 400 (images 1-2, found) and 1600 (image 3, missed)
    runs = {}
    for ranges in (None, (500, 2000)):
        ev = CocoEvaluator(gt_file, area_ranges=ranges)
        empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                 "scores": torch.zeros(0)}  # fmt: skip
        ev.process([detections(1), detections(2), empty], [target(i) for i in (1, 2, 3)])
        runs[ranges] = ev.summarize()
    # COCO's buckets: 1600 and 2500 are both medium, so half of the medium objects are found
    assert runs[None]["APs"] == pytest.approx(1.0)
    assert 0.0 < runs[None]["APm"] < 1.0
    # (500, 2000): the missed 1600 is the only medium object; 2500 and 14400 are large
    assert runs[(500, 2000)]["APs"] == pytest.approx(1.0)
    assert runs[(500, 2000)]["APm"] == pytest.approx(0.0)
    assert runs[(500, 2000)]["APl"] == pytest.approx(1.0)
    assert runs[(500, 2000)]["AP"] == pytest.approx(runs[None]["AP"])


@pytest.mark.parametrize("bad", [(2000, 500), (0, 10), (1, 2, 3), "ab", (True, 5)])
def test_area_ranges_refused(gt_file, bad):
    with pytest.raises(ValueError, match="area_ranges"):
        CocoEvaluator(gt_file, area_ranges=bad)
