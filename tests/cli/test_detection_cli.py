"""``torchdcn train/eval/detect`` with a detector on a tiny synthetic COCO folder written here.

The folder holds four 64x64 PNGs with filled rectangles of two categories (ids 3 and 7, so the
contiguous labels 1, 2 must be mapped back) and its ``annotations/instances_train.json``. One
training step of a ResNet-18 Faster R-CNN writes a checkpoint; ``eval`` prints the COCO table;
``detect`` writes a PNG per image and COCO results whose ids and categories are the file's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_args import settings as _settings

from torchdcn import cli

PIL = pytest.importorskip("PIL")
pytest.importorskip("pycocotools")

CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "bar"}]
#: (file, [(category id, x, y, w, h)]) of the synthetic images
IMAGES = [
    ("a.png", [(3, 8, 8, 24, 24), (7, 40, 10, 10, 40)]),
    ("b.png", [(3, 30, 30, 28, 28)]),
    ("c.png", [(7, 4, 20, 12, 36)]),
    ("d.png", [(3, 10, 34, 20, 20), (7, 44, 4, 12, 30)]),
]
COLORS = {3: (220, 40, 40), 7: (40, 40, 220)}


def write_coco(root: Path) -> Path:
    """The synthetic COCO folder under ``root``; returns it."""
    from PIL import Image

    (root / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for image_id, (name, boxes) in enumerate(IMAGES, start=10):
        pixels = np.full((64, 64, 3), 128, np.uint8)
        for cat, x, y, w, h in boxes:
            pixels[y : y + h, x : x + w] = COLORS[cat]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        Image.fromarray(pixels).save(root / "train" / name)
        images.append({"id": image_id, "file_name": name, "height": 64, "width": 64})
    coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(data folder, run folder)`` after one training step (shared by the tests below)."""
    root = write_coco(tmp_path_factory.mktemp("coco") / "shapes")
    out = tmp_path_factory.mktemp("run")
    argv = [
        "train", "--task", "detection", "--model", "faster_rcnn", "--backbone", "resnet18",
        "--data-root", str(root), "--min-size", "64", "--max-size", "64",
        "--epochs", "1", "--batch-size", "2", "--limit-train", "2", "--limit-test", "2",
        "--warmup-steps", "0", "--no-progress", "--threads", "2", "--output-dir", str(out),
    ]  # fmt: skip
    code = cli.main(argv)
    assert code == cli.EXIT_OK
    return root, out


def test_train_writes_a_checkpoint_with_the_categories_and_per_loss_logs(trained):
    from torchdcn.engine import load_checkpoint

    _, out = trained
    summary = json.loads((out / "results.json").read_text())
    assert summary["steps"] == 1
    names = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box_reg"}
    assert set(summary["losses"]) == names
    assert summary["loss"] == pytest.approx(sum(summary["losses"].values()))
    from torchdcn.engine.coco_eval import metric_names

    assert set(summary["metrics"]["val"]) == set(metric_names())
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_events = [e for e in events if e["event"] == "train"]
    assert train_events and set(train_events[-1]["losses"]) == names
    info = load_checkpoint(out / "last.pt")["run_info"]
    assert info["model"] == "faster_rcnn"
    assert info["model_config"] == {
        "backbone": "resnet18",
        "deform": None,
        "roi_pool": None,
        "fpn": False,
        "frozen_bn": False,  # trained from scratch: BatchNorm and every stage train
        "freeze_at": 0,
        "num_classes": 2,
    }
    assert info["data"]["categories"] == CATEGORIES
    assert (info["data"]["min_size"], info["data"]["max_size"]) == (64, 64)


def test_eval_prints_the_coco_table_and_matches_training(trained, tmp_path, capsys):
    _, out = trained
    capsys.readouterr()
    metrics_file = tmp_path / "m.json"
    argv = ["eval", "--checkpoint", str(out / "last.pt"), "--limit-test", "2", "--threads", "2"]
    assert cli.main([*argv, "--json", str(metrics_file)]) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in printed
    rows = dict(line.split() for line in printed.splitlines()[-8:])
    assert list(rows) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "mAP@0.5", "mAP@0.7"]
    metrics = json.loads(metrics_file.read_text())["metrics"]
    # the same two images and weights as the evaluation at the end of training
    trained_metrics = json.loads((out / "results.json").read_text())["metrics"]["val"]
    assert metrics == pytest.approx(trained_metrics)
    for name, value in metrics.items():
        assert rows[name] == ("-" if value < 0 else f"{100 * value:.1f}")


