"""``torchdcn train --task segmentation`` / ``eval`` / ``segment`` on tiny folders written here:
a COCO-style one (instance masks as RLE, categories 3 and 7) and a VOC-layout one (label PNGs).
One training step of a ResNet-18 DeepLab each; ``eval`` prints the per-class IoU table and mIoU;
``segment`` writes an overlay PNG and a label PNG per image and ``segments.json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from torchdcn import cli

PIL = pytest.importorskip("PIL")
pytest.importorskip("pycocotools")

CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "bar"}]
IMAGES = [
    ("a.png", [(3, 8, 8, 24, 24), (7, 40, 10, 10, 40)]),
    ("b.png", [(3, 30, 30, 28, 28)]),
    ("c.png", [(7, 4, 20, 12, 36)]),
]
COLORS = {3: (220, 40, 40), 7: (40, 40, 220)}


def _rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], edges])).tolist()
    return {"counts": counts, "size": list(mask.shape)}


def write_coco(root: Path) -> Path:
    from PIL import Image

    (root / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for image_id, (name, boxes) in enumerate(IMAGES, start=10):
        pixels = np.full((64, 64, 3), 128, np.uint8)
        for cat, x, y, w, h in boxes:
            pixels[y : y + h, x : x + w] = COLORS[cat]
            mask = np.zeros((64, 64), np.uint8)
            mask[y : y + h, x : x + w] = 1
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0, "segmentation": _rle(mask)}
            )  # fmt: skip
        Image.fromarray(pixels).save(root / "train" / name)
        images.append({"id": image_id, "file_name": name, "height": 64, "width": 64})
    coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    return root


def write_voc(root: Path) -> Path:
    from PIL import Image

    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for i, name in enumerate(("x", "y")):
        labels = np.zeros((48, 40), np.uint8)
        labels[8 + i * 8 : 30, 6:30] = i + 1
        labels[0] = 255
        pixels = np.stack([labels * 90, labels * 40, np.full_like(labels, 60)], -1).astype(np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(labels, mode="L").save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("x\ny\n")
    (root / "class_names.txt").write_text("cat\ndog\n")
    return root


def _train(root: Path, out: Path, *extra: str) -> int:
    argv = [
        "train", "--task", "segmentation", "--backbone", "resnet18", "--data-root", str(root),
        "--min-size", "64", "--max-size", "64", "--epochs", "1", "--batch-size", "2",
        "--limit-train", "2", "--warmup-steps", "0", "--no-progress", "--threads", "2",
        "--output-dir", str(out), *extra,
    ]  # fmt: skip
    return cli.main(argv)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(data folder, run folder)`` after one step on the COCO folder (deform v2)."""
    root = write_coco(tmp_path_factory.mktemp("coco") / "shapes")
    out = tmp_path_factory.mktemp("run")
    assert _train(root, out, "--deform", "v2", "--limit-test", "2") == cli.EXIT_OK
    return root, out


def test_train_writes_a_checkpoint_with_the_classes(trained, capsys):
    from torchdcn.engine import load_checkpoint

    _, out = trained
    summary = json.loads((out / "results.json").read_text())
    assert summary["steps"] == 1
    assert set(summary["losses"]) == {"loss_seg"}
    assert np.isfinite(summary["loss"])
    metrics = summary["metrics"]["val"]
    assert {"miou", "pixel_accuracy", "mean_accuracy"} <= set(metrics)
    assert 0.0 <= metrics["miou"] <= 1.0
    info = load_checkpoint(out / "last.pt")["run_info"]
    assert info["model"] == "deeplab"
    assert info["model_config"] == {
        "backbone": "resnet18",
        "deform": "v2",
        "output_stride": 16,
        "head": "deeplab",
        "frozen_bn": False,
        "freeze_at": 0,
        "num_classes": 2,
    }
    data = info["data"]
    assert data["format"] == "coco" and data["class_names"] == ["square", "bar"]
    assert data["category_ids"] == [3, 7] and (data["min_size"], data["max_size"]) == (64, 64)


