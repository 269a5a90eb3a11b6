"""Semantic segmentation data: label maps rendered from COCO instances (overlaps and crowds), the
VOC folder layout, and the seeded transforms on image and labels together."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from torchdcn.data.mnist import DataFormatError, DataNotFoundError
from torchdcn.data.segmentation import (
    IGNORE_INDEX,
    VOC_CLASSES,
    CocoSegmentation,
    FolderSegmentation,
    render_semantic_map,
    segmentation_transforms,
)

PIL = pytest.importorskip("PIL")
pytest.importorskip("pycocotools")

X = IGNORE_INDEX


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def test_render_semantic_map_by_hand():
    h, w = 6, 8
    masks = torch.from_numpy(
        np.stack(
            [
                _box(h, w, 0, 4, 0, 4),  # class 1
                _box(h, w, 2, 5, 2, 6),  # class 2: clashes with the first on rows 2-3, cols 2-3
                # class 1 again: overlaps the first (same class) at rows 0-1, col 3
                _box(h, w, 0, 2, 3, 8),
            ]
        )
    )
    crowd = torch.from_numpy(_box(h, w, 4, 6, 0, 2)[None])
    got = render_semantic_map(masks, torch.tensor([1, 2, 1]), crowd)
    want = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, X, X, 2, 2, 0, 0],
            [1, 1, X, X, 2, 2, 0, 0],
            [X, X, 2, 2, 2, 2, 0, 0],
            [X, X, 0, 0, 0, 0, 0, 0],
        ]
    )
    assert torch.equal(got, want)
    empty = render_semantic_map(torch.zeros(0, h, w, dtype=torch.uint8), torch.zeros(0))
    assert torch.equal(empty, torch.zeros(h, w, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels must lie"):
        render_semantic_map(masks, torch.tensor([1, 2, 255]))


def rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE of a 0/1 mask (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def write_coco(root: Path) -> tuple[Path, Path]:
    """Two 6x8 images; categories 9 ("dog") and 5 ("cat"): labels 1 = cat (id 5), 2 = dog (id 9).
    Image 1: a cat, a dog overlapping it, a second cat overlapping the first, a crowd of dogs.
    Image 2: no annotations."""
    from PIL import Image

    h, w = 6, 8
    (root / "images").mkdir(parents=True)
    pixels = np.full((h, w, 3), 100, np.uint8)
    pixels[:, :, 0] = 20 * np.arange(w)  # red encodes the column
    for name in ("one.png", "two.png"):
        Image.fromarray(pixels).save(root / "images" / name)
    anns = [
        (5, _box(h, w, 0, 4, 0, 4), 0),
        (9, _box(h, w, 2, 5, 2, 6), 0),
        (5, _box(h, w, 0, 2, 3, 8), 0),
        (9, _box(h, w, 4, 6, 0, 2), 1),
        (77, _box(h, w, 5, 6, 6, 8), 0),  # unknown category: skipped
    ]
    annotations = []
    for i, (cat, mask, crowd) in enumerate(anns, start=1):
        ys, xs = np.nonzero(mask)
        bbox = [
            int(xs.min()),
            int(ys.min()),
            int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1),
        ]
        annotations.append(
            {"id": i, "image_id": 1, "category_id": cat, "bbox": bbox, "area": int(mask.sum()),
             "iscrowd": crowd, "segmentation": rle(mask)}
        )  # fmt: skip
    coco = {
        "images": [
            {"id": 1, "file_name": "one.png", "height": h, "width": w},
            {"id": 2, "file_name": "two.png", "height": h, "width": w},
        ],
        "annotations": annotations,
        "categories": [{"id": 9, "name": "dog"}, {"id": 5, "name": "cat"}],
    }
    ann_file = root / "instances_train.json"
    ann_file.write_text(json.dumps(coco))
    return ann_file, root / "images"


def test_coco_semantic_maps_with_overlaps_and_crowds(tmp_path):
    data = CocoSegmentation(*write_coco(tmp_path))
    assert data.num_classes == 2 and data.class_names == ["cat", "dog"]
    assert len(data) == 2 and data.image_ids == [1, 2]
    image, target = data[0]
    assert image.shape == (3, 6, 8) and image.dtype == torch.float32
    assert torch.allclose(image[1:], torch.full_like(image[1:], 100 / 255))
    assert torch.allclose(image[0], (torch.arange(8.0) * 20 / 255).expand(6, 8))
    want = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, X, X, 2, 2, 0, 0],
            [1, 1, X, X, 2, 2, 0, 0],
            [X, X, 2, 2, 2, 2, 0, 0],
            [X, X, 0, 0, 0, 0, 0, 0],
        ]
    )
    assert target["semantic"].dtype == torch.int64
    assert torch.equal(target["semantic"], want)
    assert target["image_id"] == 1 and target["size"] == (6, 8) and target["orig_size"] == (6, 8)
    _, empty = data[1]
    assert torch.equal(empty["semantic"], torch.zeros(6, 8, dtype=torch.int64))


def test_transforms_resize_labels_nearest_and_flip_with_the_image(tmp_path):
    ann, images = write_coco(tmp_path)
    plain = CocoSegmentation(ann, images)[0][1]["semantic"]
    resized = CocoSegmentation(ann, images, transforms=segmentation_transforms(False, 12, 100))
    _, target = resized[0]
    # twice the size: every label pixel becomes a 2x2 block, no value in between
    assert torch.equal(target["semantic"], plain.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert target["size"] == (12, 16)
    flips = CocoSegmentation(ann, images, transforms=segmentation_transforms(True, 6, 100), seed=3)
    seen = set()
    for epoch in range(8):
        flips.set_epoch(epoch)
        image, target = flips[0]
        again = flips[0][1]["semantic"]
        assert torch.equal(target["semantic"], again)  # seeded from (seed, epoch, index)
        want = plain.flip(-1) if target["flipped"] else plain
        assert torch.equal(target["semantic"], want)
        # the image moved with its labels: red encodes the column of the file (20 * x)
        columns = torch.arange(8.0) * 20 / 255
        want_red = columns.flip(0) if target["flipped"] else columns
        assert torch.allclose(image[0, 0], want_red)
        seen.add(target["flipped"])
    assert seen == {True, False}


def write_voc(root: Path, class_names: list[str] | None = None) -> Path:
    """A VOC-layout folder: three 5x7 images, labels as palette PNGs (with 255 borders)."""
    from PIL import Image

    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(("a", "b", "c")):
        Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{name}.jpg"
        )
        labels = np.zeros((5, 7), np.uint8)
        labels[1:4, 1 + i : 4 + i] = i + 1
        labels[0, :] = 255
        label_image = Image.fromarray(labels, mode="P")
        label_image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (252 * 3))
        label_image.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("a\nb\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("c\n")
    if class_names is not None:
        (root / "class_names.txt").write_text("\n".join(class_names) + "\n")
    return root


def test_voc_folder(tmp_path):
    root = write_voc(tmp_path / "voc")
    train = FolderSegmentation(root, "train")
    assert len(train) == 2 and train.names == ["a", "b"]
    assert train.num_classes == 20 and tuple(train.class_names) == VOC_CLASSES
    image, target = train[1]
    assert image.shape == (3, 5, 7)
    want = torch.zeros(5, 7, dtype=torch.int64)
    want[1:4, 2:5] = 2
    want[0, :] = 255
    assert torch.equal(target["semantic"], want)
    assert target["image_id"] == "b"
    val = FolderSegmentation(root, "val")
    assert val.names == ["c"] and int(val[0][1]["semantic"].max()) == 255


def test_voc_folder_class_names_and_bad_files(tmp_path):
    from PIL import Image

    root = write_voc(tmp_path / "voc", ["thing", "stuff"])
    data = FolderSegmentation(root, "train")
    assert data.class_names == ["thing", "stuff"]
    with pytest.raises(DataFormatError, match=r"values \[3\] outside 0\.\.2"):
        FolderSegmentation(root, "val")[0]  # image c holds label 3 > C = 2
    with pytest.raises(DataNotFoundError, match=r"test\.txt"):
        FolderSegmentation(root, "test")
    Image.new("RGB", (7, 5)).save(root / "SegmentationClass" / "a.png")
    with pytest.raises(DataFormatError, match="palette"):
        data[0]
