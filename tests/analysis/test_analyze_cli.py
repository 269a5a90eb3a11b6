"""``torchdcn analyze`` end to end on tiny checkpoints written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from torchdcn import cli
from torchdcn.data import DataNotFoundError, find_mnist5k
from torchdcn.engine.checkpoint import save_checkpoint
from torchdcn.models.classification.mnist_cnn import mnist_cnn


def _has_mnist() -> bool:
    try:
        find_mnist5k()
    except DataNotFoundError:
        return False
    return True


needs_mnist = pytest.mark.skipif(not _has_mnist(), reason="needs ../shared/data/mnist5k")


def write_mnist_checkpoint(path: Path, deform: str | None) -> Path:
    torch.manual_seed(0)
    model = mnist_cnn(deform, width=8)
    if deform:
        with torch.no_grad():
            for layer in model.body:
                layer.conv_offset.weight.normal_(0, 0.05)
    info = {"model": "mnist_cnn", "model_config": {"deform": deform, "width": 8}}
    return save_checkpoint(path, {"model": model.state_dict(), "run_info": info}, {})


@needs_mnist
def test_analyze_mnist_checkpoints_writes_figures_and_report(tmp_path, capsys):
    paths = [write_mnist_checkpoint(tmp_path / f"{d}" / "last.pt", d) for d in (None, "v1", "v2")]
    out = tmp_path / "out"
    argv = ["analyze", "--checkpoint", *map(str, paths), "--out", str(out), "--images", "3",
            "--figure-images", "2", "--no-progress", "--threads", "1"]  # fmt: skip
    assert cli.main(argv) == cli.EXIT_OK
    report = (out / "report.md").read_text()
    assert "report: " in capsys.readouterr().out
    for png in ("erf.png", "effective_sampling.png", "saliency.png"):
        assert (out / png).stat().st_size > 1000 and f"]({png})" in report
    # the plain model has no table; each deformable one a row per body layer
    assert report.count("| body.0 |") == 2 and "None (plain)" in report
    assert "No deformable layer" in report
    rows = [line for line in report.splitlines() if line.startswith(("| None", "| v1", "| v2"))]
    assert len(rows) == 6  # one row per model in the saliency table and in the by-size table
    for row in rows[3:]:  # every image is counted once, in its size class
        assert sum(int(c.split("(")[-1].rstrip(") ")) for c in row.split("|")[2:-1]) == 3
    # positions counted: 3 digits x 12 x 12 cells per layer, every class summed
    row = next(line for line in report.splitlines() if line.startswith("| body.2 |"))
    counts = [int(c.split("(")[1].rstrip(") ")) for c in row.split("|")[2:-1] if "(" in c]
    assert sum(counts) == 3 * 12 * 12


@needs_mnist
def test_analyze_refuses_bad_arguments(tmp_path, capsys):
    plain = write_mnist_checkpoint(tmp_path / "p" / "last.pt", None)
    assert cli.main(["analyze", "--out", str(tmp_path)]) == cli.EXIT_USAGE
    code = cli.main(["analyze", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path)])
    assert code == cli.EXIT_INPUT
    base = ["analyze", "--out", str(tmp_path / "o"), "--images", "1", "--no-progress",
            "--threads", "1", "--checkpoint", str(plain)]  # fmt: skip
    # a layer that does not exist was a failure (exit 1), a --below that does not exist silently
    # ignored (exit 0, no figure), a layer without a map an IndexError, reversed thresholds taken
    for extra, message in [
        (["--tools", "sampling", "--layer", "body.9"], "--layer body.9: p (plain) has no such"),
        (["--tools", "erf", "--layer", "fc"], "--layer fc: it outputs [1, 10], not a map"),
        (["--tools", "sampling", "--below", "body.7"], "--below body.7: no model has a deformable"),
        (["--tools", "erf", "--area-thresholds", "1024", "256"], "--area-thresholds 1024 256:"),
    ]:
        assert cli.main(base + extra) == cli.EXIT_USAGE, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    v1 = write_mnist_checkpoint(tmp_path / "v1" / "last.pt", "v1")
    argv = [*base, str(v1), "--tools", "sampling", "--below", "body.7"]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "(deformable layers: body.0, body.1, body.2)" in capsys.readouterr().err


def test_saliency_ratio_divides_by_the_box_in_the_image_pixels():
    # a detector's sample: the image (and boxes) resized 2x from the file, areas in the file's
    # pixels; the saliency area is in the image's pixels, so the ratio divided by the file's area
    # came out 4x too large (26.04 instead of ~6.5 on 64 -> 128 COCO images)
    from torchdcn.analysis.probe import default_forward
    from torchdcn.cli.analyze import Analysed, Sample, _per_image

    torch.manual_seed(0)
    model = Analysed("v2", mnist_cnn("v2", width=8).eval(), detector=False)
    boxes = torch.tensor([[8.0, 8.0, 24.0, 24.0], [0.0, 0.0, 4.0, 4.0]])  # 256 and 16 px
    sample = Sample(torch.rand(1, 48, 48), boxes, torch.tensor([64.0, 4.0]), "resized 2x")
    s = {"tools": ["saliency"], "bound": 0.1}
    _per_image(model, sample, sample.image[None], "body.2", None, (4, 4), 4, s, default_forward,
               False)  # fmt: skip
    (area,) = model.saliency_areas
    assert model.saliency_ratio == [pytest.approx(area / 256)]


def write_coco(root: Path) -> Path:
    from PIL import Image

    (root / "val").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    for i, (x, y, w, h) in enumerate([(8, 8, 30, 30), (20, 10, 12, 40)], start=1):
        pixels = np.full((64, 64, 3), 128, np.uint8)
        pixels[y : y + h, x : x + w] = (220, 40, 40)
        Image.fromarray(pixels).save(root / "val" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": 64, "width": 64})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [x, y, w, h],
                     "area": w * h, "iscrowd": 0})  # fmt: skip
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "box"}]}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(coco))
    return root


@pytest.mark.slow
def test_analyze_a_detector_checkpoint(tmp_path):
    pytest.importorskip("pycocotools")
    root = write_coco(tmp_path / "coco")
    run = tmp_path / "run"
    argv = [
        "train", "--model", "faster_rcnn", "--backbone", "resnet18", "--deform", "v1",
        "--roi-pool", "deform", "--data-root", str(root), "--min-size", "64", "--max-size", "64",
        "--epochs", "1", "--batch-size", "2", "--warmup-steps", "0", "--no-progress",
        "--threads", "2", "--output-dir", str(run),
    ]  # fmt: skip
    assert cli.main(argv) == cli.EXIT_OK
    out = tmp_path / "out"
    argv = ["analyze", "--checkpoint", str(run / "last.pt"), "--data-root", str(root),
            "--out", str(out), "--images", "2", "--no-progress", "--tools", "dilation", "erf",
            "saliency", "roi-bins"]  # fmt: skip
    assert cli.main(argv) == cli.EXIT_OK
    report = (out / "report.md").read_text()
    assert "| backbone." in report and (out / "erf.png").is_file()
    assert "](roi_bins.png)" in report and (out / "roi_bins.png").stat().st_size > 1000


@pytest.mark.slow
def test_analyze_rfcn_checkpoints_with_deformable_ps_pooling(tmp_path):
    # R-FCN's head calls its pooling with feature= (the offset convs read the backbone's map,
    # not the score maps): the RoI-bin tool must record and pass it (it crashed in conv2d); a
    # model whose only deformable part is the PS pooling gets its backbone's last conv as layer
    pytest.importorskip("pycocotools")
    root = write_coco(tmp_path / "coco")
    runs = []
    for deform in ("v1", None):
        run = tmp_path / f"run-{deform}"
        argv = [
            "train", "--model", "rfcn", "--backbone", "resnet18", "--ps-pool", "deform",
            "--data-root", str(root), "--min-size", "64", "--max-size", "64", "--epochs", "1",
            "--batch-size", "2", "--warmup-steps", "0", "--no-progress", "--threads", "2",
            "--output-dir", str(run), *(["--deform", deform] if deform else []),
        ]  # fmt: skip
        assert cli.main(argv) == cli.EXIT_OK
        runs.append(str(run / "last.pt"))
    out = tmp_path / "out"
    argv = ["analyze", "--checkpoint", *runs, "--data-root", str(root), "--out", str(out),
            "--images", "1", "--no-progress", "--threads", "2"]  # fmt: skip
    assert cli.main(argv) == cli.EXIT_OK
    report = (out / "report.md").read_text()
    assert "](roi_bins.png)" in report and (out / "roi_bins.png").stat().st_size > 1000
    assert "](erf.png)" in report and "| backbone." in report  # the v1 model's dilation table
    out = tmp_path / "plain"  # alone: no deformable conv, the layer is the backbone's last conv
    argv = ["analyze", "--checkpoint", runs[1], "--data-root", str(root), "--out", str(out),
            "--images", "1", "--no-progress", "--threads", "2",
            "--tools", "erf", "roi-bins"]  # fmt: skip
    assert cli.main(argv) == cli.EXIT_OK
    assert "node on `backbone." in (out / "report.md").read_text()
    assert (out / "roi_bins.png").stat().st_size > 1000 and (out / "erf.png").is_file()


def test_analyze_refuses_a_segmentation_checkpoint(tmp_path, capsys):
    from torchdcn.cli.presets import MODELS

    config = {"backbone": "resnet18", "deform": None, "output_stride": 16, "head": "deeplab",
              "num_classes": 2}  # fmt: skip
    model = MODELS["deeplab"].build(**config)
    info = {"model": "deeplab", "model_config": config}
    path = save_checkpoint(tmp_path / "seg.pt", {"model": model.state_dict(), "run_info": info}, {})
    argv = ["analyze", "--checkpoint", str(path), "--out", str(tmp_path / "o"), "--no-progress"]
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "is a segmentation checkpoint (deeplab)" in err and "analyze supports" in err