def test_eval_prints_the_iou_table_and_matches_training(trained, tmp_path, capsys):
    _, out = trained
    capsys.readouterr()
    metrics_file = tmp_path / "m.json"
    argv = ["eval", "--checkpoint", str(out / "last.pt"), "--limit-test", "2", "--threads", "2"]
    assert cli.main([*argv, "--json", str(metrics_file)]) == cli.EXIT_OK
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].split() == ["class", "IoU", "%"]
    assert [ln.split()[0] for ln in lines[1:4]] == ["background", "square", "bar"]
    assert any(ln.startswith("miou") for ln in lines)
    got = json.loads(metrics_file.read_text())["metrics"]
    trained_metrics = json.loads((out / "results.json").read_text())["metrics"]["val"]
    assert got["miou"] == pytest.approx(trained_metrics["miou"])


def test_segment_writes_overlays_label_maps_and_json(trained, tmp_path):
    from PIL import Image

    root, out = trained
    dest = tmp_path / "seg"
    argv = ["segment", str(root / "train"), "--checkpoint", str(out / "last.pt")]
    assert cli.main([*argv, "--out", str(dest), "--threads", "2"]) == cli.EXIT_OK
    result = json.loads((dest / "segments.json").read_text())
    assert [c["name"] for c in result["classes"]] == ["background", "square", "bar"]
    assert result["classes"][1]["color"] == [128, 0, 0]
    assert [e["file_name"] for e in result["images"]] == ["a.png", "b.png", "c.png"]
    for entry in result["images"]:
        overlay = Image.open(dest / entry["png"])
        labels = Image.open(dest / entry["labels_png"])
        assert overlay.size == labels.size == (64, 64)
        assert overlay.mode == "RGB" and labels.mode == "P"
        counts = np.bincount(np.asarray(labels).reshape(-1), minlength=3)
        names = ["background", "square", "bar"]
        assert entry["pixels"] == {names[k]: int(n) for k, n in enumerate(counts) if n}
        # background pixels are the photograph's own
        photo = np.asarray(Image.open(root / "train" / entry["file_name"]).convert("RGB"))
        background = np.asarray(labels) == 0
        assert np.array_equal(np.asarray(overlay)[background], photo[background])


def test_voc_folder_trains_and_segment_refuses_a_detector(tmp_path, capsys):
    root = write_voc(tmp_path / "voc")
    out = tmp_path / "run"
    assert _train(root, out, "--head", "aspp", "--output-stride", "8") == cli.EXIT_OK
    from torchdcn.engine import load_checkpoint

    info = load_checkpoint(out / "last.pt")["run_info"]
    assert info["data"]["format"] == "voc" and info["data"]["val_split"] == "train"
    assert info["data"]["class_names"] == ["cat", "dog"]
    assert info["model_config"]["head"] == "aspp" and info["model_config"]["output_stride"] == 8
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(out / "last.pt"), "--threads", "2"]) == 0
    assert "dog" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model", "faster_rcnn", "--head", "aspp"], "--head only applies to deeplab"),
        (["train", "--head", "aspp"], "--head only applies to detectors or segmenters"),
        (["train", "--task", "segmentation", "--width", "16"], "--width only applies to the clas"),
        (["train", "--task", "segmentation", "--fpn"], "apply to faster_rcnn, not to deeplab"),
        (["train", "--task", "segmentation", "--output-stride", "32"], "invalid choice"),
        (["segment", "x.png"], "--checkpoint is required"),
        (["segment", "--checkpoint", "c.pt"], "give at least one image"),
        (["segment", "x.png", "--checkpoint", "c.pt", "--alpha", "1.5"], "--alpha must be"),
    ],
)
def test_usage_errors(argv, message, capsys):
    code = cli.main(argv)
    assert code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err
