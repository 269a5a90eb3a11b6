"""COCO-format data set: coco128 counts, label mapping, masks, and bad files from a small JSON."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
from PIL import Image

from torchdcn.data import list_collate
from torchdcn.data.coco import CocoDetection, coco128
from torchdcn.data.mnist import DataFormatError, DataNotFoundError
from torchdcn.data.transforms import detection_transforms

COCO128 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "coco128"
needs_coco128 = pytest.mark.skipif(
    not (COCO128 / "annotations" / "instances_train2017.json").is_file(),
    reason=f"coco128 not found at {COCO128} (see ../shared/data/README.md)",
)


@pytest.fixture(scope="module")
def c128():
    return coco128(COCO128.parent)


@pytest.fixture(scope="module")
def raw128():
    return json.loads((COCO128 / "annotations" / "instances_train2017.json").read_text())


@needs_coco128
def test_coco128_counts(c128, raw128):
    # the README's numbers: 128 images, 939 annotations of which 10 crowd, 71 of 80 categories,
    # 2 images without annotations
    assert len(c128) == 128 and c128.num_classes == 80
    assert c128.stats["annotations"] == 929 and c128.stats["crowd"] == 10
    assert c128.stats["empty_images"] == 2
    problems = ("missing_images", "degenerate_boxes", "unknown_category", "clipped_boxes")
    assert all(c128.stats[k] == 0 for k in problems)
    targets = [c128.target(i) for i in range(len(c128))]
    assert sum(len(t["boxes"]) for t in targets) == 929
    assert sum(len(t["crowd_boxes"]) for t in targets) == 10
    used = {c128.label_to_category_id[int(l)] for t in targets for l in t["labels"]}
    crowd_cats = {a["category_id"] for a in raw128["annotations"] if a["iscrowd"]}
    assert len(used | crowd_cats) == 71
    empty = [t["image_id"] for t in targets if len(t["boxes"]) == 0]
    annotated = {a["image_id"] for a in raw128["annotations"]}
    assert sorted(empty) == sorted(i["id"] for i in raw128["images"] if i["id"] not in annotated)
    for t in targets:
        assert t["boxes"].shape == (len(t["labels"]), 4) and t["boxes"].dtype == torch.float32
        assert t["labels"].dtype == torch.int64


@needs_coco128
def test_coco128_labels_map_to_category_ids_and_back(c128, raw128):
    ids = sorted(c["id"] for c in raw128["categories"])
    assert c128.label_to_category_id[1] == ids[0] == 1
    assert c128.label_to_category_id[80] == ids[-1] == 90  # COCO's ids have gaps
    assert c128.class_names[0] == "person" and c128.class_names[79] == "toothbrush"
    for label, cat in c128.label_to_category_id.items():
        assert c128.category_id_to_label[cat] == label
    # every box and label of every image against the JSON, read independently
    by_image: dict[int, list] = {}
    for a in raw128["annotations"]:
        if not a["iscrowd"]:
            by_image.setdefault(a["image_id"], []).append(a)
    for i in range(0, 128, 9):
        t = c128.target(i)
        anns = by_image.get(t["image_id"], [])
        want = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        torch.testing.assert_close(t["boxes"], want.reshape(-1, 4).float())
        cats = [c128.label_to_category_id[int(l)] for l in t["labels"]]
        assert cats == [a["category_id"] for a in anns]


@needs_coco128
def test_coco128_sample_images_masks_and_transforms(raw128):
    ds = coco128(COCO128.parent, masks=True, transforms=detection_transforms(True, 300, 500))
    image, target = ds[0]
    info = next(i for i in raw128["images"] if i["id"] == target["image_id"])
    assert target["orig_size"] == (info["height"], info["width"]) == (480, 640)
    assert image.shape == (3, 300, 400) and target["size"] == (300, 400)
    assert 0.0 <= image.min() and image.max() <= 1.0
    masks = target["masks"]
    assert masks.shape == (len(target["boxes"]), 300, 400) and set(masks.unique().tolist()) <= {
        0,
        1,
    }
    # each mask lies inside its box (give a pixel for the rounding of the resize)
    for box, mask in zip(target["boxes"], masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert xs.min() >= box[0] - 1.5 and xs.max() + 1 <= box[2] + 1.5
        assert ys.min() >= box[1] - 1.5 and ys.max() + 1 <= box[3] + 1.5


# -- a small synthetic COCO file with every kind of problem ------------------------------------


def _write_images(folder: Path, sizes: dict[str, tuple[int, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (h, w) in sizes.items():
        rng = np.random.default_rng(len(name))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)


def _ann(i, image_id, category_id, bbox, **kw):
    return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0,
            "area": 1.0, **kw}  # fmt: skip


def _rle_rect(h, w, rows, cols):
    """Uncompressed COCO RLE (column-major run lengths, starting with zeros) of a rectangle."""
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = 1
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": [h, w], "counts": counts}, mask


def _synthetic(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    images = tmp_path / "images"
    _write_images(images, {"a.png": (20, 30), "c.png": (16, 16), "d.png": (10, 12)})
    rle, rle_mask = _rle_rect(20, 30, (2, 7), (3, 11))
    polygon = [[10.0, 10.0, 20.0, 10.0, 20.0, 18.0, 10.0, 18.0]]
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 20, "width": 30},
            {"id": 2, "file_name": "missing.png", "height": 20, "width": 30},
            {"id": 3, "file_name": "c.png", "height": 16, "width": 16},
            {"id": 4, "file_name": "d.png", "height": 10, "width": 12},
        ],
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            _ann(1, 1, 9, [3.0, 2.0, 8.0, 5.0], segmentation=rle),  # RLE mask, not crowd
            _ann(2, 1, 5, [10.0, 10.0, 10.0, 8.0], segmentation=polygon),
            _ann(3, 1, 5, [25.0, -4.0, 10.0, 10.0], segmentation=polygon),  # clipped
            _ann(4, 1, 5, [5.0, 5.0, 0.0, 4.0], segmentation=polygon),  # zero width
            _ann(5, 1, 77, [1.0, 1.0, 4.0, 4.0], segmentation=polygon),  # unknown category
            _ann(6, 1, 5, [1.0, 2.0, 3.0], segmentation=polygon),  # malformed
            _ann(7, 42, 5, [1.0, 1.0, 4.0, 4.0], segmentation=polygon),  # unknown image
            _ann(8, 1, 9, [0.0, 0.0, 6.0, 6.0], segmentation=rle, iscrowd=1),  # crowd
            _ann(9, 2, 5, [1.0, 1.0, 4.0, 4.0], segmentation=polygon),  # on the missing image
            _ann(10, 4, 5, [40.0, 40.0, 5.0, 5.0], segmentation=polygon),  # entirely outside
        ],
    }
    ann_file = tmp_path / "instances_toy.json"
    ann_file.write_text(json.dumps(data))
    return ann_file, images, rle_mask


def test_synthetic_bad_file_is_skipped_with_counts(tmp_path, caplog):
    ann_file, images, rle_mask = _synthetic(tmp_path)
    with caplog.at_level(logging.WARNING, logger="torchdcn.data.coco"):
        ds = CocoDetection(ann_file, images, masks=True)
    want = {"missing_images": 1, "clipped_boxes": 1, "degenerate_boxes": 2, "malformed_boxes": 1,
            "unknown_category": 1, "unknown_image": 1, "images": 3, "annotations": 3, "crowd": 1,
            "empty_images": 2}  # fmt: skip
    assert dict(ds.stats) == want
    assert "1 missing images" in caplog.text and "2 degenerate boxes" in caplog.text
    assert ds.image_ids == [1, 3, 4]
    assert ds.label_to_category_id == {1: 5, 2: 9} and ds.category_id_to_label == {5: 1, 9: 2}
    image, t = ds[0]
    assert image.shape == (3, 20, 30) and t["image_id"] == 1 and t["orig_size"] == (20, 30)
    torch.testing.assert_close(
        t["boxes"], torch.tensor([[3.0, 2.0, 11.0, 7.0], [10, 10, 20, 18], [25, 0, 30, 6]])
    )
    assert t["labels"].tolist() == [2, 1, 1]
    torch.testing.assert_close(t["crowd_boxes"], torch.tensor([[0.0, 0.0, 6.0, 6.0]]))
    assert t["masks"].shape == (3, 20, 30)
    assert torch.equal(t["masks"][0], torch.from_numpy(rle_mask))  # from RLE
    poly = torch.zeros(20, 30, dtype=torch.uint8)
    poly[10:18, 10:20] = 1
    assert torch.equal(t["masks"][1], poly)  # from a polygon on pixel edges: exactly its pixels
    for index in (1, 2):  # no annotations / only an unusable one
        _, empty = ds[index]
        assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
        assert empty["masks"].shape == (0, *empty["orig_size"])
    images_batch, targets = list_collate([ds[0], ds[1]])
    assert len(images_batch) == 2 and targets[1]["image_id"] == 3


def test_synthetic_bad_file_errors_when_asked(tmp_path):
    ann_file, images, _ = _synthetic(tmp_path)
    with pytest.raises(DataFormatError, match="unknown image 42"):
        CocoDetection(ann_file, images, on_bad="error")
    data = json.loads(ann_file.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 42]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match="zero area"):
        CocoDetection(ann_file, images, on_bad="error")
    data["annotations"] = [a for a in data["annotations"] if a["id"] not in (4, 10)]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match="unknown category_id 77"):
        CocoDetection(ann_file, images, on_bad="error")
    data["annotations"] = [a for a in data["annotations"] if a["id"] not in (5, 6)]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=r"missing\.png"):
        CocoDetection(ann_file, images, on_bad="error")


def test_drop_empty_and_size_mismatch(tmp_path):
    ann_file, images, _ = _synthetic(tmp_path)
    assert CocoDetection(ann_file, images, drop_empty=True).image_ids == [1]
    Image.fromarray(np.zeros((5, 5, 3), dtype=np.uint8)).save(images / "c.png")
    ds = CocoDetection(ann_file, images)
    with pytest.raises(DataFormatError, match=r"c.png is 5x5 .* says 16x16"):
        ds[1]
    with pytest.raises(IndexError):
        ds[3]


def test_bad_arguments_and_missing_paths(tmp_path):
    ann_file, images, _ = _synthetic(tmp_path)
    with pytest.raises(ValueError, match="on_bad"):
        CocoDetection(ann_file, images, on_bad="ignore")
    # a bad seed failed only when the first sample was read
    with pytest.raises(TypeError, match=r"seed must be an int >= 0, got 'a' \(str\)"):
        CocoDetection(ann_file, images, seed="a")
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        CocoDetection(ann_file, images, seed=-1)
    with pytest.raises(TypeError, match="masks must be True or False, got 'no'"):
        CocoDetection(ann_file, images, masks="no")
    with pytest.raises(DataNotFoundError, match="image folder"):
        CocoDetection(ann_file, tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match="annotation file"):
        CocoDetection(tmp_path / "none.json", images)
    (tmp_path / "bad.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(DataFormatError, match="images"):
        CocoDetection(tmp_path / "bad.json", images)
    with pytest.raises(DataNotFoundError, match="coco128 not found"):
        coco128(tmp_path)


def test_random_flips_depend_only_on_seed_epoch_and_index(tmp_path):
    ann_file, images, _ = _synthetic(tmp_path)
    ds = CocoDetection(ann_file, images, transforms=detection_transforms(True, 10, 100), seed=3)

    def flips(dataset, order):
        return {i: dataset[i][1]["flipped"] for i in order}

    pattern = [ds.generator(i).initial_seed() for i in range(3)]
    assert len(set(pattern)) == 3
    first = flips(ds, [0, 1, 2])
    assert flips(ds, [2, 0, 1]) == first  # read order does not matter
    other = CocoDetection(ann_file, images, transforms=detection_transforms(True, 10, 100), seed=3)
    assert flips(other, [0, 1, 2]) == first
    ds.set_epoch(1)
    assert [ds.generator(i).initial_seed() for i in range(3)] != pattern
    # over many epochs sample 0 flips about half the time, and the flip moved its boxes
    seen = Counter()
    for epoch in range(60):
        ds.set_epoch(epoch)
        _, t = ds[0]
        seen[t["flipped"]] += 1
        x1 = 3.0 * 10 / 20  # first box of image 1 resized to shorter side 10 (scale 0.5)
        assert t["boxes"][0, 0].item() == pytest.approx(15.0 - 5.5 if t["flipped"] else x1)
    assert 15 < seen[True] < 45
