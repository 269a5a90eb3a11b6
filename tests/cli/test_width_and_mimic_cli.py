"""``torchdcn train --base-channels N`` (backbone width of the detectors and DeepLab) and
``--mimic {positive,all,negative}`` / ``--mimic-cls-weight W`` (Faster R-CNN and Mask R-CNN):
parsing, the presets' ``model_config``, refused combinations, and a one-step train -> eval round
trip whose checkpoint rebuilds the same narrow detector with its mimicking branch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_args import settings as _settings

from torchdcn import cli
from torchdcn.cli.presets import MODELS

PIL = pytest.importorskip("PIL")
pytest.importorskip("pycocotools")

#: (file, [(category id, x, y, w, h)]) of two 64 x 64 synthetic images
IMAGES = [("a.png", [(1, 8, 8, 24, 24), (2, 40, 10, 10, 40)]), ("b.png", [(1, 30, 30, 28, 28)])]


def write_coco(root: Path) -> Path:
    from PIL import Image

    (root / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for image_id, (name, boxes) in enumerate(IMAGES, start=1):
        pixels = np.full((64, 64, 3), 128, np.uint8)
        for cat, x, y, w, h in boxes:
            pixels[y : y + h, x : x + w] = (220, 40, 40) if cat == 1 else (40, 40, 220)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": cat, "bbox": [x, y, w, h], "area": w * h,
                                "iscrowd": 0})  # fmt: skip
        Image.fromarray(pixels).save(root / "train" / name)
        images.append({"id": image_id, "file_name": name, "height": 64, "width": 64})
    categories = [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    return root


def test_flags_reach_the_faster_rcnn_config_and_model():
    flags = ["--base-channels", "16", "--mimic", "all", "--mimic-cls-weight", "0"]
    s = _settings(["train", "--model", "faster_rcnn", "--backbone", "resnet18", *flags])
    assert (s["base_channels"], s["mimic"], s["mimic_cls_weight"]) == (16, "all", 0.0)
    config = MODELS["faster_rcnn"].model_config({**s, "num_classes": 2})
    assert config == {
        "backbone": "resnet18",
        "deform": None,
        "base_channels": 16,
        "mimic": {"rois": "all", "cls_weight": 0.0},
        "roi_pool": None,
        "fpn": False,
        "num_classes": 2,
        "frozen_bn": False,  # no --pretrained-backbone: the backbone trains whole
        "freeze_at": 0,
    }
    assert json.loads(json.dumps(config)) == config  # stored in the checkpoint's run_info
    model = MODELS["faster_rcnn"].build(**config)
    assert [i.channels for i in model.backbone.feature_info] == [16, 32, 64, 128]
    assert (model.mimic.rois, model.mimic.cls_weight) == ("all", 0.0)
    # absent flags: no mimicking, the default width, and the backbone trained whole
    s = _settings(["train", "--model", "faster_rcnn"])
    assert MODELS["faster_rcnn"].model_config(s) == {
        "backbone": "resnet50", "deform": None, "roi_pool": None, "fpn": False,
        "frozen_bn": False, "freeze_at": 0,
    }  # fmt: skip
    s = _settings(["train", "--model", "faster_rcnn", "--mimic", "positive"])
    assert MODELS["faster_rcnn"].model_config(s)["mimic"] == {"rois": "positive", "cls_weight": 0.1}


def test_config_file_keys_and_the_other_presets(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: mask_rcnn\nbackbone: resnet18\nbase_channels: 16\nmimic: negative\n")
    s = _settings(["train", "--config", str(cfg), "--mimic-cls-weight", "0.5"])
    config = MODELS["mask_rcnn"].model_config({**s, "num_classes": 2})
    assert config["base_channels"] == 16
    assert config["mimic"] == {"rois": "negative", "cls_weight": 0.5}
    model = MODELS["mask_rcnn"].build(**config)
    assert model.mimic.rois == "negative" and model.mimic.classifier.out_features == 3
    assert model.roi_heads.mask_pooler.channels == 256  # the 1x1 reduction of conv5 (128)
    assert model.neck.conv.in_channels == 128
    for name in ("rpn_detector", "rfcn", "deeplab"):
        s = _settings(["train", "--model", name, "--backbone", "resnet18", "--base-channels", "8"])
        config = MODELS[name].model_config({**s, "num_classes": 2})
        assert config["base_channels"] == 8 and "mimic" not in config
        body = MODELS[name].build(**config).backbone
        assert [i.channels for i in body.feature_info] == [8, 16, 32, 64], name


def test_a_mimic_checkpoint_loads_into_the_same_config_and_stripped_into_a_plain_one():
    from torchdcn.models.detection import strip_mimic

    preset = MODELS["mask_rcnn"]
    s = _settings(["train", "--model", "mask_rcnn", "--backbone", "resnet18",
                   "--base-channels", "16", "--mimic", "positive"])  # fmt: skip
    config = preset.model_config({**s, "num_classes": 2})
    torch.manual_seed(0)
    state = preset.build(**config).state_dict()
    assert "mimic.classifier.weight" in state
    torch.manual_seed(1)
    again = preset.build(**config)  # what eval builds from the checkpoint's model_config
    again.load_state_dict(state)  # strict
    plain = preset.build(**{k: v for k, v in config.items() if k != "mimic"})
    plain.load_state_dict(strip_mimic(state))
    image = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        a, b = again.eval()(image), plain.eval()(image)
    torch.testing.assert_close(a[0]["boxes"], b[0]["boxes"])
    torch.testing.assert_close(a[0]["scores"], b[0]["scores"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--base-channels", "16"], "--base-channels only applies to detectors or segmenters"),
        (["--model", "faster_rcnn", "--base-channels", "0"], "--base-channels must be >= 1"),
        (
            ["--model", "faster_rcnn", "--backbone", "resnext50_32x4d", "--base-channels", "8"],
            "--base-channels 8 with --backbone resnext50_32x4d: base_channels must be a multiple",
        ),
        (["--model", "rfcn", "--mimic", "positive"], "apply to faster_rcnn and mask_rcnn"),
        (["--model", "rpn_detector", "--mimic", "all"], "apply to faster_rcnn and mask_rcnn"),
        (["--model", "deeplab", "--mimic-cls-weight", "0"], "apply to faster_rcnn and mask_rcnn"),
        (["--model", "faster_rcnn", "--mimic-cls-weight", "0"], "--mimic-cls-weight needs --mimic"),
        (["--model", "faster_rcnn", "--mimic", "x"], "invalid choice: 'x'"),
        (
            ["--model", "mask_rcnn", "--mimic", "all", "--mimic-cls-weight", "-1"],
            "--mimic-cls-weight must be >= 0",
        ),
    ],
)
def test_refused_combinations_exit_2_with_one_line(tmp_path, capsys, argv, message):
    code = cli.main(["train", *argv, "--data-root", str(tmp_path / "nodata")])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and message in lines[-1], err


def test_train_then_eval_rebuilds_the_narrow_detector_with_its_mimic_branch(tmp_path, capsys):
    from torchdcn.engine import load_checkpoint

    root, out = write_coco(tmp_path / "shapes"), tmp_path / "run"
    argv = [
        "train", "--model", "faster_rcnn", "--backbone", "resnet18", "--base-channels", "16",
        "--mimic", "positive", "--mimic-cls-weight", "0", "--data-root", str(root),
        "--min-size", "64", "--max-size", "64", "--epochs", "1", "--batch-size", "2",
        "--warmup-steps", "0", "--no-progress", "--threads", "2", "--output-dir", str(out),
    ]  # fmt: skip
    assert cli.main(argv) == cli.EXIT_OK
    summary = json.loads((out / "results.json").read_text())
    # cls_weight 0: the mimic loss only, no mimic classification loss
    assert set(summary["losses"]) == {
        "loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box_reg", "loss_mimic",
    }  # fmt: skip
    state = load_checkpoint(out / "last.pt")
    config = state["run_info"]["model_config"]
    assert config["base_channels"] == 16
    assert config["mimic"] == {"rois": "positive", "cls_weight": 0.0}
    assert tuple(state["model"]["backbone.conv1.weight"].shape) == (16, 3, 7, 7)
    assert "mimic.classifier.weight" in state["model"]
    capsys.readouterr()
    metrics_file = tmp_path / "m.json"
    argv = ["eval", "--checkpoint", str(out / "last.pt"), "--threads", "2"]
    assert cli.main([*argv, "--json", str(metrics_file)]) == cli.EXIT_OK
    metrics = json.loads(metrics_file.read_text())["metrics"]
    assert metrics == pytest.approx(summary["metrics"]["val"])  # same weights, same images