def test_detect_writes_pngs_and_coco_results_with_the_files_ids(trained, tmp_path, capsys):
    from PIL import Image
    from pycocotools.coco import COCO

    from torchdcn.cli.presets import model_from_checkpoint
    from torchdcn.data.transforms import detection_transforms

    root, out = trained
    ann = root / "annotations" / "instances_train.json"
    det = tmp_path / "det"
    argv = ["detect", str(root / "train"), "--checkpoint", str(out / "last.pt")]
    argv += ["--out", str(det), "--score-thresh", "0.1", "--ann-file", str(ann)]
    assert cli.main([*argv, "--threads", "2"]) == cli.EXIT_OK
    for name, _ in IMAGES:
        with Image.open(det / name) as png:
            assert png.format == "PNG" and png.size == (64, 64)
    results = json.loads((det / "detections.json").read_text())
    index = json.loads((det / "images.json").read_text())
    assert {i["file_name"]: i["id"] for i in index["images"]} == {
        name: 10 + k for k, (name, _) in enumerate(IMAGES)
    }
    assert index["categories"] == CATEGORIES
    assert all(r["category_id"] in (3, 7) and r["score"] >= 0.1 for r in results)
    if results:  # loadRes checks that every image id is in the file
        COCO(str(ann)).loadRes(results)
    # the same detections as the model itself gives for b.png, mapped to category ids
    model, _, _ = model_from_checkpoint(str(out / "last.pt"))
    with Image.open(root / "train" / "b.png") as img:
        image, _ = detection_transforms(False, 64, 64)(img.convert("RGB"), {})
    with torch.no_grad():
        (found,) = model.eval()([image], orig_sizes=[(64, 64)])
    keep = found["scores"] >= 0.1
    expected = [
        ({1: 3, 2: 7}[int(lab)], [round(v, 2) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])])
        for lab, b in zip(found["labels"][keep].tolist(), found["boxes"][keep].tolist())
    ]
    got = [(r["category_id"], r["bbox"]) for r in results if r["image_id"] == 11]
    assert expected and got == expected
    assert f"{len(results)} detections" in capsys.readouterr().out


def test_draw_detections_outlines_the_box_in_the_class_colour():
    from torchdcn.analysis.draw import draw_detections, label_color

    image = torch.full((3, 60, 80), 100, dtype=torch.uint8)
    drawn = np.asarray(
        draw_detections(image, torch.tensor([[10.0, 30.0, 50.0, 55.0]]), torch.tensor([2]),
                        torch.tensor([0.9]), ["a", "b"], width=2)
    )  # fmt: skip
    assert drawn.shape == (60, 80, 3)
    color = label_color(2)
    # a 2-pixel outline inside the box: columns 10, 11 and 49, 50; rows 54, 55 at the bottom
    for y, x in [(40, 10), (40, 11), (40, 49), (40, 50), (54, 30), (55, 30)]:
        assert tuple(drawn[y, x]) == color, (y, x)
    for y, x in [(40, 9), (40, 12), (40, 48), (40, 51), (53, 30), (56, 30)]:
        assert tuple(drawn[y, x]) == (100, 100, 100), (y, x)
    assert tuple(drawn[42, 30]) == (100, 100, 100)  # inside: untouched
    assert tuple(drawn[5, 70]) == (100, 100, 100)  # far away: untouched
    strip = drawn[18:30, 10:20].reshape(-1, 3)  # the caption strip above the box
    assert (strip == color).all(1).mean() > 0.5
    assert (image == 100).all()  # the input is not drawn on
    with pytest.raises(ValueError, match="label 3 has no name"):
        draw_detections(image, torch.zeros(1, 4), torch.tensor([3]), None, ["a", "b"])


def test_task_picks_the_model_and_the_preset_defaults_yield_to_file_and_flags(tmp_path):
    s = _settings(["train", "--task", "detection"])
    assert s["model"] == "faster_rcnn" and s["task"] == "detection"
    assert (s["optimizer"], s["batch_size"], s["schedule"]) == ("sgd", 2, "step")
    s = _settings(["train", "--model", "rpn_detector", "--batch-size", "4"])
    assert s["task"] == "detection" and s["batch_size"] == 4
    cfg = tmp_path / "d.yaml"
    cfg.write_text("model: faster_rcnn\nlr: 0.02\noptimizer: adamw\n")
    s = _settings(["train", "--config", str(cfg), "--lr", "0.01"])
    assert (s["lr"], s["optimizer"], s["batch_size"]) == (0.01, "adamw", 2)
    s = _settings(["train"])
    assert (s["model"], s["optimizer"], s["batch_size"]) == ("mnist_cnn", "adamw", 64)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model", "faster_rcnn", "--width", "16"], "--width only applies to"),
        (["train", "--backbone", "resnet18"], "--backbone only applies to detectors"),
        (["train", "--task", "classification", "--model", "faster_rcnn"], "does not fit"),
        (["train", "--model", "faster_rcnn", "--backbone", "vgg16"], "--backbone must be one"),
        (["train", "--model", "rpn_detector", "--roi-pool", "mdeform"], "apply to faster_rcnn"),
        (["detect", "--checkpoint", "x.pt"], "give at least one image"),
        (["detect", "x.png"], "--checkpoint is required"),
        (["detect", "x.png", "--checkpoint", "c.pt", "--score-thresh", "-1"], "must be >= 0"),
        (["eval", "--checkpoint", "c.pt", "--min-size", "0"], "--min-size must be >= 1"),
    ],
)
def test_bad_detection_arguments_exit_2_with_one_line(tmp_path, capsys, argv, message):
    argv = [*argv, "--data-root", str(tmp_path / "nodata")] if argv[0] != "detect" else argv
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and message in lines[0], err


