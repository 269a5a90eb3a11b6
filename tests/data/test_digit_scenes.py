"""Digit scenes: byte-identical output per seed, boxes tight around the masks, masks and semantic
maps that agree with the pixels, held-out geometry outside the training range, digit pools that
never cross splits, and files that CocoDetection reads as ordinary COCO data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
from PIL import Image
from pycocotools import mask as mask_utils

from torchdcn.data import CocoDetection, DataNotFoundError, find_mnist5k, split_indices
from torchdcn.data.digit_scenes import (
    HELDOUT_GEOMETRY,
    IGNORE_LABEL,
    SPLITS,
    DigitPool,
    Geometry,
    SceneConfig,
    digit_pools,
    draw_digit,
    generate_digit_scenes,
    heights_overlap,
    make_scene,
    split_paths,
)


def _has_data() -> bool:
    try:
        find_mnist5k()
    except DataNotFoundError:
        return False
    return True


# pycocotools' decoder trips a NumPy 2 DeprecationWarning on every mask; the masks are right
pytestmark = pytest.mark.filterwarnings("ignore:__array__:DeprecationWarning")
needs_data = pytest.mark.skipif(
    not _has_data(), reason="needs ../shared/data/mnist5k (or $TORCHDCN_DATA); see data docs"
)
COUNTS = {"train": 10, "val": 3, "val_heldout": 3, "test": 4, "test_heldout": 10}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    infos = generate_digit_scenes(out, COUNTS, seed=3)
    return out, infos


def _load(out, split):
    return json.loads(split_paths(out, split)[0].read_text())


def _files(out):
    return sorted(p for p in out.rglob("*") if p.is_file())


@needs_data
def test_same_seed_same_bytes_other_seed_other_images(scenes, tmp_path):
    out, _ = scenes
    again = tmp_path / "again"
    generate_digit_scenes(again, COUNTS, seed=3)
    first, second = _files(out), _files(again)
    assert [p.relative_to(out) for p in first] == [p.relative_to(again) for p in second]
    assert len(first) == 5 + 2 * sum(COUNTS.values())
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a
    # image i does not depend on how many are drawn; another seed draws other scenes
    fewer = tmp_path / "fewer"
    generate_digit_scenes(fewer, {"train": 4}, seed=3)
    for i in range(1, 5):
        name = f"train/{i:06d}.png"
        assert (fewer / name).read_bytes() == (out / name).read_bytes()
    other = tmp_path / "other"
    generate_digit_scenes(other, {"train": 4}, seed=4)
    assert all(
        (other / f"train/{i:06d}.png").read_bytes() != (out / f"train/{i:06d}.png").read_bytes()
        for i in range(1, 5)
    )
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_digit_scenes(other, {"train": 4}, seed=4)
    generate_digit_scenes(other, {"train": 2}, seed=3, overwrite=True)
    assert sorted(p.name for p in (other / "train").iterdir()) == ["000001.png", "000002.png"]


@needs_data
@pytest.mark.parametrize("split", SPLITS)
def test_boxes_masks_and_semantic_maps_agree_with_the_pixels(scenes, split):
    out, _ = scenes
    data = _load(out, split)
    _, image_dir, semantic_dir = split_paths(out, split)
    by_image = {im["id"]: [] for im in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    config = SceneConfig()
    for im in data["images"]:
        image = np.asarray(Image.open(image_dir / im["file_name"]))
        semantic = np.asarray(Image.open(semantic_dir / im["file_name"]))
        assert image.shape == semantic.shape == (128, 128) and image.dtype == np.uint8
        covered = np.zeros(image.shape, np.int64)
        anns = by_image[im["id"]]
        assert 1 <= len(anns) <= 6
        boxes = []
        for ann in anns:
            mask = mask_utils.decode(ann["segmentation"]).astype(bool)
            ys, xs = np.nonzero(mask)
            tight = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["bbox"] == [int(v) for v in tight]
            assert ann["area"] == int(mask.sum()) and ann["iscrowd"] == 0
            # the mask is the bright part of the digit's own ink: at least half of its peak
            assert int(image[mask].min()) * 2 >= int(image[mask].max())
            assert (semantic[mask] == ann["category_id"]).all()
            covered += mask
            x, y, w, h = ann["bbox"]
            boxes.append([x, y, x + w, y + h])
        assert covered.max() <= 1  # instances never share a pixel
        # 255 only on ink that is no mask; no class where there is no mask
        ignore = semantic == IGNORE_LABEL
        assert (image[ignore] > 0).all() and not (ignore & (covered > 0)).any()
        assert ((semantic > 0) & (semantic <= 10) == (covered > 0)).all()
        boxes = torch.tensor(boxes, dtype=torch.float64)
        iou = _pairwise_iou(boxes)
        assert iou.max() <= config.max_iou + 1e-9


def _pairwise_iou(boxes):
    from torchdcn.ops import box_iou

    iou = box_iou(boxes, boxes)
    return iou - torch.eye(len(boxes), dtype=iou.dtype) * iou.diagonal()


@needs_data
def test_heldout_geometry_lies_outside_the_training_range(scenes):
    out, _ = scenes
    params = {s: [a["attributes"] for a in _load(out, s)["annotations"]] for s in SPLITS}
    (lo, hi), (_, rhi) = SceneConfig().geometry.heights[0], SceneConfig().geometry.rotation[0]
    for split in ("train", "val", "test"):
        assert all(lo <= p["height"] <= hi and abs(p["rotation"]) <= rhi for p in params[split])
    for split in ("val_heldout", "test_heldout"):
        heights = [p["height"] for p in params[split]]
        assert all(h < lo or h > hi for h in heights)
        assert min(heights) < lo and max(heights) > hi  # both sides occur
        assert all(30 <= abs(p["rotation"]) <= 45 for p in params[split])
    assert not heights_overlap(SceneConfig().geometry.heights, HELDOUT_GEOMETRY.heights)
    assert heights_overlap(((16, 44),), ((40, 50),))


@needs_data
def test_info_records_the_generator_parameters(scenes):
    out, infos = scenes
    data = _load(out, "test_heldout")
    info = data["info"]
    assert info == infos["test_heldout"]
    assert info["seed"] == 3 and info["split"] == "test_heldout" and info["geometry"] == "heldout"
    config = info["config"]
    assert config["max_iou"] == 0.15 and config["canvas"] == 128 and config["digits"] == [2, 6]
    assert config["heldout_geometry"]["heights"] == [[9.0, 13.0], [52.0, 64.0]]
    assert info["images"] == 10 and info["annotations"] == len(data["annotations"])
    assert [c["name"] for c in data["categories"]] == [str(d) for d in range(10)]
    assert SceneConfig.from_dict(config) == SceneConfig()


@needs_data
def test_coco_detection_reads_every_split(scenes):
    out, _ = scenes
    for split in SPLITS:
        ann_file, image_dir, _ = split_paths(out, split)
        ds = CocoDetection(ann_file, image_dir, masks=True, on_bad="error")
        data = _load(out, split)
        assert len(ds) == COUNTS[split] and ds.num_classes == 10
        assert ds.class_names == [str(d) for d in range(10)]
        assert ds.stats["clipped_boxes"] == 0 and ds.stats["annotations"] == len(
            data["annotations"]
        )
        image, target = ds[0]
        anns = [a for a in data["annotations"] if a["image_id"] == ds.image_ids[0]]
        assert image.shape == (3, 128, 128) and image.dtype == torch.float32
        raw = np.array(Image.open(image_dir / data["images"][0]["file_name"]))
        torch.testing.assert_close(image[1], torch.from_numpy(raw).float() / 255)
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        torch.testing.assert_close(target["boxes"], expected.float())
        # category ids 1..10 become labels 1..10: the digit plus one
        assert target["labels"].tolist() == [a["category_id"] for a in anns]
        assert target["masks"].shape == (len(anns), 128, 128)
        assert target["masks"].sum().item() == sum(a["area"] for a in anns)


@needs_data
def test_digit_pools_never_cross_splits():
    pools = digit_pools()
    labels = torch.from_numpy(np.concatenate([p.labels for p in pools.values()]))
    assert len(labels) == 5000
    train_idx, test_idx = split_indices(_all_labels())
    train, val, test = (set(pools[k].indices.tolist()) for k in ("train", "val", "test"))
    assert len(val) == 500 and len(train) == 3500 and len(test) == 1000
    assert not train & val and not (train | val) & test
    assert train | val == set(train_idx.tolist()) and test == set(test_idx.tolist())
    assert np.bincount(pools["val"].labels, minlength=10).tolist() == [50] * 10


def _all_labels():
    from torchdcn.data import load_mnist5k

    return load_mnist5k()[1]


def _synthetic_pool(n=20):
    rng = np.random.default_rng(0)
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):  # a bar or a ring: enough ink to draw
        if i % 2:
            images[i, 4:24, 12:16] = 255
        else:
            yy, xx = np.mgrid[:28, :28]
            r = np.hypot(yy - 14, xx - 14)
            images[i][(r > 6) & (r < 10)] = rng.integers(150, 256)
    return DigitPool(images, np.arange(n) % 10, np.arange(n))


def test_drawn_height_is_the_ink_height():
    bar = np.full((20, 4), 255, np.uint8)
    for height in (9.0, 16.0, 30.0, 60.0):
        patch = draw_digit(bar, height, 1.0, 0.0)
        rows = np.nonzero((patch >= 128).any(axis=1))[0]
        assert abs((rows.max() - rows.min() + 1) - height) <= 1.5, height
    # a quarter turn swaps height and width
    turned = draw_digit(bar, 30.0, 1.0, 90.0)
    assert turned.shape[1] > turned.shape[0] * 3


def test_scenes_without_the_data_file_are_consistent():
    pool = _synthetic_pool()
    config = SceneConfig(clutter=(2, 2), max_iou=0.0)
    for i in range(5):
        scene = make_scene(pool, Geometry(), config, np.random.default_rng(i))
        k = len(scene.labels)
        assert k + scene.dropped in range(2, 7) and scene.masks.shape == (k, 128, 128)
        for mask, box in zip(scene.masks, scene.boxes):
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        iou = _pairwise_iou(torch.from_numpy(scene.boxes))
        assert iou.max().item() == 0.0 if k > 1 else True  # max_iou 0: no box overlaps


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="heights"):
        Geometry(heights=((20.0, 10.0),))
    with pytest.raises(ValueError, match="aspect"):
        Geometry(aspect=(0.0, 1.0))
    # a magnitude above 180 degrees is another name for a smaller angle
    with pytest.raises(ValueError, match=r"rotation must be .* 0 <= lo <= hi <= 180, got"):
        Geometry(rotation=((0.0, 400.0),))
    assert Geometry(rotation=((170.0, 180.0),)).rotation == ((170.0, 180.0),)
    with pytest.raises(ValueError, match="max_iou"):
        SceneConfig(max_iou=1.0)
    with pytest.raises(ValueError, match="digits"):
        SceneConfig(digits=(0, 3))
    with pytest.raises(ValueError, match="fit"):
        SceneConfig(canvas=48)
    with pytest.raises(ValueError, match="split"):
        split_paths("x", "training")
    with pytest.raises(ValueError, match="unknown splits"):
        generate_digit_scenes("unused", {"training": 3})
    with pytest.raises(ValueError, match="seed"):
        generate_digit_scenes("unused", {"train": 3}, seed=-1)
    assert math.isclose(Geometry().sample(np.random.default_rng(0))[0], 16.0, rel_tol=2)
