"""``torchdcn train/eval/detect`` with the ``mask_rcnn`` preset on a tiny synthetic COCO folder:
the preset asks for instance masks (training gets ``loss_mask``), ``eval`` prints the ``bbox``
and ``segm`` tables, ``detect`` paints masks and writes ``"segmentation"`` RLEs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from torchdcn import cli

PIL = pytest.importorskip("PIL")
pytest.importorskip("pycocotools")

CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "disc"}]
#: (file, [(category id, x, y, w, h)]): rectangles with polygons; the last has no segmentation
IMAGES = [
    ("a.png", [(3, 8, 8, 24, 24), (7, 40, 10, 16, 40)]),
    ("b.png", [(3, 30, 30, 28, 28)]),
]


def write_coco(root: Path) -> Path:
    from PIL import Image

    (root / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for image_id, (name, boxes) in enumerate(IMAGES, start=10):
        pixels = np.full((64, 64, 3), 128, np.uint8)
        for cat, x, y, w, h in boxes:
            pixels[y : y + h, x : x + w] = (220, 40, 40) if cat == 3 else (40, 40, 220)
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                   "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}  # fmt: skip
            if name == "a.png":  # b.png's box-only annotation gets its box as mask
                ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            annotations.append(ann)
        Image.fromarray(pixels).save(root / "train" / name)
        images.append({"id": image_id, "file_name": name, "height": 64, "width": 64})
    coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    return root


def test_preset_builds_and_requests_masks():
    from torchdcn.cli.presets import MODELS
    from torchdcn.models.detection import MaskRCNN

    preset = MODELS["mask_rcnn"]
    assert preset.masks and preset.task == "detection" and not MODELS["faster_rcnn"].masks
    config = preset.model_config({"backbone": "resnet18", "deform": "v2", "num_classes": 2})
    model = preset.build(**config)
    assert isinstance(model, MaskRCNN)
    assert (model.roi_heads.pooler.kind, model.roi_heads.mask_pooler.kind) == ("mdeform",) * 2


def test_box_only_annotation_gets_its_box_as_mask(tmp_path):
    from torchdcn.data.coco import CocoDetection

    root = write_coco(tmp_path / "shapes")
    ds = CocoDetection(root / "annotations" / "instances_train.json", root / "train", masks=True)
    _, t = ds[1]  # b.png
    expected = torch.zeros(64, 64, dtype=torch.uint8)
    expected[30:58, 30:58] = 1
    assert torch.equal(t["masks"][0], expected)


@pytest.mark.filterwarnings("ignore:__array__:DeprecationWarning")
def test_train_eval_detect(tmp_path, capsys):
    from pycocotools import mask as mask_util

    from torchdcn.engine import load_checkpoint

    root = write_coco(tmp_path / "shapes")
    out = tmp_path / "run"
    argv = [
        "train", "--model", "mask_rcnn", "--backbone", "resnet18",
        "--data-root", str(root), "--min-size", "64", "--max-size", "64",
        "--epochs", "1", "--batch-size", "2", "--limit-train", "2", "--limit-test", "2",
        "--warmup-steps", "0", "--no-progress", "--threads", "2", "--output-dir", str(out),
    ]  # fmt: skip
    assert cli.main(argv) == cli.EXIT_OK
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["losses"]) == {
        "loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box_reg", "loss_mask",
    }  # fmt: skip
    assert "segm_AP50" in summary["metrics"]["val"] and "AP50" in summary["metrics"]["val"]
    info = load_checkpoint(out / "last.pt")["run_info"]
    assert info["model"] == "mask_rcnn" and info["data"]["masks"] is True

    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(out / "last.pt"), "--threads", "2"]) == 0
    printed = capsys.readouterr().out
    assert "bbox:" in printed and "segm:" in printed
    rows = dict(line.split() for line in printed.splitlines()[-16:])
    assert list(rows)[:2] == ["AP", "AP50"] and list(rows)[8:10] == ["segm_AP", "segm_AP50"]

    det = tmp_path / "det"
    argv = ["detect", str(root / "train"), "--checkpoint", str(out / "last.pt")]
    argv += ["--out", str(det), "--score-thresh", "0.0", "--threads", "2"]
    assert cli.main(argv) == cli.EXIT_OK
    results = json.loads((det / "detections.json").read_text())
    assert results and all("segmentation" in r for r in results)
    rle = results[0]["segmentation"]
    assert rle["size"] == [64, 64]
    decoded = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert decoded.shape == (64, 64) and set(np.unique(decoded)) <= {0, 1}
    assert (det / "a.png").is_file() and (det / "b.png").is_file()