def test_missing_detection_input_exits_3(trained, tmp_path, capsys):
    root, out = trained
    ckpt = str(out / "last.pt")
    cases = [
        ["train", "--model", "faster_rcnn", "--data-root", str(tmp_path / "nodata")],
        ["train", "--model", "faster_rcnn", "--data-root", str(tmp_path)],  # no annotations
        ["eval", "--checkpoint", ckpt, "--data-root", str(tmp_path / "nodata")],
        ["detect", str(tmp_path / "none.png"), "--checkpoint", ckpt],
        ["detect", str(tmp_path), "--checkpoint", ckpt],  # a folder without images
        ["detect", str(root / "train" / "a.png"), "--checkpoint", str(tmp_path / "gone.pt")],
        ["train", "--model", "faster_rcnn", "--pretrained-backbone", str(tmp_path / "r50.pth")],
    ]
    for argv in cases:
        if argv[0] == "train":
            argv = [*argv, "--output-dir", str(tmp_path / "o")]
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code == cli.EXIT_INPUT, (argv, err)
        assert len(err.strip().splitlines()) == 1, err


def test_coco_folder_resolution(tmp_path):
    from torchdcn.cli.detection import coco_paths
    from torchdcn.data import DataNotFoundError

    root = write_coco(tmp_path / "shapes")
    ann = root / "annotations"
    assert coco_paths(str(root), None, None) == (ann / "instances_train.json", root / "train")
    (ann / "instances_val.json").write_text((ann / "instances_train.json").read_text())
    (root / "val").mkdir()
    assert coco_paths(str(root), None, None, "val") == (ann / "instances_val.json", root / "val")
    # an exact split name wins over a longer one sharing its prefix (digit scenes' val_heldout)
    (ann / "instances_val_heldout.json").write_text("{}")
    assert coco_paths(str(root), None, None, "val")[0] == ann / "instances_val.json"
    (ann / "instances_val.json").unlink()
    assert coco_paths(str(root), None, None, "val")[0] == ann / "instances_val_heldout.json"
    (ann / "instances_val.json").write_text((ann / "instances_train.json").read_text())
    (ann / "instances_extra.json").write_text("{}")
    with pytest.raises(cli.UsageError, match="choose one with --ann-file"):
        coco_paths(str(root), None, None, "test")
    given = coco_paths(None, str(ann / "instances_val.json"), str(root / "train"))
    assert given == (ann / "instances_val.json", root / "train")
    with pytest.raises(DataNotFoundError, match="image folder not found"):
        coco_paths(str(root), None, str(root / "nothing"))


def test_detect_help_lists_every_option(capsys):
    assert cli.main(["detect", "--help"]) == cli.EXIT_OK
    text = capsys.readouterr().out
    for opt in cli.COMMANDS["detect"][1]:
        assert (opt.metavar if opt.positional else f"--{opt.name}") in text
    assert "IMAGE_OR_DIR" in text.splitlines()[0] + text and "exit codes" in text


def test_detection_run_resumes_exactly(trained, tmp_path, monkeypatch):
    """A run killed after step 3 of 4 and resumed ends with the uninterrupted run's weights."""
    from torchdcn import engine

    root, _ = trained
    base = [
        "train", "--model", "rpn_detector", "--backbone", "resnet18", "--data-root", str(root),
        "--min-size", "48", "--max-size", "64", "--epochs", "2", "--batch-size", "2",
        "--limit-train", "4", "--limit-test", "1", "--warmup-steps", "0", "--no-progress",
        "--threads", "2", "--checkpoint-every", "1", "--eval-every", "0",
    ]  # fmt: skip
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert cli.main([*base, "--output-dir", str(full)]) == cli.EXIT_OK
    step = engine.Trainer.train_step

    def interrupted(self, *args):
        if self.step == 3:
            raise KeyboardInterrupt
        return step(self, *args)

    monkeypatch.setattr(engine.Trainer, "train_step", interrupted)
    assert cli.main([*base, "--output-dir", str(cut)]) == cli.EXIT_INTERRUPTED
    monkeypatch.setattr(engine.Trainer, "train_step", step)
    assert cli.main([*base, "--output-dir", str(cut), "--resume", "auto"]) == cli.EXIT_OK
    assert json.loads((cut / "results.json").read_text())["resumed_from_step"] == 3
    a = engine.load_checkpoint(full / "last.pt")["model"]
    b = engine.load_checkpoint(cut / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_detect_score_thresh_below_the_models_lowers_it():
    from types import SimpleNamespace

    from torchdcn.cli.detect import _lower_model_threshold

    detector = SimpleNamespace(roi_heads=SimpleNamespace(score_thresh=0.05))
    _lower_model_threshold(detector, 0.01)
    assert detector.roi_heads.score_thresh == 0.01
    _lower_model_threshold(detector, 0.5)  # a higher --score-thresh only filters the drawing
    assert detector.roi_heads.score_thresh == 0.01
    rpn_detector = SimpleNamespace(score_thresh=0.05)  # the class-aware RPN keeps it itself
    _lower_model_threshold(rpn_detector, 0.0)
    assert rpn_detector.score_thresh == 0.0
